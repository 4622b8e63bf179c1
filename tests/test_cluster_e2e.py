"""End-to-end runs on Ray set up in two ways: with fractional GPUs declared to Ray, and on an
existing two-node Ray cluster that the simulation joins through ``RAY_ADDRESS``.

The tests need no GPU. Ray schedules the GPUs declared with ``init-args-num-gpus`` like real
ones and sets ``CUDA_VISIBLE_DEVICES`` for each actor. The clients then report the GPU and
the memory cap they would use, while torch still runs on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedlab.launch import OFFLINE_ENV, descendant_pids, free_port

PROJECT_DIR = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")

# FedAvg one-shot on 400 MNIST digits with a small model: the placement, not the accuracy,
# is under test.
SMALL_RUN = {
    "strategy": "fedavg",
    "num-server-rounds": 1,
    "max-pool-samples": 400,
    "alpha": 0.5,
    "min-partition-size": 10,
    "model-width": 16,
    "local-epochs": 1,
    "node-wait-seconds": 60.0,
}

pytestmark = pytest.mark.e2e


def run_cli(tmp_path: Path, clients: int, federation: str, env: dict[str, str] | None = None) -> dict:
    """Run ``fedlab run`` with SMALL_RUN and return its results.json."""
    values = {**SMALL_RUN, "output-dir": str(tmp_path / "outputs")}
    overrides = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in values.items())
    result = subprocess.run(
        [sys.executable, "-m", "fedlab.cli", "run", "--app-dir", str(PROJECT_DIR), "--quiet",
         "--clients", str(clients), "--run-config", overrides, "--federation-config", federation],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(Path(result.stdout.strip().splitlines()[-1]).read_text())
    assert results["failed_clients"] == []
    assert len(results["clients"]) == clients
    return results


def test_fractional_gpus_spread_and_capped(tmp_path: Path) -> None:
    # Ray is given 4 CPUs and 2 GPUs, so 4 actors with half a GPU each fit.
    federation = "init-args-num-cpus=4 init-args-num-gpus=2 client-resources-num-cpus=1 client-resources-num-gpus=0.5"
    results = run_cli(tmp_path, clients=4, federation=federation)
    placement = results["placement"]
    rows = placement["clients"]

    assert len(rows) == 4
    assert set(placement["clients_per_gpu"]) == {"0", "1"}
    for row in rows:
        assert row["gpu_fraction"] == 0.5
        assert row["memory_cap_fraction"] == 0.5
        # No CUDA here: the cap is reported but torch has nothing to enforce it on.
        assert row["memory_cap_bytes"] == 0
        assert row["device"] == "cpu"
        assert row["ray_node"] == 0
    # Every process stays on the one GPU Ray assigned it.
    gpus_of_process: dict[int, set[str]] = {}
    for row in rows:
        gpus_of_process.setdefault(row["process_id"], set()).add(row["cuda_visible_devices"])
    assert all(len(gpus) == 1 for gpus in gpus_of_process.values())
    assert placement["client_peak_rss_bytes_max"] > 0
    assert placement["server_peak_rss_bytes"] > 0


# An existing Ray cluster -----------------------------------------------------------------


@dataclass
class RayNodeProcess:
    """One `ray start --block` process; stopping it stops its raylet, GCS and workers."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, grace_seconds: float = 20.0) -> None:
        pids = [self.process.pid, *descendant_pids(self.process.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.2)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _agent_ports() -> list[str]:
    ports = []
    for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"):
        ports += [flag, str(free_port())]
    return ports


@contextlib.contextmanager
def two_node_ray_cluster(cpus_per_node: int = 1) -> Iterator[tuple[str, dict[str, str]]]:
    """Start a Ray head and one worker node on this machine; yield the address and the env.

    Each node has `cpus_per_node` CPUs. All of Ray's files, including the
    ``ray_current_cluster`` file that a plain ``ray.init()`` reads, go to a private temporary
    folder (``RAY_TMPDIR`` and ``--temp-dir``), so Ray instances of other users on this
    machine neither see nor join this cluster. Only the processes started here are stopped.
    """
    # Ray's socket paths must stay short, so the folder sits directly under /tmp.
    root = Path(tempfile.mkdtemp(prefix="fl-ray-", dir="/tmp"))
    env = {**os.environ, **OFFLINE_ENV, "RAY_TMPDIR": str(root)}
    env.pop("RAY_ADDRESS", None)
    gcs_port = free_port()
    address = f"127.0.0.1:{gcs_port}"
    common = ["--block", "--num-cpus", str(cpus_per_node), "--num-gpus", "0",
              "--object-store-memory", str(200 * 2**20), "--disable-usage-stats"]
    nodes: list[RayNodeProcess] = []

    def start(name: str, arguments: list[str]) -> None:
        log_path = root / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([RAY, "start", *arguments, *common, *_agent_ports()], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        nodes.append(RayNodeProcess(process, log_path))

    try:
        start("head", ["--head", "--port", str(gcs_port), "--temp-dir", str(root / "ray"),
                       "--include-dashboard", "false", "--ray-client-server-port", str(free_port())])
        _wait_for_nodes(address, env, 1, nodes)
        start("worker", ["--address", address])
        _wait_for_nodes(address, env, 2, nodes)
        yield address, env
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def cluster_node_ids(address: str, env: dict[str, str]) -> list[str]:
    """Return the ids of the cluster's alive nodes as `ray status` lists them."""
    status = subprocess.run([RAY, "status", "--address", address], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return re.findall(r"node_([0-9a-f]{56})", active)


def _wait_for_nodes(address: str, env: dict[str, str], expected: int, nodes: list[RayNodeProcess]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for node in nodes:
            if node.process.poll() is not None:
                raise RuntimeError(f"ray start exited with {node.process.returncode}: "
                                   f"{node.log_path.read_text()[-2000:]}")
        if len(cluster_node_ids(address, env)) >= expected:
            return
        time.sleep(2)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {expected} nodes within 180 s")


def test_existing_cluster_serves_clients_on_both_nodes(tmp_path: Path) -> None:
    with two_node_ray_cluster(cpus_per_node=1) as (address, env):
        node_ids = cluster_node_ids(address, env)
        # One CPU per node and one per client: one actor fits on each node, so both must serve.
        results = run_cli(tmp_path, clients=4, federation="client-resources-num-cpus=1",
                          env={**env, "RAY_ADDRESS": address})
        placement = results["placement"]
        ray_nodes = placement["ray_nodes"]

        assert len(ray_nodes) == 2
        assert all(node["clients"] >= 1 for node in ray_nodes.values())
        assert sum(node["clients"] for node in ray_nodes.values()) == 4
        # The clients ran on the cluster started here, not on a Ray instance of the simulation.
        prefixes = {node["node_id_prefix"] for node in ray_nodes.values()}
        assert prefixes == {node_id[:12] for node_id in node_ids}
        assert placement["client_processes"] == 2
