"""Tests of GPU pinning, the per-process memory cap and the placement table.

The tests run without a GPU. A fake ``torch.cuda`` stands in wherever a CUDA call would be
made, and everything else is the real code.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from fedlab import placement
from fedlab.payload import METRICS_KEY, TRAIN
from fedlab.placement import (
    CAP_PROBE_ENV,
    CAP_PROBE_OVER_RAISED,
    CAP_PROBE_UNDER_OK,
    DEVICE_INDEX,
    GPU_FIRST_VISIBLE,
    GPU_FRACTION,
    GPU_FRACTION_ENV,
    GPU_VISIBLE_COUNT,
    MEMORY_CAP_BYTES,
    MEMORY_CAP_FRACTION,
    PLACEMENT_METRICS,
    PROCESS_ID,
    PROCESS_PEAK_RSS,
    RAY_NODE_HASH,
    apply_memory_cap,
    assigned_gpu_fraction,
    format_visible_devices,
    memory_cap_fraction,
    parse_visible_devices,
    pin_client,
    placement_mod,
    placement_results,
    probe_memory_cap,
    ray_node_hash,
    release_device_memory,
)

GIB = 1024**3


class FakeCuda:
    """A stand-in for ``torch.cuda`` with GPUs of `total_memory` bytes that records calls."""

    def __init__(self, total_memory: int = 80 * GIB, current: int = 0) -> None:
        self.total_memory = total_memory
        self.current = current
        self.fractions: list[tuple[float, int]] = []
        self.empty_cache_calls = 0

    def set_per_process_memory_fraction(self, fraction: float, device: int | None = None) -> None:
        self.fractions.append((fraction, device))

    def get_device_properties(self, device: int) -> SimpleNamespace:
        return SimpleNamespace(total_memory=self.total_memory, index=device)

    def current_device(self) -> int:
        return self.current

    def empty_cache(self) -> None:
        self.empty_cache_calls += 1


@pytest.fixture(autouse=True)
def task_identity():
    """Messages are built outside a Flower process here; give them the identity Flower would."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def request() -> Message:
    message = Message(content=RecordDict(), dst_node_id=5, message_type=TRAIN)
    message.metadata.__dict__["_message_id"] = "request-5"
    return message


# CUDA_VISIBLE_DEVICES -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, (-1, -1)),
        ("", (-1, 0)),
        ("2", (2, 1)),
        ("1,3", (1, 2)),
        (" 0 , 1 ", (0, 2)),
        ("GPU-8a1f2c3d-0000-1111-2222-333344445555", (-1, 1)),
    ],
)
def test_parse_visible_devices(value: str | None, expected: tuple[int, int]) -> None:
    assert parse_visible_devices(value) == expected


@pytest.mark.parametrize("value", [None, "", "0", "7"])
def test_format_visible_devices_round_trip(value: str | None) -> None:
    assert format_visible_devices(*parse_visible_devices(value)) == value


def test_format_visible_devices_several_gpus() -> None:
    assert format_visible_devices(2, 3) == "2,+2"
    assert format_visible_devices(-1, 1) == "?"


# GPU fraction and memory cap ------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu_fraction", "expected"), [(0.0, None), (0.25, 0.25), (0.5, 0.5), (1.0, None), (2.0, None)]
)
def test_memory_cap_fraction(gpu_fraction: float, expected: float | None) -> None:
    assert memory_cap_fraction(gpu_fraction) == expected


def test_apply_memory_cap_sets_fraction_of_device() -> None:
    cuda = FakeCuda(total_memory=80 * GIB)
    cap = apply_memory_cap(torch.device("cuda", 1), 0.25, cuda)
    assert cuda.fractions == [(0.25, 1)]
    assert cap == 20 * GIB


def test_apply_memory_cap_uses_current_device_without_index() -> None:
    cuda = FakeCuda(total_memory=40 * GIB, current=3)
    cap = apply_memory_cap(torch.device("cuda"), 0.5, cuda)
    assert cuda.fractions == [(0.5, 3)]
    assert cap == 20 * GIB


