"""Run a Flower App through `flwr run` on a private, offline local SuperLink.

`flwr run .` with the default ``:local:`` connection starts a detached SuperLink on fixed
ports that outlives the run and is shared by every user of the machine. This module instead
starts its own SuperLink in simulation mode on a free loopback port, with its own
``FLWR_HOME``, and submits the run with ``flwr run --stream``. Because ``flwr run --stream``
exits 0 even when the run fails, the final status is read from ``flwr ls --format json``.
Afterwards the SuperLink and every process it started are stopped by process id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Environment that keeps every Flower, Ray and Hugging Face process offline and quiet.
OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # An idle OpenMP thread spins 10,000 times, then sleeps. With libgomp's default of 300,000
    # spins, two 2-thread torch processes on 2 cores ran up to 10 times slower than with threads
    # that never spin, because each one's spinning took the cores the other needed. Never
    # spinning made a lone process 2.5 times slower than the default. benchmarks/omp_wait.py
    # measures the three settings. The spin count changes the speed, never the results.
    "GOMP_SPINCOUNT": "10000",
}

#: The ServerApp logs this marker followed by the absolute path of its results file.
RESULTS_MARKER = "fedlab-results:"

CONNECTION_NAME = "fedlab-local"


class RunFailedError(RuntimeError):
    """A Flower run ended in a state other than ``finished:completed``."""


@dataclass(frozen=True)
class RunOutcome:
    """Outcome of one scripted `flwr run`: run id, final status, results path and log."""

    run_id: int
    status: str
    results_path: Path | None
    log: str

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when asked."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def format_config_value(value: object) -> str:
    """Format one run-config value in the TOML-like syntax of `flwr run --run-config`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def format_overrides(values: Mapping[str, object]) -> str:
    """Format a mapping as one `--run-config` / `--federation-config` argument."""
    return " ".join(f"{key}={format_config_value(value)}" for key, value in values.items())


def _tool_path(name: str) -> str:
    """Find a console script next to the running interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(
            f"command {name!r} not found next to {sys.executable} or on PATH; "
            "install the project (pip install -e .) in this environment"
        )
    return found


def _child_env(flwr_home: Path) -> dict[str, str]:
    # The SuperLink starts `flower-superexec` and `flwr-simulation` through PATH, so the
    # environment's script folder goes first.
    scripts = str(Path(sys.executable).parent)
    path = os.pathsep.join([scripts, os.environ.get("PATH", "")])
    return {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(flwr_home), "PATH": path}


@dataclass
class LocalSuperLink:
    """A SuperLink in simulation mode owned by this process."""

    flwr_home: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for `flwr` commands that talk to this SuperLink."""
        return _child_env(self.flwr_home)


    def stop(self, grace_seconds: float = 15.0) -> None:
        """Stop the SuperLink and every process it started, by process id."""
        stop_process_tree(self.process, grace_seconds)


def stop_process_tree(process: subprocess.Popen[bytes], grace_seconds: float = 15.0) -> None:
    """Stop `process` and all its descendants by process id: SIGTERM, then SIGKILL.

    Flower's SuperLink and SuperNode start SuperExec in a new session, and SuperExec
    starts the ServerApp, ClientApp or simulation, so a process-group signal would miss
    them: the descendants are collected from ``/proc`` before anything is signalled.
    """
    pids = [process.pid, *descendant_pids(process.pid)]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids[1:]):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            logger.warning("process %s did not stop after SIGTERM; sending SIGKILL", pid)
            _signal(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def descendant_pids(root: int) -> list[int]:
    """Return the process ids of all living descendants of `root` (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in field 2 may contain spaces; fields after ")" are fixed.
        fields_after_name = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields_after_name[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as stopped.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def start_superlink(flwr_home: Path, startup_timeout: float = 60.0) -> LocalSuperLink:
    """Start a simulation SuperLink on a free loopback port, with `flwr_home` as FLWR_HOME."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (flwr_home / "config.toml").write_text(
        "[superlink]\n"
        f'default = "{CONNECTION_NAME}"\n\n'
        f"[superlink.{CONNECTION_NAME}]\n"
        f'address = "127.0.0.1:{port}"\n'
        "insecure = true\n"
    )
    log_path = flwr_home / "superlink.log"
    command = [
        _tool_path("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--disable-runtime-dependency-installation",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(flwr_home / "state.db"),
    ]
    env = _child_env(flwr_home)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    link = LocalSuperLink(flwr_home=flwr_home, port=port, process=process, log_path=log_path)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"flower-superlink exited with code {process.returncode} during start-up; "
                f"see {log_path}"
            )
        if _is_healthy(port):
            logger.info("SuperLink pid %s listening on 127.0.0.1:%s", process.pid, port)
            return link
        time.sleep(0.2)
    link.stop()
    raise TimeoutError(f"flower-superlink timed out: no health response within {startup_timeout:.0f} s; see {log_path}")


