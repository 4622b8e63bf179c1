"""Scale benchmark: wall time, clients per second and peak memory at 10, 100 and 1,000 clients.

Each cell is one strategy (FedSD2C or one-shot FedAvg) at one client count, run two ways:

- ``platform``: ``fedlab run`` through ``flwr run``, Ray actors included;
- ``plain``: the same client and server code in one process without Flower or Ray
  (``benchmarks/plain_fedsd2c.py`` or ``benchmarks/plain_fedavg.py``).

Both are timed from outside as whole processes, so start-up and imports count on both sides.
While a cell runs, the resident memory (RSS and PSS) and CPU time of its process tree are
sampled from ``/proc`` every 2 seconds. The platform's overhead ratio is its wall time divided
by the plain run's.

Run cells one at a time on an otherwise idle machine, then build the report::

    .venv/bin/python benchmarks/scale.py run --strategy fedavg --clients 10 --mode plain
    .venv/bin/python benchmarks/scale.py run --strategy fedavg --clients 10 --mode platform
    .venv/bin/python benchmarks/scale.py run-all          # every missing cell, one at a time
    .venv/bin/python benchmarks/scale.py report           # scale.md, .csv, .json and .png

Rows are appended to ``benchmarks/results/scale.jsonl``; the report keeps the latest row of
each cell.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from fedlab.launch import OFFLINE_ENV, descendant_pids  # noqa: E402

RESULTS_DIR = PROJECT_DIR / "benchmarks" / "results"
ROWS_FILE = RESULTS_DIR / "scale.jsonl"
OUTPUT_DIR = PROJECT_DIR / "outputs" / "scale"
AE_CACHE_DIR = PROJECT_DIR / "outputs" / "scale-ae-cache"

CLIENT_COUNTS = (10, 100, 1000)
STRATEGIES = {"fedsd2c": "FedSD2C", "fedavg": "FedAvg one-shot", "ensemble": "Ensemble"}
MODES = ("plain", "platform")
# The ensemble has no plain counterpart; `run-all` leaves it out and `run` runs it on the platform.
PLAIN_SCRIPTS = {"fedsd2c": "plain_fedsd2c.py", "fedavg": "plain_fedavg.py"}

# One workload for every client count: the 3,500-image MNIST pool split IID, so the total
# local training (epochs x pool) is the same at 10 and at 1,000 clients, and only the
# per-client costs grow with the count. At 1,000 clients each client has 3 or 4 images.
SCALE_CONFIG = (
    "partitioner='iid' min-partition-size=1 model-width=16 local-epochs=50 "
    "ipc=2 mipc=20 num-crops=2 synthesis-iterations=10 server-epochs=30 privacy-report=false"
)
FEDERATION_CONFIG = "client-resources-num-cpus=1"
TIMEOUT_SECONDS = 4 * 3600

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# Sampling a process tree --------------------------------------------------------------------


def process_kind(cmdline: str) -> str:
    """Classify a process of a run by its command line."""
    if "flwr-simulation" in cmdline:
        return "driver"  # ServerApp, simulation engine and Ray driver in one process
    if cmdline.startswith("ray::ClientAppActor"):
        return "actors"
    if cmdline.startswith("ray::") or "/ray/" in cmdline:
        return "ray"
    if "flower-superlink" in cmdline or "flower-superexec" in cmdline or "/flwr " in cmdline:
        return "flower"
    return "launcher"


@dataclass
class TreeSampler:
    """Samples RSS, PSS and CPU time of a process and all its descendants from ``/proc``."""

    root: int
    interval: float = 2.0
    peak_rss: dict[str, int] = field(default_factory=dict)  # largest single process per kind
    peak_pss_sum: dict[str, int] = field(default_factory=dict)  # largest per-kind sum
    peak_pss_total: int = 0
    max_processes: dict[str, int] = field(default_factory=dict)
    _cpu_ticks: dict[int, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        """User plus system CPU time of every sampled process, as last seen."""
        return sum(self._cpu_ticks.values()) / _CLOCK_TICKS

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        pss_by_kind: dict[str, int] = {}
        count_by_kind: dict[str, int] = {}
        for pid in [self.root, *descendant_pids(self.root)]:
            try:
                kind = self._classify(pid)
                rss, pss, ticks = _read_memory_and_cpu(pid)
            except (OSError, ValueError, IndexError):
                continue  # the process exited between listing and reading
            self._cpu_ticks[pid] = ticks
            self.peak_rss[kind] = max(self.peak_rss.get(kind, 0), rss)
            pss_by_kind[kind] = pss_by_kind.get(kind, 0) + pss
            count_by_kind[kind] = count_by_kind.get(kind, 0) + 1
        for kind, pss in pss_by_kind.items():
            self.peak_pss_sum[kind] = max(self.peak_pss_sum.get(kind, 0), pss)
        for kind, count in count_by_kind.items():
            self.max_processes[kind] = max(self.max_processes.get(kind, 0), count)
        self.peak_pss_total = max(self.peak_pss_total, sum(pss_by_kind.values()))

    def _classify(self, pid: int) -> str:
        # Read every time: a Ray worker starts as `python .../default_worker.py` and takes
        # the name `ray::ClientAppActor` only once it hosts an actor.
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return process_kind(cmdline.strip())


def _read_memory_and_cpu(pid: int) -> tuple[int, int, int]:
    """Return (RSS bytes, PSS bytes, user + system clock ticks) of one process."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name.
    return rss, pss, int(fields[11]) + int(fields[12])


