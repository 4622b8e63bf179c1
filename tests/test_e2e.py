"""End-to-end runs through `flwr run` on a private SuperLink with real Ray actors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedlab.launch import failure_reason, simulate
from strategies import STRATEGIES

PROJECT_DIR = Path(__file__).resolve().parent.parent

# A small but real setting: 3 clients on 900 real MNIST digits, small models.
SMALL_RUN = {
    "max-pool-samples": 900,
    "alpha": 0.5,
    "min-partition-size": 20,
    "model-width": 64,
    "local-epochs": 8,
    "ipc": 8,
    "mipc": 40,
    "num-crops": 3,
    "synthesis-iterations": 10,
    "ae-pretrain-epochs": 15,
    "server-epochs": 40,
    "node-wait-seconds": 60.0,
}
NUM_CLIENTS = 3

pytestmark = pytest.mark.e2e


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedlab.cli", "run", "--app-dir", str(PROJECT_DIR), "--quiet", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def overrides(tmp_path: Path, ae_cache_dir: Path, **extra: object) -> str:
    values = {
        **SMALL_RUN,
        "output-dir": str(tmp_path / "outputs"),
        "ae-cache-dir": str(ae_cache_dir),
        **extra,
    }
    return " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in values.items())


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_strategy_run_completes(tmp_path: Path, ae_cache_dir: Path, strategy: str) -> None:
    extra = {"strategy": strategy}
    if strategy == "fedavg":
        extra["num-server-rounds"] = 2
    if strategy in ("dense", "coboosting"):
        # A few generator epochs exercise every step; the student starts from the average.
        extra["datafree-epochs"] = 3
    result = run_cli(tmp_path, "--clients", str(NUM_CLIENTS), "--run-config", overrides(tmp_path, ae_cache_dir, **extra))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # The last line printed is the results path.
    results_path = Path(result.stdout.strip().splitlines()[-1])
    assert results_path.name == "results.json"
    results = json.loads(results_path.read_text())
    run_dir = results_path.parent

    assert results["strategy"] == strategy
    assert results["num_clients"] == NUM_CLIENTS
    assert results["failed_clients"] == []
    assert len(results["clients"]) == NUM_CLIENTS
    assert results["test_accuracy"] > 0.5  # chance is 0.1
    assert results["upload_bytes_per_client"] > 0
    assert results["model_bytes"] > 0
    downloads = [client["download_bytes"] for client in results["clients"]]
    assert results["download_bytes_per_client"] == pytest.approx(sum(downloads) / NUM_CLIENTS)
    assert results["wall_seconds"] > 0
    for name in ("config.json", "partition_manifest.json", "model.pt"):
        assert (run_dir / name).exists(), name

    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["run_config"]["strategy"] == strategy
    assert saved["seed"] == 0
    manifest = json.loads((run_dir / "partition_manifest.json").read_text())
    assert len(manifest["partitions"]) == NUM_CLIENTS
    assert torch.load(run_dir / "model.pt", weights_only=True)

    # One CPU per client and no GPU: Ray hides every GPU from the actors.
    for row in results["placement"]["clients"]:
        assert row["gpu_fraction"] == 0.0
        assert row["memory_cap_fraction"] == 0.0
        assert row["device"] == "cpu"
        assert row["cuda_visible_devices"] == ""

    if strategy == "fedsd2c":
        # Distillates are far smaller than a model upload.
        assert results["upload_bytes_per_client"] < results["model_bytes"] / 4
        # Every request carries the autoencoder's weights, which dwarf the distillates.
        assert results["download_bytes_per_client"] > 2 * results["upload_bytes_per_client"]
        assert results["num_distillates"] > 0
        assert results["autoencoder"]["test_psnr_db"] > 10
        for phase in ("local_training", "coreset", "synthesis", "server_training"):
            assert results["phase_seconds"][phase] > 0, phase
    if strategy == "fedavg":
        assert set(results["test_accuracy_per_round"]) == {"0", "1", "2"}
        # Each of the 2 rounds sends the global model to every client.
        assert results["download_bytes_per_client"] > 2 * results["model_bytes"]
    else:
        assert results["download_bytes_per_client"] > 0


def test_invalid_config_fails_before_the_run(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--clients", "2", "--run-config", "alpha=-1")
    assert result.returncode == 2
    assert "alpha=-1" in result.stderr


def test_unknown_strategy_lists_valid_names(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--run-config", "strategy='fedprox'")
    assert result.returncode == 2
    assert "fedprox" in result.stderr
    for name in STRATEGIES.names():
        assert name in result.stderr


def test_unknown_federation_field_exits_2(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--clients", "2", "--federation-config", "foo=1")
    assert result.returncode == 2
    assert "did not start a run" in result.stderr
    assert "Unknown simulation config field(s): foo" in result.stderr


def test_failed_serverapp_gives_failed_status(tmp_path: Path) -> None:
    # Bypass the CLI's own validation so that the ServerApp itself rejects the value.
    outcome = simulate(
        PROJECT_DIR,
        num_supernodes=2,
        run_config={"num-clients": 2, "ipc": 0, "output-dir": str(tmp_path)},
        echo=False,
    )
    assert outcome.status == "finished:failed"
    assert not outcome.completed
    assert "ipc=0" in outcome.log
    assert "ipc=0" in (failure_reason(outcome.log) or "")
    assert outcome.results_path is None