def test_apply_memory_cap_skips_cpu_and_whole_gpus() -> None:
    cuda = FakeCuda()
    assert apply_memory_cap(torch.device("cpu"), 0.5, cuda) == 0
    assert apply_memory_cap(torch.device("cuda", 0), None, cuda) == 0
    assert cuda.fractions == []


def test_assigned_gpu_fraction_from_environment() -> None:
    assert assigned_gpu_fraction({GPU_FRACTION_ENV: "0.25"}) == 0.25
    assert assigned_gpu_fraction({GPU_FRACTION_ENV: " 1 "}) == 1.0
    assert assigned_gpu_fraction({GPU_FRACTION_ENV: "0"}) == 0.0


def test_assigned_gpu_fraction_without_ray_or_environment() -> None:
    # This test process is no Ray worker, so nothing assigns it a GPU.
    assert assigned_gpu_fraction({}) == 0.0
    assert assigned_gpu_fraction({GPU_FRACTION_ENV: ""}) == 0.0


@pytest.mark.parametrize("raw", ["abc", "-0.5", "nan", "inf"])
def test_assigned_gpu_fraction_rejects_bad_values(raw: str) -> None:
    with pytest.raises(ValueError, match=GPU_FRACTION_ENV) as info:
        assigned_gpu_fraction({GPU_FRACTION_ENV: raw})
    assert repr(raw) in str(info.value)


def test_pin_client_caps_a_fractional_gpu() -> None:
    cuda = FakeCuda(total_memory=16 * GIB)
    environ = {"CUDA_VISIBLE_DEVICES": "3", GPU_FRACTION_ENV: "0.5"}
    pinned = pin_client(environ, cuda=cuda, device=torch.device("cuda", 0))
    metrics = pinned.to_metrics()

    assert cuda.fractions == [(0.5, 0)]
    assert metrics[GPU_FIRST_VISIBLE] == 3
    assert metrics[GPU_VISIBLE_COUNT] == 1
    assert metrics[GPU_FRACTION] == 0.5
    assert metrics[MEMORY_CAP_FRACTION] == 0.5
    assert metrics[MEMORY_CAP_BYTES] == 8 * GIB
    assert metrics[DEVICE_INDEX] == 0
    assert metrics[RAY_NODE_HASH] == -1
    assert metrics[PROCESS_ID] == os.getpid()
    assert metrics[PROCESS_PEAK_RSS] > 0


def test_pin_client_on_cpu_reports_the_intended_cap() -> None:
    cuda = FakeCuda()
    environ = {"CUDA_VISIBLE_DEVICES": "1", GPU_FRACTION_ENV: "0.25"}
    metrics = pin_client(environ, cuda=cuda, device=torch.device("cpu")).to_metrics()
    assert cuda.fractions == []
    assert metrics[MEMORY_CAP_FRACTION] == 0.25
    assert metrics[MEMORY_CAP_BYTES] == 0
    assert metrics[DEVICE_INDEX] == -1


def test_pin_client_with_whole_gpu_sets_no_cap() -> None:
    cuda = FakeCuda()
    environ = {"CUDA_VISIBLE_DEVICES": "0,1", GPU_FRACTION_ENV: "2"}
    metrics = pin_client(environ, cuda=cuda, device=torch.device("cuda", 0)).to_metrics()
    assert cuda.fractions == []
    assert metrics[GPU_VISIBLE_COUNT] == 2
    assert metrics[MEMORY_CAP_FRACTION] == 0.0
    assert metrics[MEMORY_CAP_BYTES] == 0


def test_release_device_memory_empties_cuda_cache_only() -> None:
    cuda = FakeCuda()
    assert release_device_memory(torch.device("cuda", 0), cuda) is True
    assert cuda.empty_cache_calls == 1
    assert release_device_memory(torch.device("cpu"), cuda) is False
    assert cuda.empty_cache_calls == 1


def capped_allocator(limit: int):
    """Return an allocator that raises like torch's caching allocator above `limit` bytes."""

    def allocate(nbytes: int) -> bytes:
        if nbytes > limit:
            raise torch.OutOfMemoryError(f"tried to allocate {nbytes} bytes above the cap of {limit}")
        return b""

    return allocate


def test_probe_memory_cap_detects_enforced_cap() -> None:
    cap = 8 * GIB
    assert probe_memory_cap(torch.device("cuda", 0), cap, capped_allocator(cap)) == (1, 1)


