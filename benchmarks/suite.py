"""Run benchmark cells through `fedlab run`, resumably, with one CSV row per cell.

A *cell* is one `fedlab run` (the same code path as `flwr run`) with a fixed set of run-config
overrides. Its identity is a hash of those overrides, so two cells that set the same keys to
the same values are the same run. App defaults that a cell does not set are not part of the
identity: after changing a default in ``pyproject.toml``, write to a new results file.

:func:`run_cells` runs the cells that the results file does not already hold. After every cell
it rewrites the file, so an interrupted sweep resumes where it stopped. A cell that fails is
recorded with its error, and the sweep goes on. Failed cells run again only when
``retry_failed`` is set. The runner is a parameter, so tests can replace `fedlab run` with a
function.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

PROJECT_DIR = Path(__file__).resolve().parent.parent
FEDLAB = Path(sys.executable).parent / "fedlab"

# Keys that set where a run writes, not what it computes, so they are not part of a cell's identity.
PATH_KEYS = ("output-dir", "ae-cache-dir", "run-name")

# Scalars of ``results.json["heterogeneity"]``, one CSV column each.
HETEROGENEITY_COLUMNS = (
    "mean_label_emd",
    "max_label_emd",
    "mean_classes_per_client",
    "size_cv",
    "feature_skew",
    "feature_skew_strength",
    "feature_skew_mean_level",
)
RESULT_COLUMNS = (
    "test_accuracy",
    "upload_bytes_per_client",
    "download_bytes_per_client",
    "model_bytes",
    "wall_seconds",
    "run_seconds",
    "failed_clients",
    *HETEROGENEITY_COLUMNS,
)
TRAILING_COLUMNS = ("error", "run_dir", "command", "date", "machine")

OK, FAILED = "ok", "failed"

# Seconds a timed-out `fedlab run` gets to stop its SuperLink after SIGTERM before SIGKILL.
_STOP_GRACE_SECONDS = 60.0
# Characters of a failed run's stderr kept in the results file.
_ERROR_CHARS = 2000


class CellFailed(RuntimeError):
    """Failure of a cell's run, with the message that the results file records as its error."""


@dataclass(frozen=True)
class Cell:
    """One benchmark run.

    Attributes
    ----------
    coordinates : dict
        The cell's position in its grid (method, dataset, partition, ...), one CSV column each.
    run_config : dict
        Run-config overrides in kebab case. ``num-clients`` is passed as ``--clients``.
    estimate_seconds : float
        Expected wall time of the whole `fedlab run`, for the progress estimate only.
    title : str
        Short name for progress output; the coordinates when empty.
    """

    coordinates: dict[str, Any]
    run_config: dict[str, Any]
    estimate_seconds: float = 0.0
    title: str = ""
    cell_id: str = field(init=False)

    def __post_init__(self) -> None:
        stray = sorted(set(PATH_KEYS) & set(self.run_config))
        if stray:
            raise ValueError(
                f"cell run config sets {', '.join(stray)}; the sweep sets these paths itself, "
                "so remove them from the grid"
            )
        object.__setattr__(self, "cell_id", cell_identity(self.run_config))

    @property
    def num_clients(self) -> int:
        return int(self.run_config.get("num-clients", 10))

    def label(self) -> str:
        """Return the title, or the coordinates as one line, for progress output."""
        if self.title:
            return self.title
        return " ".join(f"{key}={value}" for key, value in self.coordinates.items() if value is not None)


