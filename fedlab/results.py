"""Run folders and results files, written atomically so a crash never leaves half a file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


def cpu_model() -> str:
    """Return the CPU model name from ``/proc/cpuinfo``, or the platform's processor string.

    Results can differ in the last digits between CPU models because their math kernels round
    differently, so results record the model they were measured on.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def file_mode() -> int:
    """Return the mode a plainly created file gets under the current umask (0o644 for 022).

    Temporary files are created owner-only; renamed into place they keep this mode instead,
    so that collaborators read results as they read any other file.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON serialisable")


def save_model(path: Path, model: nn.Module) -> None:
    """Save the model's state dict with torch.save, atomically."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, file_mode())
    os.close(fd)
    try:
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_folder(output_dir: str, name: str) -> Path:
    """Return the absolute path of run folder `name` under `output_dir`."""
    return Path(output_dir).expanduser().resolve() / name


def check_run_folder_free(run_dir: Path) -> None:
    """Raise FileExistsError when `run_dir` already contains files, so no earlier run is overwritten."""
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise FileExistsError(
            f"run folder {run_dir} already contains files; choose another run-name or output-dir, "
            "or remove the folder"
        )


def make_run_dir(output_dir: str, strategy: str, flower_run_id: int, run_name: str = "") -> Path:
    """Create ``<output_dir>/<run-id>/`` where run-id = time, strategy and Flower's run id."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = run_folder(output_dir, run_name or f"{stamp}-{strategy}-{flower_run_id}")
    check_run_folder_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def summarize_client_seconds(client_metrics: dict[int, dict[str, float | int]]) -> dict[str, float]:
    """Return the mean over clients of every ``*-seconds`` metric, keyed in snake_case."""
    keys = sorted({key for metrics in client_metrics.values() for key in metrics if key.endswith("-seconds")})
    summary = {}
    for key in keys:
        values = [float(m[key]) for m in client_metrics.values() if key in m]
        summary[key.removesuffix("-seconds").replace("-", "_")] = statistics.fmean(values)
    return summary