def test_probe_memory_cap_detects_missing_cap() -> None:
    cap = 8 * GIB
    assert probe_memory_cap(torch.device("cuda", 0), cap, capped_allocator(80 * GIB)) == (0, 1)


def test_probe_memory_cap_detects_cap_too_small() -> None:
    cap = 8 * GIB
    assert probe_memory_cap(torch.device("cuda", 0), cap, capped_allocator(GIB)) == (1, 0)


def test_probe_memory_cap_skips_uncapped_clients() -> None:
    assert probe_memory_cap(torch.device("cpu"), 8 * GIB, capped_allocator(0)) == (-1, -1)
    assert probe_memory_cap(torch.device("cuda", 0), 0, capped_allocator(0)) == (-1, -1)


def test_ray_node_hash() -> None:
    assert ray_node_hash(None) == -1
    assert ray_node_hash("") == -1
    assert ray_node_hash("415c9ed4ba6ffe8ade75ca08e61f") == 0x415C9ED4BA6F
    # 48 bits survive a round trip through float64, which metric averaging uses.
    assert int(float(ray_node_hash("f" * 56))) == 2**48 - 1


# The ClientApp mod ----------------------------------------------------------------------


def test_mod_adds_placement_to_reply_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GPU_FRACTION_ENV, "0.25")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")

    def handler(msg: Message, _context: object) -> Message:
        return Message(content=RecordDict({METRICS_KEY: MetricRecord({"num-examples": 7})}), reply_to=msg)

    reply = placement_mod(request(), None, handler)
    metrics = reply.content.metric_records[METRICS_KEY]
    assert metrics["num-examples"] == 7
    assert set(PLACEMENT_METRICS) <= set(metrics)
    assert metrics[GPU_FIRST_VISIBLE] == 2
    assert metrics[MEMORY_CAP_FRACTION] == 0.25


def test_mod_reports_probe_when_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CAP_PROBE_ENV, "1")

    def handler(msg: Message, _context: object) -> Message:
        return Message(content=RecordDict({METRICS_KEY: MetricRecord({"num-examples": 7})}), reply_to=msg)

    metrics = placement_mod(request(), None, handler).content.metric_records[METRICS_KEY]
    # On the CPU nothing is capped, so the probe reports that it did not run.
    assert metrics[CAP_PROBE_OVER_RAISED] == -1
    assert metrics[CAP_PROBE_UNDER_OK] == -1


def test_mod_leaves_reply_without_metrics_alone() -> None:
    def handler(msg: Message, _context: object) -> Message:
        return Message(content=RecordDict({"arrays": ArrayRecord()}), reply_to=msg)

    reply = placement_mod(request(), None, handler)
    assert list(reply.content.metric_records) == []


def test_mod_releases_memory_when_handler_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    released: list[torch.device] = []
    monkeypatch.setattr(placement, "release_device_memory", released.append)

    def handler(_msg: Message, _context: object) -> Message:
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError, match="training failed"):
        placement_mod(request(), None, handler)
    assert len(released) == 1


def test_mod_rejects_bad_gpu_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(GPU_FRACTION_ENV, "half")
    with pytest.raises(ValueError, match=GPU_FRACTION_ENV):
        placement_mod(request(), None, lambda msg, _context: msg)


# The server's placement table -----------------------------------------------------------


def client_metrics(gpu: int, node_hash: int, pid: int, rss: int, cap: float = 0.5) -> dict[str, float | int]:
    return {
        "num-examples": 3,
        GPU_FIRST_VISIBLE: gpu,
        GPU_VISIBLE_COUNT: 1 if gpu >= 0 else 0,
        GPU_FRACTION: cap,
        MEMORY_CAP_FRACTION: cap,
        MEMORY_CAP_BYTES: 0,
        DEVICE_INDEX: -1,
        RAY_NODE_HASH: node_hash,
        PROCESS_ID: pid,
        PROCESS_PEAK_RSS: rss,
    }


