"""How a FedSD2C client obtains the public autoencoder of a distillation request."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, RecordDict

from fedlab.autoencoder import autoencoder_fingerprint, build_autoencoder, load_autoencoder, save_autoencoder
from fedlab.client_app import AUTOENCODER_PATH_KEY, request_autoencoder
from fedlab.payload import AUTOENCODER_CONFIG_KEY, AUTOENCODER_KEY, autoencoder_to_records, record_bytes


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, str]:
    autoencoder = build_autoencoder(1, 28, downsample_factor=4, latent_channels=4, base_channels=4, seed=0)
    folder = save_autoencoder(autoencoder, tmp_path / "server-ae")
    return folder, autoencoder_fingerprint(autoencoder)


def by_message(folder: Path) -> RecordDict:
    autoencoder = load_autoencoder(folder)
    arrays, config = autoencoder_to_records(autoencoder)
    config["fingerprint"] = autoencoder_fingerprint(autoencoder)
    return RecordDict({AUTOENCODER_KEY: arrays, AUTOENCODER_CONFIG_KEY: config})


def by_reference(fingerprint: str, path: str) -> RecordDict:
    return RecordDict({AUTOENCODER_CONFIG_KEY: ConfigRecord({"fingerprint": fingerprint, "path": path})})


def test_request_weights_are_used(saved: tuple[Path, str]) -> None:
    folder, fingerprint = saved
    autoencoder = request_autoencoder(by_message(folder), {})
    assert autoencoder_fingerprint(autoencoder) == fingerprint


def test_local_copy_from_node_config(saved: tuple[Path, str], tmp_path: Path) -> None:
    folder, fingerprint = saved
    device_copy = shutil.copytree(folder, tmp_path / "device" / "ae")
    # The server's folder does not exist on the device, so the node config's copy is used.
    request = by_reference(fingerprint, str(tmp_path / "not-on-this-device"))
    autoencoder = request_autoencoder(request, {AUTOENCODER_PATH_KEY: str(device_copy)})
    assert autoencoder_fingerprint(autoencoder) == fingerprint


def test_local_copy_falls_back_to_server(saved: tuple[Path, str]) -> None:
    folder, fingerprint = saved
    autoencoder = request_autoencoder(by_reference(fingerprint, str(folder)), {})
    assert autoencoder_fingerprint(autoencoder) == fingerprint


def test_reference_request_is_small(saved: tuple[Path, str]) -> None:
    folder, fingerprint = saved
    reference = record_bytes(by_reference(fingerprint, str(folder)))
    assert reference < 1_000
    assert record_bytes(by_message(folder)) > 50 * reference


def test_cached_copy_is_not_shared(saved: tuple[Path, str]) -> None:
    folder, fingerprint = saved
    first = request_autoencoder(by_reference(fingerprint, str(folder)), {})
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    second = request_autoencoder(by_reference(fingerprint, str(folder)), {})
    assert autoencoder_fingerprint(second) == fingerprint


def test_replaced_copy_is_reloaded(saved: tuple[Path, str], tmp_path: Path) -> None:
    folder, fingerprint = saved
    device_copy = shutil.copytree(folder, tmp_path / "device-ae")
    node_config = {AUTOENCODER_PATH_KEY: str(device_copy)}
    request_autoencoder(by_reference(fingerprint, str(folder)), node_config)
    other = build_autoencoder(1, 28, downsample_factor=4, latent_channels=4, base_channels=4, seed=1)
    save_autoencoder(other, device_copy)
    with pytest.raises(ValueError, match="differs from the server's"):
        request_autoencoder(by_reference(fingerprint, str(folder)), node_config)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "no folder to load it from"),
        ("relative/ae", "is a relative path"),
        ("/nonexistent/fedlab-ae", "no saved autoencoder at /nonexistent/fedlab-ae"),
    ],
)
def test_missing_copy_names_fix(saved: tuple[Path, str], path: str, message: str) -> None:
    _, fingerprint = saved
    with pytest.raises(ValueError, match=message) as error:
        request_autoencoder(by_reference(fingerprint, ""), {AUTOENCODER_PATH_KEY: path} if path else {})
    assert f"--node-config \"{AUTOENCODER_PATH_KEY}=" in str(error.value)


def test_different_weights_are_rejected(saved: tuple[Path, str]) -> None:
    folder, _ = saved
    with pytest.raises(ValueError, match="differs from the server's"):
        request_autoencoder(by_reference("0" * 64, str(folder)), {})
    request = by_message(folder)
    request.config_records[AUTOENCODER_CONFIG_KEY]["fingerprint"] = "0" * 64
    with pytest.raises(ValueError, match="the received autoencoder .* differs"):
        request_autoencoder(request, {})
