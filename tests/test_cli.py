"""The `fedlab` command line: listing, config resolution and autoencoder pretraining."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fedlab.autoencoder import load_autoencoder
from fedlab.cli import main, resolve_run_config
from fedlab.config import ConfigError

PROJECT_DIR = Path(__file__).resolve().parent.parent


def test_list_prints_every_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    output = capsys.readouterr().out
    for kind in ("strategy", "dataset", "model", "partitioner", "distiller"):
        assert f"{kind}:" in output
    assert "fedsd2c" in output


def test_resolve_merges_defaults_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config, overrides = resolve_run_config(PROJECT_DIR, ["strategy='fedavg' alpha=0.5", "ipc=3"], clients=4)
    assert config.strategy == "fedavg"
    assert config.alpha == 0.5
    assert config.ipc == 3
    assert config.num_clients == 4
    assert overrides["num-clients"] == 4
    # Relative folders become absolute: the ServerApp runs elsewhere.
    assert overrides["output-dir"] == str(tmp_path / "outputs")


def test_resolve_makes_autoencoder_folder_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _, overrides = resolve_run_config(PROJECT_DIR, ["autoencoder='saved/ae'"], clients=None)
    assert overrides["autoencoder"] == str(tmp_path / "saved" / "ae")
    _, overrides = resolve_run_config(PROJECT_DIR, ["autoencoder='random'"], clients=None)
    assert overrides["autoencoder"] == "random"


def test_resolve_rejects_bad_value() -> None:
    with pytest.raises(ConfigError, match="num-clients=0"):
        resolve_run_config(PROJECT_DIR, [], clients=0)


def test_resolve_rejects_two_different_client_counts() -> None:
    with pytest.raises(ConfigError, match="--clients 4 and run-config num-clients=20 disagree"):
        resolve_run_config(PROJECT_DIR, ["num-clients=20"], clients=4)
    config, _ = resolve_run_config(PROJECT_DIR, ["num-clients=4"], clients=4)
    assert config.num_clients == 4


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [([], None), (["CLIENTS=7"], "--clients 7"), (["RUN_CONFIG=num-clients=20"], None)],
)
def test_make_run_passes_clients_only_when_given(make_args: list[str], expected: str | None) -> None:
    # `make -n` prints the recipe without running it; the stamp keeps the install step out.
    result = subprocess.run(
        ["make", "-n", "-o", ".venv/.fedlab-installed", "run", *make_args],
        cwd=PROJECT_DIR, capture_output=True, text=True, check=True,
    )
    line = next(line for line in result.stdout.splitlines() if "fedlab run" in line)
    if expected is None:
        assert "--clients" not in line
    else:
        assert expected in line


def test_run_with_bad_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--run-config", "ipc=0"]) == 2
    assert "ipc=0" in capsys.readouterr().err


def test_pretrain_autoencoder_saves_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "ae"
    code = main(
        [
            "pretrain-autoencoder",
            "--out",
            str(out),
            "--run-config",
            "dataset='digits' ae-downsample=2 ae-pretrain-epochs=1",
        ]
    )
    assert code == 0
    autoencoder = load_autoencoder(out)
    assert autoencoder.config.in_channels == 1


def test_pretrain_without_public_split_exits_2(tmp_path: Path) -> None:
    code = main(
        [
            "pretrain-autoencoder",
            "--out",
            str(tmp_path / "ae"),
            "--run-config",
            "dataset='digits' public-fraction=0.0 ae-downsample=2",
        ]
    )
    assert code == 2


def test_unquoted_string_gets_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--run-config", "strategy=fedavg"]) == 2
    message = capsys.readouterr().err
    assert "strategy=fedavg" in message
    assert "quotes" in message