def test_placement_results_table_and_counts() -> None:
    metrics = {
        11: client_metrics(gpu=0, node_hash=0xAAA, pid=100, rss=500),
        12: client_metrics(gpu=1, node_hash=0xBBB, pid=200, rss=700),
        13: client_metrics(gpu=0, node_hash=0xAAA, pid=100, rss=600),
        14: {"num-examples": 3},  # a client that sent no placement
    }
    results = placement_results(metrics, {11: 0, 12: 1, 13: 2, 14: 3}, server_peak_rss_bytes=900)
    table = results["placement"]

    assert [row["node_id"] for row in table["clients"]] == [11, 12, 13]
    assert [row["partition_id"] for row in table["clients"]] == [0, 1, 2]
    assert [row["cuda_visible_devices"] for row in table["clients"]] == ["0", "1", "0"]
    assert [row["ray_node"] for row in table["clients"]] == [0, 1, 0]
    assert {row["device"] for row in table["clients"]} == {"cpu"}
    assert {row["memory_cap_fraction"] for row in table["clients"]} == {0.5}
    assert table["clients_per_gpu"] == {"0": 2, "1": 1}
    assert table["ray_nodes"]["0"] == {"node_id_prefix": "000000000aaa", "clients": 2}
    assert table["ray_nodes"]["1"]["clients"] == 1
    assert table["client_processes"] == 2
    # Process 100 served two clients; its peak is the larger report.
    assert table["client_peak_rss_bytes_max"] == 700
    assert table["client_peak_rss_bytes_sum"] == 600 + 700
    assert table["server_peak_rss_bytes"] == 900


def test_placement_results_carry_probe() -> None:
    metrics = {1: {**client_metrics(gpu=0, node_hash=1, pid=1, rss=1), CAP_PROBE_OVER_RAISED: 1, CAP_PROBE_UNDER_OK: 1}}
    row = placement_results(metrics, {1: 0}, server_peak_rss_bytes=1)["placement"]["clients"][0]
    assert row["cap_probe_over_raised"] == 1
    assert row["cap_probe_under_ok"] == 1


def test_placement_results_outside_ray() -> None:
    metrics = {1: client_metrics(gpu=-1, node_hash=-1, pid=1, rss=1, cap=0.0)}
    table = placement_results(metrics, {1: 0}, server_peak_rss_bytes=1)["placement"]
    assert table["clients"][0]["ray_node"] is None
    assert table["clients"][0]["cuda_visible_devices"] == ""
    assert table["ray_nodes"] == {}
    assert table["clients_per_gpu"] == {}


def test_placement_results_empty_without_reports() -> None:
    assert placement_results({1: {"num-examples": 3}}, {1: 0}) == {}
    assert placement_results({}, {}) == {}


# The GPU check's verdicts ---------------------------------------------------------------


def gpu_run_results(cap_bytes: int, over: int = 1, under: int = 1) -> dict:
    row = {"node_id": 1, "partition_id": 0, "cuda_visible_devices": "0", "device": "cuda:0",
           "gpu_fraction": 0.5, "memory_cap_fraction": 0.5, "memory_cap_bytes": cap_bytes,
           "process_id": 10, "cap_probe_over_raised": over, "cap_probe_under_ok": under}
    return {"num_clients": 1, "failed_clients": [], "placement": {"clients": [row]}}


def test_gpu_check_passes_capped_run() -> None:
    from benchmarks.gpu_check import check_results

    checks = check_results(gpu_run_results(cap_bytes=8 * GIB), 0.5, {0: 16 * GIB})
    assert [name for name, passed, _ in checks if not passed] == []


def test_gpu_check_fails_without_oom() -> None:
    from benchmarks.gpu_check import check_results

    checks = check_results(gpu_run_results(cap_bytes=8 * GIB, over=0), 0.5, {0: 16 * GIB})
    failed = [name for name, passed, _ in checks if not passed]
    assert failed == ["allocating above the cap raised OutOfMemoryError"]


def test_gpu_check_fails_on_wrong_cap() -> None:
    from benchmarks.gpu_check import check_results

    checks = check_results(gpu_run_results(cap_bytes=4 * GIB), 0.5, {0: 16 * GIB})
    failed = [name for name, passed, _ in checks if not passed]
    assert failed == ["memory cap is the GPU fraction of the GPU's memory"]
