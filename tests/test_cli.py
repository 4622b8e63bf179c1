"""The `fedlab` command line: listing, config resolution and autoencoder pretraining."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from fedlab.autoencoder import load_autoencoder
from fedlab.cli import main, resolve_run_config, resume_hint
from fedlab.config import ConfigError, RunConfig

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


def saved_run(folder: Path, **changes: object) -> Path:
    """Write the config.json a run with `changes` to the defaults would have saved."""
    config = RunConfig().replace(**changes)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"run_config": config.to_run_config(), "seed": config.seed}))
    return folder


def test_from_saved_run_keeps_its_config(tmp_path: Path) -> None:
    folder = saved_run(tmp_path / "old-run", seed=3, alpha=0.7, ipc=4, run_name="old-run")
    config, overrides = resolve_run_config(PROJECT_DIR, ["alpha=0.2"], clients=5, saved_run=str(folder))
    assert config.seed == 3
    assert config.ipc == 4
    assert config.alpha == 0.2  # the command line wins over the saved config
    assert config.num_clients == 5
    assert config.run_name == ""  # a new folder, not the old run's
    assert overrides["seed"] == 3  # passed on to flwr run, not only validated here
    same, _ = resolve_run_config(PROJECT_DIR, [], clients=None, saved_run=str(folder / "config.json"))
    assert same.alpha == 0.7


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("{not json", "is not valid JSON"),
        ('{"seed": 0}', "has no 'run_config' object"),
        ('{"run_config": {"alpha": 0.5, "old-key": 1}}', "does not know: old-key"),
    ],
)
def test_from_rejects_bad_saved_config(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        resolve_run_config(PROJECT_DIR, [], clients=None, saved_run=str(path))


def test_run_from_missing_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--from", str(tmp_path / "missing")]) == 2
    assert "outputs/<run-id>" in capsys.readouterr().err


def test_run_rejects_used_run_name_before_starting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    assert main(["run", "--run-config", f"output-dir='{tmp_path}' run-name='taken'"]) == 2
    assert "already contains files" in capsys.readouterr().err


def test_run_with_bad_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--run-config", "ipc=0"]) == 2
    assert "ipc=0" in capsys.readouterr().err


def test_run_missing_data_root_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-cifar"
    assert main(["run", "--run-config", f"dataset='cifar10' data-root='{missing}'"]) == 2
    assert f"data-root='{missing}': folder not found" in capsys.readouterr().err


def test_run_rejects_supernode_count_clash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--clients", "3", "--federation-config", "num-supernodes=5"]) == 2
    error = capsys.readouterr().err
    assert "num-supernodes=5: it differs" in error
    assert "num-clients=3" in error


def test_resume_hint_names_the_run_with_stored_uploads(tmp_path: Path) -> None:
    config = RunConfig.from_run_config({"output-dir": str(tmp_path)})
    assert resume_hint(config, started=0.0) == "it stored no uploads to resume from"
    uploads = tmp_path / "20261205-fedsd2c-7" / "uploads"
    uploads.mkdir(parents=True)
    (uploads / "server_state.json").write_text("{}")
    assert resume_hint(config, started=0.0).endswith(f"`fedlab resume {tmp_path / '20261205-fedsd2c-7'}`")
    # Uploads stored before this run started belong to another run.
    assert resume_hint(config, started=time.time() + 60) == "it stored no uploads to resume from"


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


def test_pretrain_needs_force_to_replace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ae"
    out.mkdir()
    (out / "config.json").write_text("{}")
    arguments = ["pretrain-autoencoder", "--out", str(out), "--run-config",
                 "dataset='digits' ae-downsample=2 ae-pretrain-epochs=1"]

    assert main(arguments) == 2
    assert "pass --force" in capsys.readouterr().err
    assert (out / "config.json").read_text() == "{}"
    assert main([*arguments, "--force"]) == 0
    assert load_autoencoder(out).config.in_channels == 1


def test_run_missing_autoencoder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-autoencoder"
    assert main(["run", "--run-config", f"autoencoder='{missing}' output-dir='{tmp_path / 'out'}'"]) == 2
    message = capsys.readouterr().err
    assert f"autoencoder='{missing}'" in message
    assert f"fedlab pretrain-autoencoder --out {missing}" in message
    assert not (tmp_path / "out").exists()


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


@pytest.mark.parametrize(
    ("option", "text", "message"),
    [
        ("--run-config", "garbage", "word 'garbage': it is not key=value"),
        ("--run-config", "alpha 0.5", "word 'alpha': it is not key=value"),
        ("--run-config", "seed=1 seed=2", "duplicate key 'seed'"),
        ("--federation-config", "garbage", "e.g. client-resources-num-cpus=2"),
        ("--federation-config", "client-resources-num-cpus=0", "client-resources-num-cpus=0: must be a number > 0"),
        ("--federation-config", "client-resources-num-cpus=4096", "so no client could start"),
        ("--federation-config", "client-resources-num-gpus=-1", "client-resources-num-gpus=-1: must be a number >= 0"),
    ],
)
def test_bad_pairs_and_resources_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, text: str, message: str
) -> None:
    args = ["run", option, text]
    if option != "--run-config":
        args += ["--run-config", f"output-dir='{tmp_path}'"]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_later_run_config_overrides_an_earlier_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config, _ = resolve_run_config(PROJECT_DIR, ["alpha=0.3 ipc=4", "alpha=0.7"], clients=None)
    assert config.alpha == 0.7
    assert config.ipc == 4


def test_unwritable_output_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["run", "--run-config", f"output-dir='{blocker / 'runs'}'"]) == 2
    assert "cannot create it" in capsys.readouterr().err


def test_impossible_partitions_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The MNIST pool has 3,500 digits, so 10 clients cannot get 400 each.
    assert main(["run", "--run-config", f"output-dir='{tmp_path}' min-partition-size=400"]) == 2
    error = capsys.readouterr().err
    assert "invalid partition settings for dataset 'mnist'" in error
    assert "min_partition_size=400 (min-partition-size) exceeds the 3500 samples" in error
    assert not any(tmp_path.iterdir())


def test_too_few_shard_holders_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--clients", "3", "--run-config",
                 f"output-dir='{tmp_path}' partitioner='shards' shards-per-client=2"]) == 2
    assert "times shards_per_client=2 (shards-per-client) is less than the 10 classes" in capsys.readouterr().err


def test_pool_cap_named_in_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--run-config", f"output-dir='{tmp_path}' max-pool-samples=50"]) == 2
    error = capsys.readouterr().err
    assert "exceeds the 50 samples" in error
    assert "max-pool-samples=50 caps the client pool" in error


def write_class_folders(root: Path, images_per_class: dict[str, int]) -> None:
    from PIL import Image

    for name, count in images_per_class.items():
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / f"{i}.png")


def test_data_root_partitions_checked_early(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    write_class_folders(data, {"cat": 12, "dog": 12})
    # A broken image shows that only file names were read, not the images.
    (data / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    outputs = tmp_path / "outputs"
    assert main(["run", "--clients", "1", "--run-config",
                 f"output-dir='{outputs}' dataset='imagefolder' data-root='{data}' "
                 "partitioner='shards' shards-per-client=1 min-partition-size=1"]) == 2
    error = capsys.readouterr().err
    assert "invalid partition settings for dataset 'imagefolder'" in error
    assert "less than the 2 classes" in error
    assert not any(outputs.iterdir())


def test_missing_dataset_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--run-config",
                 f"output-dir='{tmp_path / 'outputs'}' dataset='cifar10' data-root='{tmp_path}'"]) == 2
    error = capsys.readouterr().err
    assert "cannot read dataset 'cifar10'" in error
    assert "cifar-10-batches-py" in error
