"""Client placement: the GPU, the share of its memory, the Ray node and the process of each client.

A simulated client is a Ray actor, and Ray gives it the resources of the federation config
(``client-resources-num-cpus``, ``client-resources-num-gpus``). Ray sets
``CUDA_VISIBLE_DEVICES`` of the actor to the GPUs it assigned, so ``cuda:0`` in the actor is
its own GPU. A fractional GPU (e.g. 0.25) is only a scheduling share in Ray, and nothing stops
a process from filling the GPU's memory. :func:`pin_client` therefore reads the fraction Ray
assigned to the actor (``ray.get_runtime_context().get_assigned_resources()["GPU"]``) and caps
the process's CUDA caching allocator at that share of the GPU's memory with
``torch.cuda.set_per_process_memory_fraction``. Outside Ray (the deployment engine), the
``FEDLAB_GPU_FRACTION`` environment variable of the SuperNode gives the fraction, and it also
overrides Ray's value.

:func:`placement_mod` wraps every ClientApp handler: it pins the client before the handler,
frees cached GPU memory after it, and adds the placement to the reply's metrics. The
ServerApp turns those metrics into the ``placement`` table of ``results.json`` with
:func:`placement_results`.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from flwr.app import Context, Message

from fedlab.payload import METRICS_KEY
from fedlab.training import select_device

#: Environment variable with the GPU fraction of a client outside Ray, or to override Ray's.
GPU_FRACTION_ENV = "FEDLAB_GPU_FRACTION"
#: Set to 1 to make every client test its memory cap before its handler runs.
CAP_PROBE_ENV = "FEDLAB_GPU_CAP_PROBE"

# Metric names of the placement. A MetricRecord contains only numbers, so text is encoded.
GPU_FIRST_VISIBLE = "gpu-first-visible"  # first id in CUDA_VISIBLE_DEVICES, -1 for none
GPU_VISIBLE_COUNT = "gpu-visible-count"  # entries in CUDA_VISIBLE_DEVICES, -1 when unset
GPU_FRACTION = "gpu-fraction"  # GPUs assigned to the process, 0 for none
MEMORY_CAP_FRACTION = "gpu-memory-cap-fraction"  # share of the GPU's memory allowed, 0 for no cap
MEMORY_CAP_BYTES = "gpu-memory-cap-bytes"  # the cap torch enforces, 0 when none is set
DEVICE_INDEX = "device-index"  # CUDA index of the torch device, -1 for the CPU
RAY_NODE_HASH = "ray-node-hash"  # first 12 hex digits of the Ray node id, -1 outside Ray
PROCESS_ID = "process-id"
PROCESS_PEAK_RSS = "process-peak-rss-bytes"

# Results of the memory-cap probe: 1 yes, 0 no, -1 not probed (no cap or no CUDA device).
CAP_PROBE_OVER_RAISED = "gpu-cap-probe-over-raised"  # an allocation above the cap raised OOM
CAP_PROBE_UNDER_OK = "gpu-cap-probe-under-ok"  # an allocation of half the cap succeeded
_PROBE_MARGIN_BYTES = 256 * 2**20

PLACEMENT_METRICS = (
    GPU_FIRST_VISIBLE, GPU_VISIBLE_COUNT, GPU_FRACTION, MEMORY_CAP_FRACTION, MEMORY_CAP_BYTES,
    DEVICE_INDEX, RAY_NODE_HASH, PROCESS_ID, PROCESS_PEAK_RSS,
)

_NODE_HASH_HEX_DIGITS = 12  # 48 bits: exact in a float64, so metric averaging cannot round it


class CudaApi(Protocol):
    """The part of ``torch.cuda`` used here; tests pass a fake device."""

    def set_per_process_memory_fraction(self, fraction: float, device: Any = None) -> None: ...

    def get_device_properties(self, device: Any) -> Any: ...

    def current_device(self) -> int: ...

    def empty_cache(self) -> None: ...


@dataclass(frozen=True)
class ClientPlacement:
    """The device, GPU share, Ray node and process that one client's handler ran on."""

    cuda_visible_devices: str | None
    gpu_fraction: float
    memory_cap_fraction: float | None
    memory_cap_bytes: int
    device: torch.device
    ray_node_id: str | None
    process_id: int

    def to_metrics(self) -> dict[str, int | float]:
        """Return the placement as reply metrics (numbers only)."""
        first, count = parse_visible_devices(self.cuda_visible_devices)
        if self.device.type == "cuda":
            device_index = self.device.index if self.device.index is not None else 0
        else:
            device_index = -1
        return {
            GPU_FIRST_VISIBLE: first,
            GPU_VISIBLE_COUNT: count,
            GPU_FRACTION: float(self.gpu_fraction),
            MEMORY_CAP_FRACTION: float(self.memory_cap_fraction or 0.0),
            MEMORY_CAP_BYTES: int(self.memory_cap_bytes),
            DEVICE_INDEX: device_index,
            RAY_NODE_HASH: ray_node_hash(self.ray_node_id),
            PROCESS_ID: self.process_id,
            PROCESS_PEAK_RSS: process_peak_rss_bytes(),
        }