def cell_identity(run_config: Mapping[str, Any]) -> str:
    """Return a stable id of a run config: the first 16 hex digits of its canonical JSON's SHA-256."""
    import hashlib

    canonical = json.dumps(
        {key: value for key, value in run_config.items() if key not in PATH_KEYS},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """Format one run-config value as `fedlab run --run-config` parses it (TOML syntax)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    # A TOML literal string cannot hold a single quote or a newline; JSON escaping is valid TOML.
    if "'" in text or "\n" in text:
        return json.dumps(text)
    return f"'{text}'"


def format_run_config(run_config: Mapping[str, Any]) -> str:
    """Format overrides as one ``--run-config`` argument, leaving out ``num-clients``."""
    return " ".join(f"{key}={format_value(value)}" for key, value in run_config.items() if key != "num-clients")


def fedlab_argv(
    run_config: Mapping[str, Any],
    *,
    output_dir: str | Path | None = None,
    ae_cache_dir: str | Path | None = None,
    num_clients: int | None = None,
    federation_config: Mapping[str, Any] | None = None,
    executable: str | Path = FEDLAB,
    quiet: bool = True,
) -> list[str]:
    """Return the `fedlab run` argument list for one cell, run from the project folder.

    `output_dir` and `ae_cache_dir` are appended to the overrides when given. Relative
    paths are resolved by `fedlab run` against its working folder. `federation_config`
    (for example ``client-resources-num-gpus``) places the clients and does not change
    what they compute.
    """
    overrides = dict(run_config)
    if output_dir is not None:
        overrides["output-dir"] = str(output_dir)
    if ae_cache_dir is not None:
        overrides["ae-cache-dir"] = str(ae_cache_dir)
    clients = num_clients if num_clients is not None else int(overrides.get("num-clients", 10))
    argv = [str(executable), "run"]
    if quiet:
        argv.append("--quiet")
    argv += ["--clients", str(clients), "--run-config", format_run_config(overrides)]
    if federation_config:
        argv += ["--federation-config", format_run_config(federation_config)]
    return argv


def display_command(argv: Sequence[str]) -> str:
    """Return `argv` as a shell command without ``--quiet``, with the executable relative to the project.

    A ``key=value`` argument is wrapped in double quotes when that needs no escaping, so the
    command reads like the README's examples. Any other argument that needs quoting goes
    through `shlex.quote`.
    """
    words = [word for word in argv if word != "--quiet"]
    executable = Path(words[0])
    if executable.is_absolute() and executable.is_relative_to(PROJECT_DIR):
        words[0] = str(executable.relative_to(PROJECT_DIR))
    return " ".join(_quote_for_shell(word) for word in words)


def _quote_for_shell(word: str) -> str:
    if re.fullmatch(r"[\w./:+-]+", word):
        return word
    if not re.search(r'["$`\\!]', word):
        return f'"{word}"'
    return shlex.quote(word)


def project_relative(path: Path) -> str:
    """Return `path` relative to the project folder when it lies inside it, else absolute."""
    path = path.resolve()
    return str(path.relative_to(PROJECT_DIR)) if path.is_relative_to(PROJECT_DIR) else str(path)


# ---------------------------------------------------------------------------
# Running one cell
# ---------------------------------------------------------------------------


def run_fedlab(argv: Sequence[str], cwd: Path = PROJECT_DIR, timeout: float | None = None) -> dict[str, Any]:
    """Run one `fedlab run` command and return its ``results.json`` with ``run_dir`` set.

    A timed-out run gets SIGTERM, so that `fedlab run` stops its SuperLink and simulation,
    and SIGKILL only if it is still running a minute later.

    Raises
    ------
    CellFailed
        When the command exits non-zero, times out, or prints no readable results path.
    """
    process = subprocess.Popen(
        list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process)
        raise CellFailed(f"fedlab run timed out after {timeout:.0f} s and was stopped") from None
    except BaseException:
        # Ctrl-C or another interruption: let `fedlab run` stop its SuperLink before leaving.
        _stop(process)
        raise
    if process.returncode != 0:
        tail = (stderr or stdout or "").strip()[-_ERROR_CHARS:]
        raise CellFailed(f"fedlab run exited with status {process.returncode}: {tail}")
    lines = stdout.strip().splitlines()
    results_path = Path(lines[-1]) if lines else None
    if results_path is None or not results_path.is_file():
        raise CellFailed(f"fedlab run printed no results.json path; last output: {stdout.strip()[-500:]!r}")
    try:
        results = json.loads(results_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CellFailed(f"cannot read {results_path}: {err}") from err
    results.setdefault("run_dir", str(results_path.parent))
    return results


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.communicate(timeout=_STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


# A runner turns a cell and its argument list into the run's results.json content, or raises
# CellFailed. The default runs `fedlab run`; tests pass a function.
Runner = Callable[[Cell, list[str]], Mapping[str, Any]]


def fedlab_runner(timeout: float | None = None) -> Runner:
    """Return a runner that executes the argument list with :func:`run_fedlab`."""

    def run(cell: Cell, argv: list[str]) -> Mapping[str, Any]:
        return run_fedlab(argv, timeout=timeout)

    return run


def result_row(cell: Cell, results: Mapping[str, Any], command: str, wall_seconds: float) -> dict[str, Any]:
    """Return the CSV row of a finished cell from its ``results.json`` content."""
    heterogeneity = results.get("heterogeneity") or {}
    run_dir = results.get("run_dir")
    return {
        "cell_id": cell.cell_id,
        "status": OK,
        **cell.coordinates,
        "test_accuracy": results.get("test_accuracy"),
        "upload_bytes_per_client": results.get("upload_bytes_per_client"),
        "download_bytes_per_client": results.get("download_bytes_per_client"),
        "model_bytes": results.get("model_bytes"),
        "wall_seconds": round(wall_seconds, 1),
        "run_seconds": _rounded(results.get("wall_seconds")),
        "failed_clients": len(results.get("failed_clients") or []),
        **{key: heterogeneity.get(key) for key in HETEROGENEITY_COLUMNS},
        "error": "",
        "run_dir": project_relative(Path(run_dir)) if run_dir else "",
        "command": command,
        **_provenance(),
    }


def failure_row(cell: Cell, error: str, command: str, wall_seconds: float) -> dict[str, Any]:
    """Return the CSV row of a failed cell: its coordinates, the error and the command."""
    return {
        "cell_id": cell.cell_id,
        "status": FAILED,
        **cell.coordinates,
        "wall_seconds": round(wall_seconds, 1),
        "error": error[-_ERROR_CHARS:],
        "command": command,
        **_provenance(),
    }


def _rounded(value: Any) -> Any:
    return round(float(value), 1) if isinstance(value, (int, float)) else value


def _provenance() -> dict[str, str]:
    return {"date": time.strftime("%Y-%m-%d"), "machine": machine_description()}


@functools.lru_cache(maxsize=1)
def machine_description() -> str:
    """Describe this machine for the results file: architecture, CPU model, CPU cores and GPU."""
    import torch

    from fedlab.results import cpu_model

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()} ({cpu_model()}), {len(os.sched_getaffinity(0))} CPU cores, {gpu}"


# ---------------------------------------------------------------------------
# The results file
# ---------------------------------------------------------------------------


def read_results(path: Path) -> pd.DataFrame:
    """Read a results CSV, or return an empty frame when it does not exist yet."""
    if not path.exists():
        return pd.DataFrame(columns=["cell_id", "status"])
    frame = pd.read_csv(path, dtype={"cell_id": str, "error": str, "command": str, "run_dir": str})
    missing = {"cell_id", "status"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"{path} is not a benchmark results file: columns {', '.join(sorted(missing))} are missing"
        )
    return frame


def write_results(path: Path, frame: pd.DataFrame, coordinate_columns: Sequence[str] = ()) -> None:
    """Write `frame` to `path` atomically, columns in a fixed order: id, status, coordinates, results."""
    from fedlab.results import atomic_write_text

    leading = ["cell_id", "status", *coordinate_columns]
    known = leading + [c for c in (*RESULT_COLUMNS, *TRAILING_COLUMNS) if c not in leading]
    order = [c for c in known if c in frame.columns] + [c for c in frame.columns if c not in known]
    for column in known:
        if column not in frame.columns:
            order.append(column)
            frame = frame.assign(**{column: None})
    atomic_write_text(path, frame[order].to_csv(index=False))


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


@dataclass
class SweepSummary:
    """Counts of one invocation of :func:`run_cells`."""

    total: int = 0
    already_done: int = 0
    skipped_failed: int = 0
    ran: int = 0
    failed: int = 0
    seconds: float = 0.0


def pending_cells(cells: Iterable[Cell], frame: pd.DataFrame, retry_failed: bool) -> tuple[list[Cell], int, int]:
    """Split `cells` by the results file: return (cells to run, done count, skipped failed count)."""
    status = dict(zip(frame["cell_id"].astype(str), frame["status"], strict=True)) if len(frame) else {}
    pending, done, skipped = [], 0, 0
    for cell in cells:
        recorded = status.get(cell.cell_id)
        if recorded == OK:
            done += 1
        elif recorded == FAILED and not retry_failed:
            skipped += 1
        else:
            pending.append(cell)
    return pending, done, skipped


def reuse_rows(
    cells: Iterable[Cell], frame: pd.DataFrame, sources: Sequence[Path]
) -> tuple[pd.DataFrame, dict[Path, int]]:
    """Copy finished rows of `cells` from other results files into `frame`.

    Two grids that share a cell (the same run config, so the same id) need to run it only once.
    A row is copied when its cell belongs to `cells` and finished in the source. A cell that
    `frame` already contains as finished keeps its row, and a failed row there is replaced. Rows
    keep their command, which reproduces the run wherever its output goes. Returns the new
    frame and the number of rows taken from each source.
    """
    grid_ids = {cell.cell_id for cell in cells}
    done = set(frame.loc[frame["status"] == OK, "cell_id"].astype(str)) if len(frame) else set()
    counts: dict[Path, int] = {}
    for source in sources:
        if not source.is_file():
            raise ValueError(f"results file to reuse not found: {source}; name a grid that has results or a runs.csv path")
        rows = read_results(source)
        rows = rows[(rows["status"] == OK) & rows["cell_id"].astype(str).isin(grid_ids - done)]
        rows = rows.drop_duplicates("cell_id", keep="last")
        counts[source] = len(rows)
        if len(rows):
            copied = set(rows["cell_id"].astype(str))
            others = frame[~frame["cell_id"].astype(str).isin(copied)] if len(frame) else frame
            frame = pd.concat([others, rows], ignore_index=True) if len(others) else rows.reset_index(drop=True)
            done |= copied
    return frame, counts


def run_cells(
    cells: Sequence[Cell],
    results_path: Path,
    *,
    runner: Runner,
    output_dir: str | Path,
    ae_cache_dir: str | Path | None = None,
    federation_config: Mapping[str, Any] | None = None,
    retry_failed: bool = False,
    echo: Callable[[str], None] = print,
    clock: Callable[[], float] = time.perf_counter,
) -> SweepSummary:
    """Run every cell that `results_path` does not contain yet and record one row per cell.

    Parameters
    ----------
    cells : sequence of Cell
        The grid, in running order. Duplicate ids are run once.
    results_path : Path
        CSV file read at the start and rewritten after every cell.
    runner : Runner
        Called with the cell and its `fedlab run` argument list; returns the results or
        raises :class:`CellFailed`. Any other exception stops the sweep.
    output_dir, ae_cache_dir : str or Path
        Run folders and the shared autoencoder cache, passed to every cell's run config.
    federation_config : mapping, optional
        ``--federation-config`` of every cell; not part of a cell's identity.
    retry_failed : bool
        Run cells recorded as failed again, replacing their rows.
    echo : callable
        Receives one progress line at a time.
    clock : callable
        Monotonic seconds; tests pass a fake one.
    """
    unique = list({cell.cell_id: cell for cell in cells}.values())
    coordinate_columns = list(unique[0].coordinates) if unique else []
    frame = read_results(results_path)
    pending, done, skipped = pending_cells(unique, frame, retry_failed)
    summary = SweepSummary(total=len(unique), already_done=done, skipped_failed=skipped)
    echo(
        f"{len(unique)} cells: {done} already done, {skipped} failed earlier"
        + (" (--retry-failed runs them again)" if skipped else "")
        + f", {len(pending)} to run"
    )
    estimate = sum(cell.estimate_seconds for cell in pending)
    if estimate > 0:
        echo(f"estimated total for the {len(pending)} cells to run: {format_duration(estimate)}")

    started = clock()
    estimated_done = 0.0
    for index, cell in enumerate(pending, start=1):
        argv = fedlab_argv(cell.run_config, output_dir=output_dir, ae_cache_dir=ae_cache_dir,
                           federation_config=federation_config)
        command = display_command(argv)
        echo(f"[{index}/{len(pending)}] {cell.label()}")
        cell_started = clock()
        try:
            results = runner(cell, argv)
        except CellFailed as err:
            row = failure_row(cell, str(err), command, clock() - cell_started)
            summary.failed += 1
            outcome = f"FAILED: {_last_line(str(err))}"
        else:
            row = result_row(cell, results, command, clock() - cell_started)
            accuracy = row["test_accuracy"]
            outcome = f"accuracy {accuracy:.4f}" if isinstance(accuracy, (int, float)) else "no test accuracy"
        summary.ran += 1

        frame = frame[frame["cell_id"].astype(str) != cell.cell_id]
        frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True) if len(frame) else pd.DataFrame([row])
        write_results(results_path, frame, coordinate_columns)

        elapsed = clock() - started
        estimated_done += cell.estimate_seconds
        remaining = pending[index:]
        eta = estimate_remaining(elapsed, estimated_done, index, remaining)
        echo(
            f"    {outcome} in {row['wall_seconds']:.0f} s | elapsed {format_duration(elapsed)}"
            + (f" | ETA {format_duration(eta)}" if remaining else "")
        )
    summary.seconds = clock() - started
    return summary


def estimate_remaining(elapsed: float, estimated_done: float, count_done: int, remaining: Sequence[Cell]) -> float:
    """Estimate the seconds left: the remaining cells' estimates scaled by how the finished ones went.

    Without estimates, the mean time of the finished cells times the number left.
    """
    estimated_left = sum(cell.estimate_seconds for cell in remaining)
    if estimated_done > 0 and estimated_left > 0:
        return estimated_left * elapsed / estimated_done
    return elapsed / max(count_done, 1) * len(remaining)


def format_duration(seconds: float) -> str:
    """Format seconds as ``1h02m``, ``4m05s`` or ``12s``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "unknown"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _last_line(text: str) -> str:
    # The last line of a failed command's output is usually its error message.
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""
