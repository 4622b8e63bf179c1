"""Regenerate the README's results table: every row is one `fedlab run` through `flwr run`.

    .venv/bin/python benchmarks/results_table.py            # all rows
    .venv/bin/python benchmarks/results_table.py --only fedsd2c
    .venv/bin/python benchmarks/results_table.py --rerun     # measure every row again

Rows already present in ``benchmarks/results/readme_runs.jsonl`` (same name and command)
are skipped, so an interrupted sweep resumes. ``--rerun`` measures them again, for example
after a code change. New rows are appended and the table uses the latest row of each name,
so earlier measurements stay in the file. The table goes to
``benchmarks/results/readme_table.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make `benchmarks` importable from the project folder.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.suite import FEDLAB, PROJECT_DIR, machine_description, run_fedlab  # noqa: E402

RESULTS_DIR = PROJECT_DIR / "benchmarks" / "results"
RUNS_FILE = RESULTS_DIR / "readme_runs.jsonl"
TABLE_FILE = RESULTS_DIR / "readme_table.md"
CLIENTS = 10

# (row name, run-config overrides). Everything else is the app's default config.
ROWS = [
    (f"{name} alpha={alpha}", f"strategy='{strategy}' alpha={alpha}{extra}")
    for alpha in (0.1, 0.5)
    for name, strategy, extra in (
        ("FedSD2C", "fedsd2c", ""),
        ("FedAvg one-shot", "fedavg", " num-server-rounds=1"),
        ("Ensemble", "ensemble", ""),
        ("FedAvg 10 rounds", "fedavg", " num-server-rounds=10 local-epochs=2"),
    )
] + [
    # The same FedSD2C run with the clients loading the public autoencoder themselves, so
    # that its weights are not part of every request (see `autoencoder-delivery`).
    ("FedSD2C local autoencoder alpha=0.1", "strategy='fedsd2c' alpha=0.1 autoencoder-delivery='local'"),
]


def command_for(overrides: str) -> list[str]:
    return [
        str(FEDLAB),
        "run",
        "--quiet",
        "--clients",
        str(CLIENTS),
        "--run-config",
        f"{overrides} output-dir='{PROJECT_DIR / 'outputs' / 'readme-table'}'",
    ]


def load_done() -> dict[str, dict]:
    if not RUNS_FILE.exists():
        return {}
    done = {}
    for line in RUNS_FILE.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            done[row["name"]] = row
    return done


def row_command(overrides: str) -> str:
    """Return the command recorded beside a row; a row whose command changed runs again."""
    return f"fedlab run --clients {CLIENTS} --run-config \"{overrides}\""


def git_commit() -> str:
    """Return the checked-out commit, with ``+changes`` when tracked files differ from it.

    Changes under ``benchmarks/results/``, which this script writes itself, do not count.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
            cwd=PROJECT_DIR, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+changes" if dirty else head


def run_row(name: str, overrides: str) -> dict:
    commit = git_commit()  # the code the run starts with
    start = time.perf_counter()
    # A failed row raises CellFailed (a RuntimeError) with the run's error and stops the sweep.
    results = run_fedlab(command_for(overrides))
    results_path = Path(results["run_dir"]) / "results.json"
    return {
        "name": name,
        "command": row_command(overrides),
        "test_accuracy": results["test_accuracy"],
        "upload_bytes_per_client": results["upload_bytes_per_client"],
        "download_bytes_per_client": results.get("download_bytes_per_client"),
        "model_bytes": results["model_bytes"],
        "wall_seconds": round(time.perf_counter() - start, 1),
        "results": str(results_path.relative_to(PROJECT_DIR)) if results_path.is_relative_to(PROJECT_DIR) else str(results_path),
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "machine": machine_description(),
    }


def rows_to_run(done: dict[str, dict], only: str = "", rerun: bool = False) -> list[tuple[str, str]]:
    """Return the rows to measure: those matching `only` that are missing or whose command changed.

    With `rerun`, every row matching `only` is measured again.
    """
    return [
        (name, overrides)
        for name, overrides in ROWS
        if only.lower() in name.lower()
        and (rerun or done.get(name, {}).get("command") != row_command(overrides))
    ]


def format_bytes(value: float | None) -> str:
    """Return a byte count for the table; rows recorded before downloads were measured show "n/a"."""
    return "n/a" if value is None else f"{value:.0f}"


def table_lines(done: dict[str, dict]) -> list[str]:
    lines = [
        "| run | test accuracy | upload per client (bytes) | download per client (bytes) "
        "| model upload (bytes) | wall time (s) | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, _ in ROWS:
        if name in done:
            row = done[name]
            lines.append(
                f"| {name} | {row['test_accuracy']:.4f} | {format_bytes(row['upload_bytes_per_client'])} | "
                f"{format_bytes(row.get('download_bytes_per_client'))} | {row['model_bytes']} | "
                f"{row['wall_seconds']:.0f} | `{row['command']}` |"
            )
    return lines


def write_table(done: dict[str, dict]) -> None:
    TABLE_FILE.write_text("\n".join(table_lines(done)) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only rows whose name contains this text")
    parser.add_argument("--rerun", action="store_true", help="run the selected rows even if they are recorded")
    args = parser.parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    done = load_done()
    todo = rows_to_run(done, args.only, args.rerun)
    for index, (name, overrides) in enumerate(todo, start=1):
        print(f"[{index}/{len(todo)}] {name}: {overrides}", flush=True)
        row = run_row(name, overrides)
        with RUNS_FILE.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        done[name] = row
        print(f"    accuracy {row['test_accuracy']:.4f} in {row['wall_seconds']:.0f} s", flush=True)
    write_table(done)
    print(TABLE_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
