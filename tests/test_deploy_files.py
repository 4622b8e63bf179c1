"""Device data folders and deployment credentials, checked without starting Flower."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store
from flwr.app import Context, RecordDict

from fedlab.cli import main
from fedlab.client_app import ClientData
from fedlab.config import RunConfig
from fedlab.data import ImageDataset, load_dataset
from fedlab.deploy import generate_credentials
from fedlab.device_data import (
    _DATASET_SPECS,
    DeviceDataMeta,
    check_matches_run,
    load_device_data,
    prepare_device_data,
    save_device_data,
)
from fedlab.federation import federated_data
from fedlab.payload import PARTITION_ID

# Small digits runs: 1,797 8x8 images load in well under a second.
DIGITS = RunConfig(dataset="digits", num_clients=3, alpha=0.5, min_partition_size=20)


def tiny_dataset(num_samples: int = 6, num_classes: int = 10, shape: tuple[int, int, int] = (1, 8, 8)) -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (num_samples, *shape), generator=generator, dtype=torch.int64)
    labels = torch.arange(num_samples, dtype=torch.int64) % num_classes
    return ImageDataset("digits/train", images.to(torch.uint8), labels, num_classes)


def tiny_meta(data: ImageDataset, **changes: object) -> DeviceDataMeta:
    values = {
        "dataset": "digits",
        "num_classes": data.num_classes,
        "image_shape": data.image_shape,
        "num_samples": len(data),
        "partition_id": 4,
        **changes,
    }
    return DeviceDataMeta(**values)  # type: ignore[arg-type]


def write_folder(folder: Path, **meta_changes: object) -> Path:
    data = tiny_dataset()
    return save_device_data(folder, data, tiny_meta(data, **meta_changes))


def edit_meta(folder: Path, **changes: object) -> None:
    path = folder / "meta.json"
    values = json.loads(path.read_text())
    values.update(changes)
    path.write_text(json.dumps(values))


def context_for(node_config: dict[str, object], run_config: RunConfig = DIGITS) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config=node_config,  # type: ignore[arg-type]
        state=RecordDict(),
        run_config=run_config.to_run_config(),
    )


# Device data folders ------------------------------------------------------------------


def test_device_data_round_trip(tmp_path: Path) -> None:
    data = tiny_dataset()
    meta = tiny_meta(data, num_partitions=5, seed=3, source={"command": "hand-made"})
    save_device_data(tmp_path / "client", data, meta)

    loaded_meta, loaded = load_device_data(tmp_path / "client")

    assert loaded_meta == meta
    assert torch.equal(loaded.images, data.images)
    assert torch.equal(loaded.labels, data.labels)
    assert loaded.num_classes == data.num_classes


def test_device_data_never_overwritten(tmp_path: Path) -> None:
    write_folder(tmp_path / "client")
    with pytest.raises(FileExistsError, match="already exists"):
        write_folder(tmp_path / "client")


def test_prepare_writes_simulation_partitions(tmp_path: Path) -> None:
    folders = prepare_device_data(DIGITS, tmp_path)
    data = federated_data(DIGITS)

    assert [folder.name for folder in folders] == ["client-0", "client-1", "client-2"]
    total = 0
    for partition_id, folder in enumerate(folders):
        meta, local = load_device_data(folder)
        expected = data.client_dataset(partition_id)
        assert meta.partition_id == partition_id
        assert meta.num_partitions == 3
        assert meta.seed == DIGITS.seed
        assert meta.source["run_config"]["partitioner"] == "dirichlet"
        assert torch.equal(local.images, expected.images)
        assert torch.equal(local.labels, expected.labels)
        total += len(local)
    # Only the clients' pool is written: the test and public sets stay out.
    assert total == len(data.pool_indices)
    assert total < len(data.train) - len(data.test)


def test_prepare_refuses_existing_client_folders(tmp_path: Path) -> None:
    (tmp_path / "client-1").mkdir()
    with pytest.raises(FileExistsError, match="client-1"):
        prepare_device_data(DIGITS, tmp_path)


def test_load_missing_folder_names_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fedlab prepare-device-data"):
        load_device_data(tmp_path / "absent")


def test_load_missing_file(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "client")
    (folder / "labels.npy").unlink()
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        load_device_data(folder)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "other"}, "format='other'"),
        ({"format_version": 2}, "format_version=2"),
        ({"dataset": ""}, "'dataset'"),
        ({"num_classes": 0}, "'num_classes' must be an int >= 1"),
        ({"partition_id": -1}, "'partition_id' must be an int >= 0"),
        ({"partition_id": "0"}, "'partition_id'"),
        ({"image_shape": [8, 8]}, "'image_shape'"),
        ({"num_samples": 7}, "num_samples=7"),
        ({"image_shape": [1, 4, 16]}, r"image_shape=\[1, 4, 16\]"),
        ({"num_classes": 3}, "outside 0..2"),
        ({"source": []}, "'source'"),
    ],
)
def test_load_rejects_bad_meta(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    folder = write_folder(tmp_path / "client")
    edit_meta(folder, **changes)
    with pytest.raises(ValueError, match=message):
        load_device_data(folder)


def test_load_rejects_invalid_json(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "client")
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_device_data(folder)


def test_load_rejects_float_images(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "client")
    np.save(folder / "images.npy", np.zeros((6, 1, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="must be a uint8 array"):
        load_device_data(folder)


def test_load_rejects_int32_labels(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "client")
    np.save(folder / "labels.npy", np.zeros(6, dtype=np.int32))
    with pytest.raises(ValueError, match="must be an int64 array"):
        load_device_data(folder)


def test_load_rejects_pickled_arrays(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "client")
    np.save(folder / "labels.npy", np.array([{"a": 1}] * 6, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object arrays are not read"):
        load_device_data(folder)


def test_check_rejects_other_dataset(tmp_path: Path) -> None:
    meta, _ = load_device_data(write_folder(tmp_path / "client"))
    with pytest.raises(ValueError, match="contains dataset 'digits', but the run has dataset='mnist'") as info:
        check_matches_run(meta, RunConfig(dataset="mnist"), tmp_path / "client")
    assert "fedlab prepare-device-data" in str(info.value)


def test_check_rejects_other_class_count(tmp_path: Path) -> None:
    meta = tiny_meta(tiny_dataset(num_classes=12), num_classes=12)
    with pytest.raises(ValueError, match="num_classes=12, but dataset 'digits' has 10 classes"):
        check_matches_run(meta, DIGITS, tmp_path)


def test_check_rejects_other_image_size(tmp_path: Path) -> None:
    meta = tiny_meta(tiny_dataset())
    with pytest.raises(ValueError, match=r"image_shape=\[1, 8, 8\].*image-size=16.*\[1, 16, 16\]"):
        check_matches_run(meta, DIGITS.replace(image_size=16), tmp_path)


def test_check_accepts_resized_folder(tmp_path: Path) -> None:
    meta = tiny_meta(tiny_dataset(shape=(1, 16, 16)))
    check_matches_run(meta, DIGITS.replace(image_size=16), tmp_path)


def test_check_warns_on_other_split_settings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    meta = tiny_meta(tiny_dataset(), source={"run_config": {"seed": 5, "partitioner": "dirichlet"}})
    with caplog.at_level(logging.WARNING, logger="fedlab.device_data"):
        check_matches_run(meta, DIGITS, tmp_path)
    assert "seed=5 (run: 0)" in caplog.text
    assert "partitioner" not in caplog.text


@pytest.mark.parametrize("name", ["mnist", "digits"])
def test_dataset_specs_match_loaders(name: str) -> None:
    train = load_dataset(name).train
    num_classes, channels, side = _DATASET_SPECS[name]
    assert num_classes == train.num_classes
    assert (channels, side, side) == train.image_shape


# ClientData ---------------------------------------------------------------------------


def test_client_data_reads_folder(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "client", partition_id=7)

    client = ClientData.from_context(context_for({"data-path": str(folder)}))

    assert client.partition_id == 7
    assert client.base_metrics()[PARTITION_ID] == 7
    assert client.num_classes == 10
    assert client.image_shape == (1, 8, 8)
    assert len(client.labels) == 6


def test_client_data_rejects_relative_path() -> None:
    with pytest.raises(ValueError, match="relative path"):
        ClientData.from_context(context_for({"data-path": "data/client-0"}))


def test_client_data_rejects_two_data_sources(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "client")
    node_config = {"data-path": str(folder), "partition-id": 0, "num-partitions": 3}
    with pytest.raises(ValueError, match="sets both 'data-path' and 'partition-id'"):
        ClientData.from_context(context_for(node_config))


def test_client_data_rejects_mismatched_folder(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "client")
    with pytest.raises(ValueError, match="but the run has dataset='mnist'"):
        ClientData.from_context(context_for({"data-path": str(folder)}, RunConfig(dataset="mnist")))


def test_client_data_without_node_config_names_both_ways() -> None:
    with pytest.raises(ValueError, match="data-path.*partition-id=<i> num-partitions=<n>"):
        ClientData.from_context(context_for({}))


def test_client_data_reads_partition() -> None:
    client = ClientData.from_context(context_for({"partition-id": 1, "num-partitions": 3}))
    expected = federated_data(DIGITS).client_dataset(1)
    assert client.partition_id == 1
    assert torch.equal(client.labels, expected.labels)


# Credentials --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("credentials")
    return generate_credentials(out, 2, hosts=["link.example.org", "10.1.2.3"], valid_days=30)


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.mark.parametrize(
    "subject",
    [
        x509.verification.DNSName("localhost"),
        x509.verification.DNSName("link.example.org"),
        x509.verification.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.verification.IPAddress(ipaddress.ip_address("10.1.2.3")),
    ],
)
def test_certificate_chain_verifies(credentials, subject) -> None:
    ca = load_certificate(credentials.ca_certificate)
    server = load_certificate(credentials.superlink_certificate)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(subject)

    chain = verifier.verify(server, [])

    assert chain[-1] == ca


def test_certificate_rejects_unknown_host(credentials) -> None:
    ca = load_certificate(credentials.ca_certificate)
    server = load_certificate(credentials.superlink_certificate)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(
        x509.verification.DNSName("other.example.org")
    )
    with pytest.raises(x509.verification.VerificationError):
        verifier.verify(server, [])


def test_hosts_accept_names_addresses_and_wildcards(tmp_path: Path) -> None:
    generate_credentials(
        tmp_path, 1, hosts=["superlink.example.org", "*.cluster.local", "10.0.0.7", "[::1]", "node-3"]
    )
    assert (tmp_path / "superlink" / "server.crt").exists()


def test_certificate_lists_every_host(credentials) -> None:
    server = load_certificate(credentials.superlink_certificate)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "link.example.org"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.1.2.3"),
    ]


def test_every_copy_of_ca_is_identical(credentials) -> None:
    ca_bytes = credentials.ca_certificate.read_bytes()
    assert credentials.superlink_ca_certificate.read_bytes() == ca_bytes
    for keys in credentials.supernodes:
        assert keys.root_certificate.read_bytes() == ca_bytes


def test_superlink_key_matches_certificate(credentials) -> None:
    key = serialization.load_pem_private_key(credentials.superlink_key.read_bytes(), password=None)
    server = load_certificate(credentials.superlink_certificate)
    assert key.public_key() == server.public_key()


def test_supernode_keys_load_as_flower_does(credentials) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    assert len(credentials.supernodes) == 2
    for keys in credentials.supernodes:
        private_key = serialization.load_ssh_private_key(keys.private_key.read_bytes(), password=None)
        public_key = serialization.load_ssh_public_key(keys.public_key.read_bytes())
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        assert private_key.public_key() == public_key
        # `flwr supernode register` reads the public key file with this function.
        assert try_load_public_key(keys.public_key) == public_key_to_bytes(public_key)


def test_supernode_key_pairs_differ(credentials) -> None:
    first, second = (keys.public_key.read_bytes() for keys in credentials.supernodes)
    assert first != second


def test_private_keys_owner_only(credentials) -> None:
    private_files = [credentials.ca_key, credentials.superlink_key]
    private_files += [keys.private_key for keys in credentials.supernodes]
    for path in private_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_tls_handshake_with_generated_files(credentials) -> None:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(credentials.superlink_certificate, credentials.superlink_key)
    client_context = ssl.create_default_context(cafile=str(credentials.supernodes[0].root_certificate))

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept_one() -> None:
            connection, _ = listener.accept()
            with server_context.wrap_socket(connection, server_side=True) as tls:
                tls.sendall(b"ok")

        thread = threading.Thread(target=accept_one)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(2) == b"ok"
        thread.join(timeout=10)


def test_credentials_never_overwritten(credentials) -> None:
    out = credentials.ca_certificate.parent.parent
    with pytest.raises(FileExistsError, match="already exist"):
        generate_credentials(out, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_supernodes": 0}, "--supernodes \\(num_supernodes\\) must be an integer >= 1"),
        ({"num_supernodes": 1, "valid_days": 0}, "--days \\(valid_days\\) must be an integer >= 1"),
        ({"num_supernodes": 1, "hosts": [" "]}, "host names must not be empty"),
        ({"num_supernodes": 1, "hosts": ["bad host!"]}, "'bad host!' is neither an IP address nor a DNS name"),
        ({"num_supernodes": 1, "hosts": ["-lead.example.org"]}, "neither an IP address nor a DNS name"),
    ],
)
def test_credentials_reject_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_credentials(tmp_path, **kwargs)  # type: ignore[arg-type]


# Commands -----------------------------------------------------------------------------


def test_generate_credentials_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate-credentials", "--out", str(tmp_path), "--supernodes", "2", "--host", "10.0.0.9"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / name) for name in ("superlink", "supernode-0", "supernode-1")]


def test_generate_credentials_command_rejects_existing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate-credentials", "--out", str(tmp_path), "--supernodes", "1"]) == 0
    assert main(["generate-credentials", "--out", str(tmp_path), "--supernodes", "1"]) == 2
    assert "already exist" in capsys.readouterr().err


def test_prepare_device_data_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["prepare-device-data", "--out", str(tmp_path), "--clients", "2",
         "--run-config", "dataset='digits' alpha=0.5 min-partition-size=20"]
    )
    assert code == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "client-0"), str(tmp_path / "client-1")]
    meta, _ = load_device_data(tmp_path / "client-1")
    assert meta.num_partitions == 2


def test_prepare_device_data_command_rejects_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare-device-data", "--out", str(tmp_path), "--run-config", "alpha=0"]) == 2
    assert "alpha" in capsys.readouterr().err