# Client side ----------------------------------------------------------------------------


def parse_visible_devices(value: str | None) -> tuple[int, int]:
    """Return (first GPU index, number of entries) of a ``CUDA_VISIBLE_DEVICES`` value.

    The first index is -1 when the list is empty or starts with a UUID (``GPU-...``,
    ``MIG-...``) instead of an index. The count is -1 when the variable is unset, which
    makes every GPU visible.
    """
    if value is None:
        return -1, -1
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    if not entries:
        return -1, 0
    first = int(entries[0]) if entries[0].isdigit() else -1
    return first, len(entries)


def format_visible_devices(first: int, count: int) -> str | None:
    """Rebuild a ``CUDA_VISIBLE_DEVICES`` value from :func:`parse_visible_devices`' output.

    Only the first index travels in the metrics, so with several GPUs the rest are written
    as ``+N``, e.g. ``"2,+1"`` for two GPUs starting at 2.
    """
    if count < 0:
        return None
    if count == 0:
        return ""
    head = str(first) if first >= 0 else "?"
    return head if count == 1 else f"{head},+{count - 1}"


def assigned_gpu_fraction(environ: Mapping[str, str] = os.environ) -> float:
    """Return the GPUs this process may use: ``FEDLAB_GPU_FRACTION``, else Ray's assignment, else 0.

    Raises
    ------
    ValueError
        When ``FEDLAB_GPU_FRACTION`` is not a number >= 0.
    """
    raw = environ.get(GPU_FRACTION_ENV, "").strip()
    if raw:
        try:
            fraction = float(raw)
        except ValueError:
            fraction = -1.0
        if not fraction >= 0.0 or fraction == float("inf"):
            raise ValueError(
                f"invalid {GPU_FRACTION_ENV}={raw!r}: must be a number >= 0 (GPUs per client, "
                "e.g. 0.25); unset it to use the fraction Ray assigns"
            )
        return fraction
    ray = _ray_worker()
    if ray is None:
        return 0.0
    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


def current_ray_node_id() -> str | None:
    """Return the id of the Ray node this process runs on, or None outside a Ray worker."""
    ray = _ray_worker()
    return None if ray is None else str(ray.get_runtime_context().get_node_id())


def _ray_worker() -> Any:
    # Only a process that already imported Ray can be a Ray worker. Importing Ray here would
    # only slow down the start of clients that run outside Ray.
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray


def ray_node_hash(node_id: str | None) -> int:
    """Return the first 12 hex digits of a Ray node id as an integer, -1 for None."""
    if not node_id:
        return -1
    return int(node_id[:_NODE_HASH_HEX_DIGITS], 16)


