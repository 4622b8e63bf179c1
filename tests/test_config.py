"""Run-config parsing and validation."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedlab.config import ConfigError, RunConfig
from fedlab.registries import all_registries

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def app_config() -> dict:
    with PYPROJECT.open("rb") as handle:
        return tomllib.load(handle)["tool"]["flwr"]["app"]["config"]


def test_pyproject_lists_every_key_with_its_default() -> None:
    declared = app_config()
    expected = RunConfig().to_run_config()
    assert set(declared) == set(expected)
    for key, value in expected.items():
        assert declared[key] == value, key


def test_defaults_parse_from_pyproject() -> None:
    config = RunConfig.from_run_config(app_config())
    assert config == RunConfig()


def test_round_trip_through_run_config() -> None:
    config = RunConfig(strategy="fedavg", alpha=0.5, num_clients=4)
    assert RunConfig.from_run_config(config.to_run_config()) == config


@pytest.mark.parametrize("kind", ["strategy", "dataset", "model", "partitioner", "distiller"])
def test_unknown_name_lists_valid_names(kind: str) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig.from_run_config({kind: "no-such-thing"})
    message = str(error.value)
    assert "no-such-thing" in message
    for name in all_registries()[kind].names():
        assert name in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("alpha", 0.0),
        ("alpha", -0.5),
        ("ipc", 0),
        ("num-clients", 0),
        ("mipc", 1),
        ("amplitude-mix", 1.5),
        ("test-fraction", 1.0),
        ("ae-downsample", 3),
        ("latent-dtype", "bfloat16"),
        ("server-epochs", 0),
        ("seed", -1),
        ("min-replies", 11),
        ("output-dir", ""),
        ("run-name", "../escape"),
        ("run-name", "a/b"),
        ("run-name", ".."),
    ],
)
def test_out_of_range_value_names_key_and_value(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as error:
        RunConfig.from_run_config({key: value})
    assert f"{key}={value!r}" in str(error.value)


def test_fractions_must_leave_a_pool() -> None:
    with pytest.raises(ConfigError, match="test-fraction \\+ public-fraction < 1"):
        RunConfig.from_run_config({"test-fraction": 0.6, "public-fraction": 0.5})


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown run-config key 'alhpa'"):
        RunConfig.from_run_config({"alhpa": 0.1})


def test_wrong_type_is_rejected() -> None:
    with pytest.raises(ConfigError, match="expected int"):
        RunConfig.from_run_config({"ipc": 2.5})
    with pytest.raises(ConfigError, match="quote strings"):
        RunConfig.from_run_config({"strategy": 3})


def test_integral_float_is_accepted_for_int() -> None:
    assert RunConfig.from_run_config({"ipc": 5.0}).ipc == 5


def test_empty_autoencoder_path_is_rejected() -> None:
    with pytest.raises(ConfigError, match="autoencoder"):
        RunConfig.from_run_config({"autoencoder": "  "})


def test_local_delivery_rejects_random_autoencoder() -> None:
    assert RunConfig.from_run_config({"autoencoder-delivery": "local"}).autoencoder_delivery == "local"
    with pytest.raises(ConfigError, match="autoencoder-delivery='local'.*'message' when autoencoder is 'random'"):
        RunConfig.from_run_config({"autoencoder-delivery": "local", "autoencoder": "random"})
    with pytest.raises(ConfigError, match="one of message, local"):
        RunConfig.from_run_config({"autoencoder-delivery": "disk"})


def test_min_replies_may_equal_num_clients() -> None:
    assert RunConfig.from_run_config({"num-clients": 4, "min-replies": 4}).min_replies == 4


def test_file_datasets_need_a_data_root() -> None:
    with pytest.raises(ConfigError, match="data-root='': must be the local folder that holds dataset 'cifar10'"):
        RunConfig.from_run_config({"dataset": "cifar10"})
    assert RunConfig.from_run_config({"dataset": "cifar10", "data-root": "/data"}).data_root == "/data"
    assert RunConfig.from_run_config({"dataset": "digits"}).data_root == ""


def test_shards_above_class_count_rejected() -> None:
    with pytest.raises(ConfigError, match="shards-per-client=11: must be at most 10, the number of classes of dataset 'mnist'"):
        RunConfig.from_run_config({"partitioner": "shards", "shards-per-client": 11})
    # Too few holders for 10 classes is left to the partitioner, which counts the classes present.
    assert RunConfig.from_run_config({"partitioner": "shards", "num-clients": 3, "shards-per-client": 2}).num_clients == 3
    # An image folder's class count is known only once its files are read.
    config = {"dataset": "imagefolder", "data-root": "/data", "partitioner": "shards", "shards-per-client": 50}
    assert RunConfig.from_run_config(config).shards_per_client == 50