def _is_healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def local_superlink(flwr_home: Path | None = None) -> Iterator[LocalSuperLink]:
    """Context manager around :func:`start_superlink` that always stops the SuperLink."""
    temp_dir = None
    if flwr_home is None:
        temp_dir = tempfile.mkdtemp(prefix="fedlab-flwr-home-")
        flwr_home = Path(temp_dir)
    link = start_superlink(flwr_home)
    try:
        with signals_raise_system_exit():
            yield link
    finally:
        link.stop()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def signals_raise_system_exit() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into SystemExit so that cleanup runs on `kill` too.

    A background job of a non-interactive shell ignores SIGINT, and SIGTERM's default
    action skips `finally` blocks; either way the SuperLink would outlive this process.
    Handlers can only be set from the main thread; elsewhere nothing changes.
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old_handler in previous.items():
            signal.signal(sig, old_handler)


def run_status(link: LocalSuperLink, run_id: int) -> str:
    """Return the status of a run as `flwr ls` reports it, e.g. ``finished:completed``."""
    result = subprocess.run(
        [_tool_path("flwr"), "ls", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json"],
        env=link.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        payload = json.loads(result.stdout)
        runs = payload["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RuntimeError(
            f"could not read the status of run {run_id} from `flwr ls`: {result.stdout!r} "
            f"{result.stderr!r}"
        ) from err
    for run in runs:
        if int(run.get("run-id", -1)) == run_id:
            return str(run.get("status", "unknown"))
    return "unknown"


def wait_for_final_status(link: LocalSuperLink, run_id: int, timeout: float = 120.0) -> str:
    """Poll `flwr ls` until the run reaches a ``finished:*`` status."""
    deadline = time.monotonic() + timeout
    status = run_status(link, run_id)
    while not status.startswith("finished") and time.monotonic() < deadline:
        time.sleep(1.0)
        status = run_status(link, run_id)
    return status


def stage_app(app_dir: Path, dest: Path) -> Path:
    """Copy the files that `flwr run` packages from `app_dir` into `dest` and return `dest`.

    `flwr run` lists and resolves every file under the app folder before it filters them.
    With the project's ``.venv`` inside that is over 50,000 files, which took 5 s of a run
    on 2 busy CPU cores. Here a folder that the app's ``.gitignore`` or Flower's publish rules
    exclude as a whole is skipped without being listed, and the remaining files go through
    Flower's own publish filter. `flwr run` applies the same rules again to the copy, so
    the package it builds from `dest` is the one it would build from `app_dir`.
    """
    from flwr.cli.utils import build_pathspec, filter_paths_for_publish, load_gitignore_patterns
    from flwr.supercore.constant import APP_PUBLISH_EXCLUDE_PATTERNS

    app_dir = app_dir.resolve()
    patterns = load_gitignore_patterns(app_dir / ".gitignore")
    # A negated pattern can bring back a file below an ignored folder, so with one
    # present only Flower's own exclusions skip folders.
    specs = [build_pathspec(APP_PUBLISH_EXCLUDE_PATTERNS)]
    if not any(pattern.startswith("!") for pattern in patterns):
        specs.append(build_pathspec(patterns))

    def skipped(relative_dir: str) -> bool:
        # A pattern that names the folder, or every path below it, drops its whole content.
        probes = (f"{relative_dir}/", f"{relative_dir}/-")
        return any(all(spec.match_file(probe) for probe in probes) for spec in specs)

    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(app_dir, followlinks=False):
        relative = Path(dirpath).relative_to(app_dir)
        dirnames[:] = [
            name
            for name in dirnames
            if not (Path(dirpath) / name).is_symlink() and not skipped((relative / name).as_posix())
        ]
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                files[(relative / name).as_posix()] = path
    if dest.exists():
        shutil.rmtree(dest)
    for relative_path in filter_paths_for_publish(files):
        target = dest / relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[relative_path], target)
    return dest


def flwr_run(
    link: LocalSuperLink,
    app_dir: Path,
    run_config: Mapping[str, object] | None = None,
    federation_config: Mapping[str, object] | None = None,
    echo: bool = True,
    timeout: float | None = None,
) -> RunOutcome:
    """Submit a run with `flwr run --stream`, wait for it to finish and return its outcome.

    The app is packaged from a copy of its files in the SuperLink's ``FLWR_HOME`` (see
    :func:`stage_app`), so that `flwr run` does not list the project's virtual environment.
    """
    staged = stage_app(app_dir, link.flwr_home / "staged-app")
    command = [_tool_path("flwr"), "run", str(staged), CONNECTION_NAME, "--stream"]
    if run_config:
        command += ["--run-config", format_overrides(run_config)]
    if federation_config:
        command += ["--federation-config", format_overrides(federation_config)]
    logger.info("Running: %s", " ".join(command))

    lines: list[str] = []
    process = subprocess.Popen(
        command,
        env=link.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    started = time.monotonic()
    assert process.stdout is not None
    try:
        for line in process.stdout:
            lines.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(f"flwr run exceeded {timeout:.0f} s")
        process.wait()
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    log_text = "".join(lines)
    match = re.search(r"Successfully started run (\d+)", log_text)
    if match is None:
        # Flower explains a rejected submission (such as an unknown federation-config field)
        # in its last lines, drawn inside a box.
        stripped = (line.strip().strip("│╭╮╰╯─ ") for line in lines[-5:])
        explanation = " | ".join(line for line in stripped if line and line != "Error")
        raise RunFailedError(
            f"flwr run did not start a run (exit code {process.returncode}): {explanation or 'no output'}"
        )
    run_id = int(match.group(1))
    status = wait_for_final_status(link, run_id)
    return RunOutcome(
        run_id=run_id, status=status, results_path=parse_results_path(log_text), log=log_text
    )


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit)):\s*(\S.*)$")


