"""Helpers of the offline `flwr run` launcher that need no SuperLink."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fedlab.launch import (
    RESULTS_MARKER,
    descendant_pids,
    failure_reason,
    format_overrides,
    free_port,
    parse_results_path,
    stage_app,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent


def test_format_overrides_quotes_strings_only() -> None:
    text = format_overrides({"strategy": "fedavg", "alpha": 0.5, "ipc": 10, "flag": True})
    assert text == 'strategy="fedavg" alpha=0.5 ipc=10 flag=true'


def test_parse_results_path_takes_the_last_marker() -> None:
    log = f"x\n{RESULTS_MARKER} /a/results.json\nINFO other\n{RESULTS_MARKER} /b/results.json\n"
    assert parse_results_path(log) == Path("/b/results.json")
    assert parse_results_path("nothing here") is None


def test_failure_reason_takes_last_exception() -> None:
    log = (
        "INFO :      Starting\n"
        "Traceback (most recent call last):\n"
        '  File "server_app.py", line 3, in main\n'
        "KeyError: 'first'\n"
        "During handling of the above exception, another exception occurred:\n"
        "\x1b[91mfedlab.config.ConfigError: invalid run-config value seed=-1: must be 0 or more\x1b[0m\n"
        "INFO :      Run finished\n"
    )
    assert failure_reason(log) == "fedlab.config.ConfigError: invalid run-config value seed=-1: must be 0 or more"
    assert failure_reason("INFO : all fine\nWARNING : slow\n") is None


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_descendant_pids_finds_grandchildren() -> None:
    script = "import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 10
        found: list[int] = []
        while time.monotonic() < deadline and not found:
            found = descendant_pids(parent.pid)
            time.sleep(0.1)
        assert len(found) == 1
    finally:
        for pid in descendant_pids(parent.pid):
            subprocess.run(["kill", str(pid)], check=False)
        parent.kill()
        parent.wait()


def test_sigterm_stops_superlink_and_children(tmp_path: Path) -> None:
    import os
    import signal

    from fedlab.launch import _alive

    # A helper process owns a real SuperLink; SIGTERM must make it stop the SuperLink too.
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from fedlab.launch import local_superlink\n"
        "with local_superlink(Path(sys.argv[1])) as link:\n"
        "    print(link.process.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "flwr-home")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        superlink_pid = int(owner.stdout.readline())
        children = descendant_pids(superlink_pid)
        os.kill(owner.pid, signal.SIGTERM)
        owner.wait(timeout=60)
        assert not _alive(superlink_pid)
        for pid in children:
            assert not _alive(pid), pid
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def test_staged_app_packages_like_the_project_folder(tmp_path: Path) -> None:
    from flwr.cli.build import build_fab_from_disk

    staged = stage_app(PROJECT_DIR, tmp_path / "staged")
    assert (staged / "pyproject.toml").is_file()
    assert not (staged / ".venv").exists()
    assert build_fab_from_disk(staged) == build_fab_from_disk(PROJECT_DIR)


def _small_app(root: Path, gitignore: str) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "main.py").write_text("VALUE = 1\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    (root / "outputs" / "run").mkdir(parents=True)
    (root / "outputs" / "run" / "results.json").write_text("{}")
    (root / "outputs" / "keep.json").write_text("{}")
    (root / "notes.txt").write_text("not packaged")
    (root / ".gitignore").write_text(gitignore)
    return root


def _files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def test_staged_app_skips_ignored_folders(tmp_path: Path) -> None:
    app = _small_app(tmp_path / "app", "outputs/\n")
    staged = stage_app(app, tmp_path / "staged")
    assert _files(staged) == [".gitignore", "pkg/main.py", "pyproject.toml"]


def test_staged_app_keeps_negated_files(tmp_path: Path) -> None:
    # With a negated pattern the folder is listed and the publish filter decides per file.
    app = _small_app(tmp_path / "app", "outputs/*\n!outputs/keep.json\n")
    staged = stage_app(app, tmp_path / "staged")
    assert _files(staged) == [".gitignore", "outputs/keep.json", "pkg/main.py", "pyproject.toml"]
