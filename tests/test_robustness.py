"""Runs through `flwr run` with failing, late and malformed clients, and a killed server that resumes.

The killed run is started with `fedlab run --from` the reference run, so resuming it to the
reference accuracy also checks that a saved config reproduces its run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedlab.config import RunConfig
from fedlab.faults import MALFORMED_KINDS, assigned_faults

PROJECT_DIR = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e

# Partitions 0-8 each send one kind of malformed distillates, partition 9 fails outright,
# partitions 10 and 11 are honest. Server training is long enough to be interrupted.
MALFORMED_PLAN = {index: kind for index, kind in enumerate(sorted(MALFORMED_KINDS))}
FEDSD2C_FAULTS = {
    "strategy": "fedsd2c",
    "num-clients": 12,
    "partitioner": "iid",
    "max-pool-samples": 900,
    "model-width": 64,
    "local-epochs": 8,
    "ipc": 8,
    "mipc": 40,
    "num-crops": 3,
    "synthesis-iterations": 10,
    "ae-pretrain-epochs": 15,
    "server-epochs": 300,
    "max-payload-bytes": 1_000_000,
    "fault-plan": " ".join(f"{p}:{kind}" for p, kind in MALFORMED_PLAN.items()) + " 9:fail",
    "node-wait-seconds": 60.0,
}
REASONS = {
    "missing-record": "lacks the 'distillates' ArrayRecord",
    "missing-array": "lacks arrays",
    "extra-array": "unexpected arrays",
    "bad-shape": "latents have shape",
    "bad-dtype": "latents have dtype int64",
    "non-finite": "NaN or infinite",
    "bad-class-id": "class ids span",
    "bad-soft-labels": "not probability distributions",
    "oversize": "exceeds max-payload-bytes=1000000",
}


def config_words(values: dict[str, object]) -> str:
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in values.items())


def fedlab_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedlab.cli", *args]


def run_env() -> dict[str, str]:
    # One torch thread in every process, so an interrupted and an uninterrupted run compute alike.
    return {**os.environ, "FEDLAB_TORCH_THREADS": "1"}


def run_args(values: dict[str, object], output_dir: Path, cache_dir: Path) -> list[str]:
    values = {**values, "output-dir": str(output_dir), "ae-cache-dir": str(cache_dir)}
    return fedlab_command("run", "--app-dir", str(PROJECT_DIR), "--quiet", "--clients",
                          str(values["num-clients"]), "--run-config", config_words(values))


def complete_run(values: dict[str, object], output_dir: Path, cache_dir: Path) -> dict[str, object]:
    result = subprocess.run(run_args(values, output_dir, cache_dir), capture_output=True, text=True,
                            timeout=900, check=False, env=run_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(Path(result.stdout.strip().splitlines()[-1]).read_text())


@pytest.fixture(scope="module")
def fedsd2c_reference(tmp_path_factory: pytest.TempPathFactory, ae_cache_dir: Path) -> dict[str, object]:
    return complete_run(FEDSD2C_FAULTS, tmp_path_factory.mktemp("reference"), ae_cache_dir)


def test_malformed_replies_are_rejected_and_the_run_completes(fedsd2c_reference: dict[str, object]) -> None:
    results = fedsd2c_reference
    rejected = {entry["partition_id"]: entry["reason"] for entry in results["rejected_clients"]}
    assert sorted(rejected) == sorted(MALFORMED_PLAN)
    for partition, kind in MALFORMED_PLAN.items():
        assert REASONS[kind] in rejected[partition], (kind, rejected[partition])

    failed = [entry for entry in results["failed_clients"] if entry["kind"] == "failed"]
    assert len(failed) == 1 and "injected failure of partition 9" in failed[0]["reason"]
    assert len(results["failed_clients"]) == len(MALFORMED_PLAN) + 1
    assert results["injected_faults"]["9"] == "fail"

    # Only the two honest clients' distillates were used.
    accepted = [c for c in results["clients"] if c.get("num_distillates")]
    assert len(accepted) == 2
    assert results["num_distillates"] == sum(c["num_distillates"] for c in accepted)
    assert results["test_accuracy"] > 0.3  # chance is 0.1
    stored = sorted(p.name for p in (Path(results["run_dir"]) / "uploads").glob("partition-*.npz"))
    assert stored == ["partition-0010.npz", "partition-0011.npz"]


def test_killed_server_resumes_to_the_same_accuracy(
    tmp_path: Path, ae_cache_dir: Path, fedsd2c_reference: dict[str, object]
) -> None:
    # The run starts from the reference run's saved config, which `--from` must reproduce.
    output_dir = tmp_path / "outputs"
    reference_dir = Path(str(fedsd2c_reference["run_dir"]))
    command = fedlab_command("run", "--app-dir", str(PROJECT_DIR), "--quiet", "--from", str(reference_dir),
                             "--run-config", f"output-dir='{output_dir}'")
    log = (tmp_path / "run.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=run_env(),
                               start_new_session=True)
    try:
        # Wait until every reply is stored, then stop the run while the server trains.
        deadline = time.monotonic() + 600
        state_file = None
        while time.monotonic() < deadline and process.poll() is None:
            found = list(output_dir.glob("*/uploads/server_state.json"))
            if found and json.loads(found[0].read_text() or "{}").get("collection_complete"):
                state_file = found[0]
                break
            time.sleep(0.2)
        assert state_file is not None, (tmp_path / "run.log").read_text()[-3000:]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    run_dir = state_file.parent.parent
    assert not (run_dir / "results.json").exists(), "the run finished before it could be stopped"
    saved = json.loads((run_dir / "config.json").read_text())["run_config"]
    reference = json.loads((reference_dir / "config.json").read_text())["run_config"]
    assert saved["output-dir"] == str(output_dir)
    assert {**saved, "output-dir": ""} == {**reference, "output-dir": ""}

    resumed = subprocess.run(fedlab_command("resume", str(run_dir)), capture_output=True, text=True,
                             timeout=600, check=False, env=run_env())
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert Path(resumed.stdout.strip().splitlines()[-1]) == run_dir / "results.json"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed"] is True
    assert results["test_accuracy"] == fedsd2c_reference["test_accuracy"]
    assert results["num_distillates"] == fedsd2c_reference["num_distillates"]
    assert sorted(e["partition_id"] for e in results["rejected_clients"]) == sorted(MALFORMED_PLAN)
    assert (run_dir / "model.pt").exists()

    again = subprocess.run(fedlab_command("resume", str(run_dir)), capture_output=True, text=True,
                           timeout=120, check=False)
    assert again.returncode == 2 and "--force" in again.stderr


def test_failed_and_late_clients_are_named(tmp_path: Path, ae_cache_dir: Path) -> None:
    # The simulation ends only when the late client's sleep does, so it is kept short.
    values = {
        "strategy": "fedavg",
        "num-clients": 10,
        "partitioner": "iid",
        "max-pool-samples": 900,
        "model-width": 32,
        "local-epochs": 10,
        "fail-fraction": 0.3,
        "late-fraction": 0.1,
        "late-seconds": 100.0,
        "reply-timeout": 90.0,
        "node-wait-seconds": 60.0,
    }
    results = complete_run(values, tmp_path / "outputs", ae_cache_dir)
    expected = assigned_faults(RunConfig.from_run_config(
        {k: v for k, v in values.items()}
    ))
    failing = sorted(p for p, kind in expected.items() if kind == "fail")
    assert len(failing) == 3

    by_kind: dict[str, list[dict[str, object]]] = {}
    for entry in results["failed_clients"]:
        by_kind.setdefault(entry["kind"], []).append(entry)
    named = sorted(int(e["reason"].split("partition ")[1].split()[0]) for e in by_kind["failed"])
    assert named == failing
    assert len(by_kind["timed-out"]) == 1
    assert "reply-timeout=90" in by_kind["timed-out"][0]["reason"]
    assert results["test_accuracy"] > 0.2  # six clients' models averaged once; chance is 0.1
