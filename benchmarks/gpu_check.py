"""Check GPU pinning and the per-client memory cap on a machine with CUDA GPUs.

Runs a small one-shot FedAvg simulation through ``fedlab run`` in which every client has
``--gpu-fraction`` of a GPU (default 0.5), with ``FEDLAB_GPU_CAP_PROBE=1`` so that each client
first tries to allocate more than its cap and then half of it. Then it checks results.json:

- every client ran on ``cuda:0`` of its process, with ``CUDA_VISIBLE_DEVICES`` set to one
  GPU of this machine, and each process stayed on one GPU;
- every client's memory cap is its fraction of that GPU's memory;
- the allocation above the cap raised ``torch.OutOfMemoryError`` in the client, and the one of
  half the cap succeeded.

It prints one PASS or FAIL line per check and exits 0 only when all pass::

    .venv/bin/python benchmarks/gpu_check.py
    .venv/bin/python benchmarks/gpu_check.py --gpu-fraction 0.25 --clients 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from fedlab.placement import CAP_PROBE_ENV  # noqa: E402

SMALL_RUN = (
    "strategy='fedavg' num-server-rounds=1 max-pool-samples=800 partitioner='iid' "
    "min-partition-size=10 model-width=32 local-epochs=2"
)


def run_simulation(clients: int, gpu_fraction: float, output_dir: Path) -> tuple[int, str]:
    """Run ``fedlab run`` with fractional GPUs and the cap probe; return exit code and output."""
    federation = f"client-resources-num-cpus=1 client-resources-num-gpus={gpu_fraction}"
    command = [
        sys.executable, "-m", "fedlab.cli", "run", "--app-dir", str(PROJECT_DIR), "--quiet",
        "--clients", str(clients), "--run-config", f"{SMALL_RUN} output-dir='{output_dir}'",
        "--federation-config", federation,
    ]
    print("running:", " ".join(command), flush=True)
    env = {**os.environ, CAP_PROBE_ENV: "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800, check=False)
    return result.returncode, result.stdout + result.stderr


def check_results(results: dict, gpu_fraction: float, gpu_memory: dict[int, int]) -> list[tuple[str, bool, str]]:
    """Return (check, passed, detail) for every check on one run's results.json."""
    rows = results.get("placement", {}).get("clients", [])
    checks = [
        ("all clients replied", results.get("failed_clients") == [] and len(rows) == results.get("num_clients"),
         f"{len(rows)} placements, failures: {results.get('failed_clients')}"),
    ]

    devices = {row["device"] for row in rows}
    checks.append(("clients ran on cuda:0 of their process", devices == {"cuda:0"}, f"devices {sorted(devices)}"))

    visible = [row["cuda_visible_devices"] for row in rows]
    single_gpu = all(value is not None and value.isdigit() and int(value) in gpu_memory for value in visible)
    checks.append(("CUDA_VISIBLE_DEVICES names one GPU of this machine", single_gpu, f"values {sorted(set(map(str, visible)))}"))

    gpus_of_process: dict[int, set] = {}
    for row in rows:
        gpus_of_process.setdefault(row["process_id"], set()).add(row["cuda_visible_devices"])
    checks.append(("each process stayed on one GPU", all(len(g) == 1 for g in gpus_of_process.values()),
                   f"{len(gpus_of_process)} processes"))

    cap_errors = []
    for row in rows:
        value = row["cuda_visible_devices"]
        if not (value and value.isdigit() and int(value) in gpu_memory):
            continue
        expected = int(gpu_fraction * gpu_memory[int(value)])
        if row["memory_cap_fraction"] != gpu_fraction or abs(row["memory_cap_bytes"] - expected) > 1:
            cap_errors.append(f"node {row['node_id']}: fraction {row['memory_cap_fraction']}, "
                              f"{row['memory_cap_bytes']} bytes, expected {expected}")
    checks.append(("memory cap is the GPU fraction of the GPU's memory", not cap_errors and bool(rows),
                   "; ".join(cap_errors[:3]) or f"fraction {gpu_fraction}"))

    over = [row.get("cap_probe_over_raised") for row in rows]
    under = [row.get("cap_probe_under_ok") for row in rows]
    checks.append(("allocating above the cap raised OutOfMemoryError", bool(rows) and all(v == 1 for v in over),
                   f"results {over}"))
    checks.append(("allocating half the cap succeeded", bool(rows) and all(v == 1 for v in under),
                   f"results {under}"))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="simulated clients (default: %(default)s)")
    parser.add_argument("--gpu-fraction", type=float, default=0.5,
                        help="client-resources-num-gpus, in (0, 1) (default: %(default)s)")
    parser.add_argument("--output-dir", default=str(PROJECT_DIR / "outputs" / "gpu-check"),
                        help="folder for the run's outputs (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.gpu_fraction < 1:
        print(f"error: --gpu-fraction={args.gpu_fraction} must be in (0, 1) so that a cap applies", file=sys.stderr)
        return 2

    import torch

    if not torch.cuda.is_available():
        print("FAIL: no CUDA GPU is visible to torch on this machine; run the check on a GPU machine")
        return 1
    gpu_memory = {index: torch.cuda.get_device_properties(index).total_memory
                  for index in range(torch.cuda.device_count())}
    print(f"GPUs: {', '.join(f'{i}: {torch.cuda.get_device_name(i)} ({m / 2**30:.0f} GiB)' for i, m in gpu_memory.items())}")

    returncode, output = run_simulation(args.clients, args.gpu_fraction, Path(args.output_dir))
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if returncode != 0 or not lines or not lines[-1].endswith("results.json"):
        print(output[-4000:])
        print(f"FAIL: fedlab run exited with {returncode}")
        return 1
    results = json.loads(Path(lines[-1]).read_text())

    checks = check_results(results, args.gpu_fraction, gpu_memory)
    for name, passed, detail in checks:
        print(f"{'PASS' if passed else 'FAIL'}: {name} ({detail})")
    passed_all = all(passed for _, passed, _ in checks)
    print(f"{'PASS' if passed_all else 'FAIL'}: GPU pinning and memory cap, results in {lines[-1]}")
    return 0 if passed_all else 1


if __name__ == "__main__":
    sys.exit(main())