# Running one cell ---------------------------------------------------------------------------


def run_config_for(strategy: str, clients: int) -> str:
    extra = " num-server-rounds=1" if strategy == "fedavg" else ""
    return (
        f"strategy='{strategy}' num-clients={clients} {SCALE_CONFIG}{extra} "
        f"ae-cache-dir='{AE_CACHE_DIR}' output-dir='{OUTPUT_DIR}'"
    )


def command_for(strategy: str, clients: int, mode: str) -> list[str]:
    run_config = run_config_for(strategy, clients)
    if mode == "plain":
        if strategy not in PLAIN_SCRIPTS:
            raise ValueError(f"strategy {strategy!r} has no plain script; run it with --mode platform")
        script = PROJECT_DIR / "benchmarks" / PLAIN_SCRIPTS[strategy]
        # One torch thread, as in each Ray actor. The 1,000-client FedAvg cell took 123 s with
        # one thread against 401 s with two on 2 cores, because its width-16 ConvNet is small.
        return ["env", "OMP_NUM_THREADS=1", sys.executable, str(script), "--run-config", run_config]
    return [
        sys.executable, "-m", "fedlab.cli", "run", "--app-dir", str(PROJECT_DIR), "--quiet",
        "--clients", str(clients), "--run-config", run_config,
        "--federation-config", FEDERATION_CONFIG,
    ]


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "processor": _cpu_model(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def ensure_autoencoder(clients: int) -> None:
    """Pretrain the workload's autoencoder into the cache now, so that no timed cell does."""
    from fedlab.cli import resolve_run_config
    from fedlab.federation import federated_data
    from fedlab.public_autoencoder import prepare_autoencoder

    from fedlab.training import limit_torch_threads

    limit_torch_threads()
    config, _ = resolve_run_config(PROJECT_DIR, [run_config_for("fedsd2c", clients)], None)
    prepare_autoencoder(config, federated_data(config), AE_CACHE_DIR)


def run_cell(strategy: str, clients: int, mode: str) -> dict[str, Any]:
    """Run one cell in a subprocess while sampling its process tree; return its row."""
    if strategy == "fedsd2c":
        ensure_autoencoder(clients)
    command = command_for(strategy, clients, mode)
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_path = OUTPUT_DIR / f"{stamp}-{strategy}-{clients}-{mode}.log"
    env = dict(os.environ)
    load_before = os.getloadavg()
    print(f"[scale] {strategy} {clients} clients {mode}: {shlex.join(command)}", flush=True)

    started = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(process.pid)
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            raise
        finally:
            sampler.stop()
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    output = log_path.read_text()

    row: dict[str, Any] = {
        "strategy": strategy,
        "clients": clients,
        "mode": mode,
        "returncode": process.returncode,
        "wall_seconds": round(wall, 2),
        "clients_per_second": round(clients / wall, 3),
        "cpu_seconds": round(sampler.cpu_seconds, 1),
        "peak_pss_total_bytes": sampler.peak_pss_total,
        "peak_rss_by_kind_bytes": sampler.peak_rss,
        "peak_pss_by_kind_bytes": sampler.peak_pss_sum,
        "max_processes_by_kind": sampler.max_processes,
        "command": shlex.join(command),
        "log": str(log_path),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
    }
    if mode == "plain":
        # wait4 reports the plain process exactly; the sampler may miss its last second.
        row["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
        row["driver_peak_rss_bytes"] = usage.ru_maxrss * 1024
        figures = _last_json_object(output)
        if figures:
            row["test_accuracy"] = figures.get("test_accuracy")
    else:
        row.update(_platform_figures(output))
    return row


def _last_json_object(output: str) -> dict[str, Any] | None:
    start = output.rfind("\n{")
    if start < 0:
        start = output.find("{")
    try:
        return json.loads(output[start:])
    except (json.JSONDecodeError, ValueError):
        return None


def _platform_figures(output: str) -> dict[str, Any]:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if not lines or not lines[-1].endswith("results.json") or not Path(lines[-1]).exists():
        return {}
    results = json.loads(Path(lines[-1]).read_text())
    placement = results.get("placement", {})
    return {
        "results": lines[-1],
        "test_accuracy": results.get("test_accuracy"),
        "server_wall_seconds": round(results.get("wall_seconds", 0.0), 2),
        "failed_clients": len(results.get("failed_clients", [])),
        "driver_peak_rss_bytes": placement.get("server_peak_rss_bytes"),
        "actor_processes": placement.get("client_processes"),
        "actor_peak_rss_bytes_max": placement.get("client_peak_rss_bytes_max"),
        "phase_seconds": results.get("phase_seconds", {}),
    }


# Report -------------------------------------------------------------------------------------


def load_rows() -> dict[tuple[str, int, str], dict[str, Any]]:
    rows: dict[tuple[str, int, str], dict[str, Any]] = {}
    if ROWS_FILE.exists():
        for line in ROWS_FILE.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[(row["strategy"], row["clients"], row["mode"])] = row
    return rows


def _mib(value: int | None) -> str:
    return "" if not value else f"{value / 2**20:.0f}"


def table_rows(rows: dict[tuple[str, int, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten the latest row of every cell, with the platform's overhead ratio."""
    flat = []
    for (strategy, clients, mode), row in sorted(rows.items(), key=lambda item: (item[0][0], item[0][1], item[0][2])):
        plain = rows.get((strategy, clients, "plain"))
        ratio = cpu_ratio = None
        if mode == "platform" and plain and plain["returncode"] == 0 and row["returncode"] == 0:
            ratio = round(row["wall_seconds"] / plain["wall_seconds"], 2)
            cpu_ratio = round(row["cpu_seconds"] / plain["cpu_seconds"], 2)
        pss = row.get("peak_pss_by_kind_bytes", {})
        flat.append({
            "strategy": strategy,
            "clients": clients,
            "mode": mode,
            "ok": row["returncode"] == 0 and not row.get("failed_clients"),
            "wall_seconds": row["wall_seconds"],
            "clients_per_second": row["clients_per_second"],
            "cpu_seconds": row["cpu_seconds"],
            "overhead_ratio_wall": ratio,
            "overhead_ratio_cpu": cpu_ratio,
            "driver_peak_rss_mib": _mib(row.get("driver_peak_rss_bytes")),
            "actors": row.get("actor_processes", ""),
            "actor_peak_rss_mib": _mib(row.get("actor_peak_rss_bytes_max")),
            "actors_peak_pss_mib": _mib(pss.get("actors")),
            "ray_peak_pss_mib": _mib(pss.get("ray")),
            "total_peak_pss_mib": _mib(row.get("peak_pss_total_bytes")),
            "test_accuracy": row.get("test_accuracy"),
            "loadavg_before": row["loadavg_before"][0],
            "date": row["date"],
            "command": row["command"],
        })
    return flat


TABLE_START, TABLE_END = "<!-- scale table: start -->", "<!-- scale table: end -->"


def markdown_table(flat: list[dict[str, Any]], raw: list[dict[str, Any]]) -> str:
    """Return the generated part of scale.md: the table, the machine and every command."""
    lines = [
        TABLE_START,
        "",
        "| strategy | clients | mode | wall (s) | clients/s | CPU (s) | overhead (wall) | overhead (CPU) "
        "| driver peak RSS (MiB) | actors | actor peak RSS (MiB) | actors peak PSS (MiB) "
        "| Ray peak PSS (MiB) | total peak PSS (MiB) | test accuracy | load before |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in flat:
        accuracy = "" if row["test_accuracy"] is None else f"{row['test_accuracy']:.3f}"
        status = "" if row["ok"] else " (failed)"
        lines.append(
            f"| {STRATEGIES[row['strategy']]} | {row['clients']} | {row['mode']}{status} | {row['wall_seconds']:.1f} "
            f"| {row['clients_per_second']:.3f} | {row['cpu_seconds']:.0f} | {row['overhead_ratio_wall'] or ''} "
            f"| {row['overhead_ratio_cpu'] or ''} | {row['driver_peak_rss_mib']} | {row['actors']} "
            f"| {row['actor_peak_rss_mib']} | {row['actors_peak_pss_mib']} | {row['ray_peak_pss_mib']} "
            f"| {row['total_peak_pss_mib']} | {accuracy} | {row['loadavg_before']} |"
        )
    first = raw[0]["machine"]
    dates = sorted(row["date"] for row in raw)
    lines += [
        "",
        f"Machine: {first['processor']}, {first['cpu_affinity']} CPU cores, {first['memory_gib']} GiB, "
        f"GPU: {first['gpu'] or 'none'}; Python {first['python']}, torch {first['torch']}. "
        f"Runs from {dates[0]} to {dates[-1]}.",
        "",
        f"Workload (run config of every cell): `{SCALE_CONFIG}`, plus `num-server-rounds=1` for FedAvg. "
        f"Platform runs use `--federation-config \"{FEDERATION_CONFIG}\"`.",
        "",
        "Commands:",
        "",
    ]
    for row in raw:
        lines.append(f"- {STRATEGIES[row['strategy']]}, {row['clients']} clients, {row['mode']} "
                     f"({row['date']}): `{row['command']}`")
    lines += ["", TABLE_END]
    return "\n".join(lines)


def write_markdown(flat: list[dict[str, Any]], raw: list[dict[str, Any]]) -> None:
    """Write the table into scale.md between its markers and keep the text around them."""
    path = RESULTS_DIR / "scale.md"
    table = markdown_table(flat, raw)
    text = path.read_text() if path.exists() else ""
    if TABLE_START in text and TABLE_END in text:
        before = text.split(TABLE_START, 1)[0]
        after = text.split(TABLE_END, 1)[1]
        text = before + table + after
    else:
        text = "# Scale benchmark\n\n" + table + "\n"
    path.write_text(text)


def write_report(rows: dict[tuple[str, int, str], dict[str, Any]]) -> None:
    flat = table_rows(rows)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    write_markdown(flat, [rows[key] for key in sorted(rows)])
    (RESULTS_DIR / "scale.json").write_text(json.dumps(
        {"workload": SCALE_CONFIG, "federation_config": FEDERATION_CONFIG, "rows": flat,
         "raw": [rows[key] for key in sorted(rows)]}, indent=2) + "\n")
    with open(RESULTS_DIR / "scale.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    _plot(flat)


def _plot(flat: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.5))
    for strategy, label in STRATEGIES.items():
        for mode, style in (("platform", "-o"), ("plain", "--s")):
            points = [r for r in flat if r["strategy"] == strategy and r["mode"] == mode and r["ok"]]
            if not points:
                continue
            clients = [r["clients"] for r in points]
            left.plot(clients, [r["wall_seconds"] for r in points], style, label=f"{label}, {mode}")
            middle.plot(clients, [r["clients_per_second"] for r in points], style, label=f"{label}, {mode}")
            if mode == "platform":
                right.plot(clients, [float(r["driver_peak_rss_mib"] or 0) for r in points], "-o",
                           label=f"{label}: driver peak RSS")
                right.plot(clients, [float(r["actors_peak_pss_mib"] or 0) for r in points], "-^",
                           label=f"{label}: actors peak PSS (sum)")
            else:
                right.plot(clients, [float(r["driver_peak_rss_mib"] or 0) for r in points], "--s",
                           label=f"{label}: plain process peak RSS")
    for axis, title, unit in ((left, "Wall time", "seconds"), (middle, "Throughput", "clients per second"),
                              (right, "Peak memory", "MiB")):
        axis.set_xscale("log")
        axis.set_xlabel("clients")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    left.set_yscale("log")
    figure.tight_layout()
    figure.savefig(RESULTS_DIR / "scale.png", dpi=120)


# Command line -------------------------------------------------------------------------------


def append_row(row: dict[str, Any]) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(ROWS_FILE, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one cell and append its row")
    run.add_argument("--strategy", choices=sorted(STRATEGIES), required=True)
    run.add_argument("--clients", type=int, required=True)
    run.add_argument("--mode", choices=MODES, required=True)
    run_all = commands.add_parser("run-all", help="run every cell without a successful row, one at a time")
    run_all.add_argument("--clients", type=int, nargs="+", default=list(CLIENT_COUNTS))
    commands.add_parser("report", help="write scale.json, scale.csv and scale.png from the rows")
    args = parser.parse_args(argv)
    # The autoencoder is pretrained in this process before the first FedSD2C cell, and torch
    # reads these settings (the OpenMP spin count) when it loads. The cells inherit them.
    os.environ.update(OFFLINE_ENV)

    if args.command == "run":
        if args.mode == "plain" and args.strategy not in PLAIN_SCRIPTS:
            print(f"error: --strategy {args.strategy} has no plain script; use --mode platform", file=sys.stderr)
            return 2
        row = run_cell(args.strategy, args.clients, args.mode)
        append_row(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("machine", "phase_seconds")}, indent=2))
        return 0 if row["returncode"] == 0 else 1
    if args.command == "run-all":
        done = load_rows()
        for clients in args.clients:
            for strategy in PLAIN_SCRIPTS:
                for mode in MODES:
                    previous = done.get((strategy, clients, mode))
                    if previous and previous["returncode"] == 0:
                        continue
                    append_row(run_cell(strategy, clients, mode))
        return 0
    rows = load_rows()
    if not rows:
        print(f"error: no rows in {ROWS_FILE}; run cells first", file=sys.stderr)
        return 2
    write_report(rows)
    print(RESULTS_DIR / "scale.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
