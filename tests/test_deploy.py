"""A loopback deployment: TLS, SuperNode authentication and per-device data folders.

One SuperLink and two SuperNodes run as separate Flower processes on 127.0.0.1, each
with its own FLWR_HOME, exactly as on real devices except for the addresses. The
devices hold their own copy of the public autoencoder (``autoencoder-delivery='local'``).
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedlab.cli import resolve_run_config
from fedlab.client_app import AUTOENCODER_PATH_KEY
from fedlab.deploy import Credentials, SuperNodeKeys, generate_credentials
from fedlab.device_data import prepare_device_data
from fedlab.federation import federated_data
from fedlab.public_autoencoder import prepare_autoencoder
from fedlab.launch import (
    CONNECTION_NAME,
    LocalSuperLink,
    _child_env,
    _tool_path,
    flwr_run,
    format_overrides,
    free_port,
    stop_process_tree,
)

pytestmark = pytest.mark.e2e

PROJECT_DIR = Path(__file__).resolve().parent.parent
NUM_CLIENTS = 2

# Small settings so that the whole deployment finishes within a few minutes on 2 cores:
# scikit-learn's 8x8 digits, with an autoencoder good enough for FedSD2C to beat chance
# clearly (a single-process run of this config reached 0.63 test accuracy).
SMALL_RUN = {
    "dataset": "digits",
    "num-clients": NUM_CLIENTS,
    "alpha": 0.5,
    "min-partition-size": 20,
    "model-width": 32,
    "local-epochs": 10,
    "ipc": 10,
    "mipc": 30,
    "num-crops": 2,
    "synthesis-iterations": 10,
    "ae-downsample": 2,
    "ae-pretrain-epochs": 20,
    "server-epochs": 60,
    "privacy-report": False,
    "node-wait-seconds": 60.0,
    "autoencoder-delivery": "local",
}
# flwr 1.42 logs this exit code (SUPERNODE_CONNECTION_ERROR) when a SuperNode cannot
# connect, then exits with status 1.
SUPERNODE_CONNECTION_ERROR = "Exit Code: 305"


def start_superlink(home: Path, credentials: Credentials) -> LocalSuperLink:
    """Start a SuperLink with TLS and SuperNode authentication; point `flwr` at it."""
    home.mkdir(parents=True)
    port = free_port()
    (home / "config.toml").write_text(
        "[superlink]\n"
        f'default = "{CONNECTION_NAME}"\n\n'
        f"[superlink.{CONNECTION_NAME}]\n"
        f'address = "127.0.0.1:{port}"\n'
        f'root-certificates = "{credentials.ca_certificate}"\n'
    )
    log_path = home / "superlink.log"
    command = [
        _tool_path("flower-superlink"),
        "--ssl-ca-certfile", str(credentials.superlink_ca_certificate),
        "--ssl-certfile", str(credentials.superlink_certificate),
        "--ssl-keyfile", str(credentials.superlink_key),
        "--enable-supernode-auth",
        "--isolation", "subprocess",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--database", str(home / "state.db"),
    ]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command, env=_child_env(home), stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    link = LocalSuperLink(flwr_home=home, port=port, process=process, log_path=log_path)

    # The health endpoint responds over HTTPS only, verified against the generated CA.
    context = ssl.create_default_context(cafile=str(credentials.ca_certificate))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log_path.read_text()
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=context, timeout=2):
                return link
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    link.stop()
    raise TimeoutError(f"SuperLink start timed out: no response on https://127.0.0.1:{port}/health; see {log_path}")


def start_supernode(
    home: Path, link: LocalSuperLink, keys: SuperNodeKeys, data_path: Path, autoencoder_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a SuperNode with TLS, an authentication key, a device data folder and, optionally,
    the device's copy of the public autoencoder."""
    home.mkdir(parents=True)
    node_config = f'data-path="{data_path}"'
    if autoencoder_path is not None:
        node_config += f' {AUTOENCODER_PATH_KEY}="{autoencoder_path}"'
    command = [
        _tool_path("flower-supernode"),
        "--superlink", f"127.0.0.1:{link.port}",
        "--root-certificates", str(keys.root_certificate),
        "--auth-supernode-private-key", str(keys.private_key),
        "--node-config", node_config,
        "--host", "127.0.0.1",
        "--port", str(free_port()),
    ]
    with open(home / "supernode.log", "ab") as log_file:
        return subprocess.Popen(
            command, env=_child_env(home), stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def flwr_json(link: LocalSuperLink, *args: str) -> dict:
    result = subprocess.run(
        [_tool_path("flwr"), *args, CONNECTION_NAME, "--format", "json"],
        env=link.env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def node_statuses(link: LocalSuperLink) -> dict[str, str]:
    return {node["node-id"]: node["status"] for node in flwr_json(link, "supernode", "list")["nodes"]}


def wait_for_online(link: LocalSuperLink, node_ids: set[str], timeout: float = 90) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    statuses = node_statuses(link)
    while time.monotonic() < deadline and any(statuses.get(node) != "online" for node in node_ids):
        time.sleep(1)
        statuses = node_statuses(link)
    return statuses


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes the test starts; each is stopped with its descendants, by process id."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in reversed(started):
        stop_process_tree(process, grace_seconds=10)


def test_deployment_with_tls_and_supernode_auth(tmp_path: Path, processes: list) -> None:
    # 1. Credentials for two SuperNodes plus one key pair that is never registered, and two
    #    device data folders.
    credentials = generate_credentials(tmp_path / "credentials", NUM_CLIENTS + 1)
    registered, unregistered = credentials.supernodes[:NUM_CLIENTS], credentials.supernodes[NUM_CLIENTS]
    run_config = {
        **SMALL_RUN,
        "output-dir": str(tmp_path / "outputs"),
        "ae-cache-dir": str(tmp_path / "ae-cache"),
    }
    config, _ = resolve_run_config(PROJECT_DIR, [format_overrides(run_config)], None)
    data_folders = prepare_device_data(config, tmp_path / "data")

    # The public autoencoder is pretrained into the server's cache before the run. Device 0
    # gets its own copy through its node config; device 1 reads the server's folder.
    _, ae_info = prepare_autoencoder(config, federated_data(config), Path(config.ae_cache_dir))
    device_autoencoders = [shutil.copytree(ae_info.path, tmp_path / "device-0-autoencoder"), None]

    # 2. The SuperLink, and the two registered public keys.
    link = start_superlink(tmp_path / "superlink-home", credentials)
    processes.append(link.process)
    node_ids = set()
    for keys in registered:
        reply = flwr_json(link, "supernode", "register", str(keys.public_key))
        node_ids.add(str(reply["node-id"]))
    assert len(node_ids) == NUM_CLIENTS

    # 3. Two SuperNodes, each with its own FLWR_HOME, key and data folder.
    for i, (keys, folder) in enumerate(zip(registered, data_folders)):
        home = tmp_path / f"supernode-{i}-home"
        processes.append(start_supernode(home, link, keys, folder, device_autoencoders[i]))
    statuses = wait_for_online(link, node_ids)
    assert statuses == {node: "online" for node in node_ids}

    # 4. FedSD2C through `flwr run --stream`; the final status comes from `flwr ls`.
    outcome = flwr_run(link, PROJECT_DIR, run_config, echo=False, timeout=600)
    assert outcome.completed, outcome.status + "\n" + outcome.log[-4000:]
    assert outcome.results_path is not None and outcome.results_path.exists(), outcome.log[-4000:]
    results = json.loads(outcome.results_path.read_text())
    assert results["strategy"] == "fedsd2c"
    assert results["num_clients"] == NUM_CLIENTS
    assert results["failed_clients"] == []
    assert sorted(client["partition_id"] for client in results["clients"]) == [0, 1]
    assert results["test_accuracy"] > 0.3  # chance is 0.1
    # The requests carried the autoencoder's fingerprint, not its weights.
    assert results["autoencoder"]["source"] == "pretrain-cached"
    assert results["autoencoder"]["fingerprint"] == ae_info.fingerprint
    assert results["download_bytes_per_client"] < 2_000

    # 5. A SuperNode whose key was never registered is refused and exits.
    intruder = start_supernode(tmp_path / "intruder-home", link, unregistered, data_folders[0])
    processes.append(intruder)
    assert intruder.wait(timeout=120) == 1
    intruder_log = (tmp_path / "intruder-home" / "supernode.log").read_text()
    assert SUPERNODE_CONNECTION_ERROR in intruder_log
    assert "Failed to activate SuperNode" in intruder_log
    assert "No SuperNode found with the given public key" in link.log_path.read_text()
    assert set(node_statuses(link)) == node_ids
