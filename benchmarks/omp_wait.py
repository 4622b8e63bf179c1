"""Time autoencoder pretraining under three OpenMP wait settings, alone and two at once.

    .venv/bin/python benchmarks/omp_wait.py

Between parallel regions an idle OpenMP thread spins, then sleeps. libgomp, which the
Linux CPU builds of torch use, spins 300,000 times by default (``GOMP_SPINCOUNT``), never
with ``OMP_WAIT_POLICY=PASSIVE``. fedlab starts its processes with the spin count that
``fedlab.launch.OFFLINE_ENV`` sets, and this benchmark shows why. Each cell pretrains the
MNIST autoencoder for one epoch on the first 200 digits, in fresh processes with 2 torch
threads each. A cell runs one process alone, or two identical ones started together, as
when two SuperNodes train on one machine. Every cell is repeated, and the fastest and
slowest times go to ``benchmarks/results/omp_wait.md``.

The setting changes only the speed: every process also prints a fingerprint of the
trained weights, and the script fails if two settings disagree.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
RESULTS_FILE = PROJECT_DIR / "benchmarks" / "results" / "omp_wait.md"

# Name, environment, description.
SETTINGS = [
    ("default", {}, "libgomp default: 300,000 spins"),
    ("spin-10000", {"GOMP_SPINCOUNT": "10000"}, "`GOMP_SPINCOUNT=10000` (fedlab's setting)"),
    ("passive", {"OMP_WAIT_POLICY": "PASSIVE"}, "`OMP_WAIT_POLICY=PASSIVE`: never spin"),
]

# Runs in a fresh interpreter, because libgomp reads its settings when it loads.
WORKER = """
import time, torch
torch.set_num_threads(2)
from fedlab.autoencoder import autoencoder_fingerprint, build_autoencoder, pretrain_autoencoder
from fedlab.data import load_dataset
images = load_dataset("mnist").train.images[:200].float() / 255
autoencoder = build_autoencoder(1, 28, seed=0)
start = time.perf_counter()
pretrain_autoencoder(autoencoder, images, epochs=1)
print(time.perf_counter() - start, autoencoder_fingerprint(autoencoder))
"""


def run_together(settings_env: dict[str, str], copies: int) -> list[tuple[float, str]]:
    """Start `copies` worker processes at once and return each one's seconds and fingerprint."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(settings_env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_DIR), env.get("PYTHONPATH", "")]))
    processes = [
        subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(copies)
    ]
    results = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(
                f"pretraining worker failed with status {process.returncode}; its traceback is printed above"
            )
        seconds, fingerprint = output.split()
        results.append((float(seconds), fingerprint))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of every cell (default 3)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    rows, fingerprints = [], set()
    for name, settings_env, description in SETTINGS:
        cells = []
        for copies in (1, 2):
            seconds = []
            for _ in range(args.repeats):
                for elapsed, fingerprint in run_together(settings_env, copies):
                    seconds.append(elapsed)
                    fingerprints.add(fingerprint)
            cells.append(f"{min(seconds):.2f} to {max(seconds):.2f}")
            print(f"{name}, {copies} at once: {cells[-1]} s", flush=True)
        rows.append(f"| {description} | {cells[0]} | {cells[1]} |")
    if len(fingerprints) != 1:
        print(f"error: the settings trained different weights: {sorted(fingerprints)}", file=sys.stderr)
        return 1

    from fedlab.results import cpu_model

    machine = f"{platform.machine()} ({cpu_model()}), {len(os.sched_getaffinity(0))} CPU cores"
    lines = [
        "# OpenMP wait settings and autoencoder pretraining",
        "",
        "Seconds for one epoch of MNIST autoencoder pretraining (200 digits, 2 torch threads):",
        f"the fastest and the slowest time over {args.repeats} repeat(s) of each cell, and with two",
        "processes at once over both processes' times.",
        f"Every run trained the same weights (fingerprint {fingerprints.pop()[:16]}).",
        "",
        "| setting | alone | two processes at once |",
        "|---|---|---|",
        *rows,
        "",
        f"Measured on {time.strftime('%Y-%m-%d')} on {machine}, with",
        "",
        "```bash",
        " ".join([".venv/bin/python benchmarks/omp_wait.py", *(argv if argv is not None else sys.argv[1:])]),
        "```",
        "",
    ]
    RESULTS_FILE.write_text("\n".join(lines))
    print(f"wrote {RESULTS_FILE.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