def failure_reason(log_text: str) -> str | None:
    """Return the last ``SomeError: message`` line of a failed run's log, if there is one.

    The ServerApp's traceback streams into the log, and its last exception line gives the
    reason, which a caller can repeat without the traceback.
    """
    reason = None
    for line in _ANSI_ESCAPE.sub("", log_text).splitlines():
        match = _EXCEPTION_LINE.match(line)
        if match:
            reason = f"{match.group(1)}: {match.group(2).strip()}"
    return reason


def parse_results_path(log_text: str) -> Path | None:
    """Return the last results path the ServerApp logged, if any."""
    paths = re.findall(re.escape(RESULTS_MARKER) + r"\s*(\S+)", log_text)
    return Path(paths[-1]) if paths else None


def simulate(
    app_dir: Path,
    num_supernodes: int,
    run_config: Mapping[str, object] | None = None,
    federation_config: Mapping[str, object] | None = None,
    flwr_home: Path | None = None,
    echo: bool = True,
    timeout: float | None = None,
) -> RunOutcome:
    """Run one simulation on a private SuperLink and stop it afterwards."""
    federation = {"num-supernodes": num_supernodes, **(federation_config or {})}
    with local_superlink(flwr_home) as link:
        return flwr_run(link, app_dir, run_config, federation, echo=echo, timeout=timeout)


def main_args_to_mapping(pairs: Sequence[str]) -> dict[str, str]:
    """Parse ``key=value`` words (values kept as raw TOML) into a mapping."""
    mapping = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {pair!r}")
        mapping[key.strip()] = value.strip()
    return mapping