def memory_cap_fraction(gpu_fraction: float) -> float | None:
    """Return the share of one GPU's memory a process holding `gpu_fraction` GPUs may use.

    None means no cap, because the process has no GPU or one or more whole GPUs.
    """
    if gpu_fraction <= 0.0 or gpu_fraction >= 1.0:
        return None
    return gpu_fraction


def apply_memory_cap(device: torch.device, fraction: float | None, cuda: CudaApi | None = None) -> int:
    """Cap the CUDA caching allocator of this process at `fraction` of `device`'s memory.

    Allocations beyond the cap raise ``torch.OutOfMemoryError``. Returns the cap in bytes,
    or 0 when nothing is capped (no fraction, or `device` is not a CUDA device).
    """
    if fraction is None or device.type != "cuda":
        return 0
    cuda = torch.cuda if cuda is None else cuda
    index = device.index if device.index is not None else cuda.current_device()
    cuda.set_per_process_memory_fraction(fraction, index)
    return int(fraction * cuda.get_device_properties(index).total_memory)


def release_device_memory(device: torch.device, cuda: CudaApi | None = None) -> bool:
    """Release the cached CUDA blocks of freed tensors to other processes; return whether it did.

    On the CPU it does nothing, because freed tensors are returned to the allocator as soon
    as their last reference goes.
    """
    if device.type != "cuda":
        return False
    gc.collect()  # models in reference cycles would otherwise keep their blocks cached
    (torch.cuda if cuda is None else cuda).empty_cache()
    return True


def pin_client(environ: Mapping[str, str] = os.environ, cuda: CudaApi | None = None,
               device: torch.device | None = None) -> ClientPlacement:
    """Choose the client's device and cap its GPU memory at its GPU fraction."""
    device = select_device() if device is None else device
    fraction = assigned_gpu_fraction(environ)
    cap_fraction = memory_cap_fraction(fraction)
    cap_bytes = apply_memory_cap(device, cap_fraction, cuda)
    return ClientPlacement(
        cuda_visible_devices=environ.get("CUDA_VISIBLE_DEVICES"),
        gpu_fraction=fraction,
        memory_cap_fraction=cap_fraction,
        memory_cap_bytes=cap_bytes,
        device=device,
        ray_node_id=current_ray_node_id(),
        process_id=os.getpid(),
    )


def probe_memory_cap(
    device: torch.device, cap_bytes: int, allocate: Callable[[int], object] | None = None
) -> tuple[int, int]:
    """Check that the cap holds: allocate more than `cap_bytes`, then half of it.

    Returns (over-cap allocation raised OOM, half-cap allocation succeeded) as 1/0, or
    (-1, -1) when nothing is capped. `allocate` takes a size in bytes and raises
    ``torch.OutOfMemoryError`` when it cannot allocate; by default it allocates on `device`.
    """
    if device.type != "cuda" or cap_bytes <= 0:
        return -1, -1
    if allocate is None:
        def allocate(nbytes: int) -> object:
            return torch.empty(nbytes, dtype=torch.uint8, device=device)

    def fits(nbytes: int) -> bool:
        try:
            block = allocate(nbytes)
        except torch.OutOfMemoryError:
            return False
        del block
        return True

    over_raised = not fits(cap_bytes + _PROBE_MARGIN_BYTES)
    under_ok = fits(cap_bytes // 2)
    return int(over_raised), int(under_ok)


def process_peak_rss_bytes() -> int:
    """Return the peak resident set size of this process in bytes (Linux ``ru_maxrss``)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def placement_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """ClientApp mod: pin the client, run the handler, free GPU memory, report the placement."""
    placement = pin_client()
    extra = placement.to_metrics()
    if os.environ.get(CAP_PROBE_ENV, "").strip() == "1":
        over, under = probe_memory_cap(placement.device, placement.memory_cap_bytes)
        release_device_memory(placement.device)
        extra.update({CAP_PROBE_OVER_RAISED: over, CAP_PROBE_UNDER_OK: under})
    try:
        reply = call_next(msg, context)
    finally:
        release_device_memory(placement.device)
    if reply.has_content() and METRICS_KEY in reply.content.metric_records:
        metrics = reply.content.metric_records[METRICS_KEY]
        # The peak RSS is read again now, so that it includes the handler's own work.
        extra[PROCESS_PEAK_RSS] = process_peak_rss_bytes()
        for key, value in extra.items():
            metrics[key] = value
    return reply


# Server side ----------------------------------------------------------------------------


def placement_results(
    client_metrics: Mapping[int, Mapping[str, float | int]],
    node_partitions: Mapping[int, int],
    server_peak_rss_bytes: int | None = None,
) -> dict[str, Any]:
    """Gather the clients' placements into the ``placement`` entry of ``results.json``.

    Returns
    -------
    dict
        ``{"placement": {...}}`` with one row per reporting client. A row has the node id,
        partition, ``CUDA_VISIBLE_DEVICES``, torch device, GPU fraction, memory cap, Ray node
        index, process id and peak RSS. The entry also counts the clients per Ray node and
        per GPU, and gives the peak memory of the client processes and of this (server)
        process. The result is ``{}`` when no client reported a placement.
    """
    reporting = sorted(node for node, metrics in client_metrics.items() if GPU_VISIBLE_COUNT in metrics)
    if not reporting:
        return {}

    # Ray nodes are numbered in order of their first client, so the table stays readable.
    node_index: dict[int, int] = {}
    rows = []
    for node in reporting:
        metrics = client_metrics[node]
        node_hash = int(metrics.get(RAY_NODE_HASH, -1))
        if node_hash >= 0:
            node_index.setdefault(node_hash, len(node_index))
        device_index = int(metrics.get(DEVICE_INDEX, -1))
        rows.append({
            "node_id": node,
            "partition_id": node_partitions.get(node),
            "cuda_visible_devices": format_visible_devices(
                int(metrics[GPU_FIRST_VISIBLE]), int(metrics[GPU_VISIBLE_COUNT])
            ),
            "device": "cpu" if device_index < 0 else f"cuda:{device_index}",
            "gpu_fraction": float(metrics.get(GPU_FRACTION, 0.0)),
            "memory_cap_fraction": float(metrics.get(MEMORY_CAP_FRACTION, 0.0)),
            "memory_cap_bytes": int(metrics.get(MEMORY_CAP_BYTES, 0)),
            "ray_node": node_index.get(node_hash),
            "process_id": int(metrics.get(PROCESS_ID, -1)),
            "peak_rss_bytes": int(metrics.get(PROCESS_PEAK_RSS, 0)),
        })
        if CAP_PROBE_OVER_RAISED in metrics:
            rows[-1]["cap_probe_over_raised"] = int(metrics[CAP_PROBE_OVER_RAISED])
            rows[-1]["cap_probe_under_ok"] = int(metrics[CAP_PROBE_UNDER_OK])

    per_process_peak: dict[int, int] = {}
    for row in rows:
        pid = row["process_id"]
        per_process_peak[pid] = max(per_process_peak.get(pid, 0), row["peak_rss_bytes"])
    by_gpu = Counter(row["cuda_visible_devices"] for row in rows if row["cuda_visible_devices"])
    by_ray_node = Counter(row["ray_node"] for row in rows if row["ray_node"] is not None)
    if server_peak_rss_bytes is None:
        server_peak_rss_bytes = process_peak_rss_bytes()
    return {
        "placement": {
            "clients": rows,
            "ray_nodes": {
                str(index): {"node_id_prefix": f"{node_hash:0{_NODE_HASH_HEX_DIGITS}x}",
                             "clients": by_ray_node[index]}
                for node_hash, index in node_index.items()
            },
            "clients_per_gpu": dict(sorted(by_gpu.items())),
            "client_processes": len(per_process_peak),
            "client_peak_rss_bytes_max": max(per_process_peak.values()),
            "client_peak_rss_bytes_sum": sum(per_process_peak.values()),
            "server_peak_rss_bytes": int(server_peak_rss_bytes),
        }
    }
