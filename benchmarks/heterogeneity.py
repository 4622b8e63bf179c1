"""Heterogeneity benchmark: methods x datasets x label skew x client counts x seeds.

    .venv/bin/python benchmarks/heterogeneity.py --quick            # about 15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/heterogeneity.py                    # the default grid: hours
    .venv/bin/python benchmarks/heterogeneity.py --grid default --clients 5 10 20
    .venv/bin/python benchmarks/heterogeneity.py --grid paper-imagenette \\
        --run-config "data-root='/data/imagenette2'"
    .venv/bin/python benchmarks/heterogeneity.py --list

Every cell is one `fedlab run` (the same code path as `flwr run`) with the cell's run config.
Grids are TOML files in ``benchmarks/configs/`` (see ``benchmarks/grid.py`` for the format).
Results go to ``<out>/runs.csv``, one row per cell with the command that reproduces it. Cells
already recorded there are skipped, so an interrupted sweep resumes. A failed cell is recorded
with its error, and the sweep goes on. ``--retry-failed`` runs failed cells again. After the
sweep, ``<out>/table.md`` contains the mean ± standard deviation over seeds, and the plots are
written next to it. The table covers the grid's cells, plus other client counts and seeds of the same grid that
the results file holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make `benchmarks` importable from the project folder.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from benchmarks import report  # noqa: E402
from benchmarks.grid import Grid, GridError, grid_names, load_grid, validate_cells  # noqa: E402
from benchmarks.suite import (  # noqa: E402
    OK,
    PROJECT_DIR,
    Cell,
    Runner,
    fedlab_argv,
    display_command,
    fedlab_runner,
    format_duration,
    pending_cells,
    project_relative,
    read_results,
    reuse_rows,
    run_cells,
    write_results,
)
from fedlab.launch import signals_raise_system_exit  # noqa: E402

RESULTS_ROOT = PROJECT_DIR / "benchmarks" / "results" / "heterogeneity"
RUNS_ROOT = PROJECT_DIR / "outputs" / "benchmarks"
RESULTS_FILE = "runs.csv"
TABLE_FILE = "table.md"

# Run-config keys that, with the dataset and seed, decide which cached autoencoder a cell uses.
_AUTOENCODER_KEYS = ("image-size", "test-fraction", "public-fraction", "ae-downsample",
                     "ae-latent-channels", "ae-base-channels", "ae-pretrain-epochs", "autoencoder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", default="default",
                        help="grid name in benchmarks/configs/ or a path to a grid .toml file (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="run the quick grid (same as --grid quick)")
    parser.add_argument("--out", default=None,
                        help="folder for runs.csv, table.md and the plots (default: benchmarks/results/heterogeneity/<grid>)")
    parser.add_argument("--runs-dir", default=None,
                        help="output-dir of the runs (default: outputs/benchmarks/<grid>)")
    parser.add_argument("--ae-cache-dir", default=None,
                        help="autoencoder cache shared by every cell (default: outputs/benchmarks/ae-cache)")
    parser.add_argument("--clients", type=int, nargs="+", default=None,
                        help="client counts to run instead of the grid's, e.g. --clients 5 10 20")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds to run instead of the grid's")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="run only these methods of the grid, by name (case-insensitive)")
    parser.add_argument("--datasets", nargs="+", default=None, help="run only these datasets of the grid")
    parser.add_argument("--run-config", action="append", default=[],
                        help="overrides for every cell, e.g. \"data-root='/data/imagenette2'\"; part of each cell's identity")
    parser.add_argument("--reuse", action="append", default=[], metavar="GRID_OR_CSV",
                        help="copy finished cells that this grid shares with another grid's results (a grid name "
                             "or a runs.csv path) instead of running them again; repeatable")
    parser.add_argument("--retry-failed", action="store_true", help="run cells recorded as failed again")
    parser.add_argument("--cell-timeout", type=float, default=None,
                        help="seconds before one cell's run is stopped and recorded as failed (default: no limit)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the cells to run, their commands and the time estimate, and run nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite table.md and the plots from runs.csv")
    parser.add_argument("--list", action="store_true", help="list the named grids and exit")
    return parser


def reuse_source(item: str) -> Path:
    """Return the results file named by `item`: a grid name, a results folder or a CSV path."""
    path = Path(item)
    if path.suffix == ".csv":
        return path
    if path.is_dir():
        return path / RESULTS_FILE
    return RESULTS_ROOT / item / RESULTS_FILE


def parse_overrides(items: Sequence[str]) -> dict[str, object]:
    """Parse ``--run-config`` words with Flower's parser, as `fedlab run` does."""
    import click
    from flwr.common.config import parse_config_args

    try:
        return parse_config_args([item for item in items if item.strip()])
    except click.ClickException as err:
        raise GridError(
            f"invalid --run-config {' '.join(items)!r}: write key=value pairs separated by spaces, "
            "with string values in quotes, e.g. data-root='/data/imagenette2'"
        ) from err


def add_autoencoder_estimates(grid: Grid, pending: Sequence[Cell], done: Sequence[Cell]) -> list[Cell]:
    """Add the dataset's pretraining time to the first pending cell of each autoencoder.

    A cell pretrains when its method has ``pretrains-autoencoder``. Cells share an
    autoencoder when their dataset, seed and autoencoder settings agree; a group that has
    a finished cell is assumed to be cached already.
    """
    def group(cell: Cell) -> tuple:
        return (cell.coordinates["dataset"], cell.coordinates["seed"],
                *(cell.run_config.get(key) for key in _AUTOENCODER_KEYS))

    def pretrains(cell: Cell) -> bool:
        return grid.method(cell.coordinates["method"]).pretrains_autoencoder

    cached = {group(cell) for cell in done if pretrains(cell)}
    result = []
    for cell in pending:
        if pretrains(cell) and group(cell) not in cached:
            cached.add(group(cell))
            extra = grid.dataset(cell.coordinates["dataset"]).autoencoder_seconds
            cell = dataclasses.replace(cell, estimate_seconds=cell.estimate_seconds + extra)
        result.append(cell)
    return result


def check_data_roots(grid: Grid, cells: Sequence[Cell]) -> list[str]:
    """Return one problem per dataset that reads local files but has no existing data-root."""
    problems = []
    for dataset in grid.datasets:
        if not dataset.needs_data_root:
            continue
        roots = {cell.run_config.get("data-root", "") for cell in cells if cell.coordinates["dataset"] == dataset.name}
        for root in sorted(roots):
            if not root:
                problems.append(f"dataset {dataset.name!r} is read from local files, but data-root is empty; "
                                "pass --run-config \"data-root='/path/to/the/dataset'\"")
            elif not Path(root).expanduser().is_dir():
                problems.append(f"dataset {dataset.name!r}: data-root {root!r} is not a folder")
    return problems


def report_cells(grid: Grid, extra: dict[str, object], frame: pd.DataFrame) -> set[str]:
    """Return the ids of the grid's cells, extended by the client counts and seeds found in `frame`."""
    clients, seeds = list(grid.clients), list(grid.seeds)
    if len(frame):
        clients += [int(c) for c in pd.to_numeric(frame.get("num_clients"), errors="coerce").dropna().unique()]
        seeds += [int(s) for s in pd.to_numeric(frame.get("seed"), errors="coerce").dropna().unique()]
    extended = dataclasses.replace(grid, clients=tuple(sorted(set(clients))), seeds=tuple(sorted(set(seeds))))
    return {cell.cell_id for cell in extended.cells(extra)}


def write_report(grid: Grid, extra: dict[str, object], out_dir: Path, command: str) -> Path | None:
    """Write table.md and the plots for the grid's rows of ``runs.csv``; return the table's path."""
    frame = read_results(out_dir / RESULTS_FILE)
    if len(frame):
        frame = frame[frame["cell_id"].astype(str).isin(report_cells(grid, extra, frame))]
    if not len(frame):
        print(f"no results for grid {grid.name!r} in {out_dir / RESULTS_FILE} yet; no table written")
        return None

    # Labels come from the current grid, so a renamed method or partition shows its new name.
    methods = [method.name for method in grid.methods]
    partitions = [partition.label for partition in grid.partitions]
    plots = report.write_plots(frame, out_dir, methods, partitions)

    succeeded = int((frame["status"] == OK).sum())
    dates = ", ".join(sorted(set(frame["date"].dropna().astype(str)))) or "-"
    machines = "; ".join(sorted(set(frame["machine"].dropna().astype(str)))) or "-"
    seeds = sorted(int(s) for s in pd.to_numeric(frame["seed"]).unique())
    header = [
        f"# Heterogeneity benchmark, grid `{grid.name}`",
        "",
        grid.description,
        "",
        f"Produced by `{command}` on {dates} on {machines}. {succeeded} runs succeeded and "
        f"{len(frame) - succeeded} failed. Every row, with the command that reproduces it, is in "
        f"`{RESULTS_FILE}`.",
        "",
    ]
    if len(seeds) > 1:
        spread = f"Mean ± sample standard deviation over seeds {', '.join(map(str, seeds))}. "
    else:
        spread = f"One seed ({seeds[0]}), so no standard deviation. "
    accuracy = [
        "## Test accuracy",
        "",
        spread + "(n=k) marks an entry with fewer successful seeds, and `failed` an entry whose seeds all failed.",
        "",
        report.markdown_tables(frame, methods, partitions, expected_seeds=len(seeds)),
    ]
    cost = [
        "## Communication and wall time",
        "",
        "Upload and download per client count every record a client sent and received over the "
        "run; a dash marks runs recorded before downloads were measured. Wall time is one whole "
        "`fedlab run`, SuperLink and Ray start-up included.",
        "",
        report.cost_table(frame, methods),
    ]
    figures = ["## Plots", "", *(f"![{kind}]({path.name})" for kind, path in plots.items()), ""]
    settings = ["## Settings", "", settings_text(grid, extra)]

    table = out_dir / TABLE_FILE
    table.write_text("\n".join(header + accuracy + cost + figures + settings))
    return table


def settings_text(grid: Grid, extra: dict[str, object]) -> str:
    """Describe the run config each part of the grid sets, for the report."""
    from benchmarks.suite import format_run_config

    lines = [f"- every cell: `{format_run_config({**grid.run_config, **extra})}`"]
    for dataset in grid.datasets:
        if dataset.run_config:
            lines.append(f"- dataset {dataset.name}: `{format_run_config(dataset.run_config)}`")
    if len(grid.models) > 1:
        for model in grid.models:
            lines.append(f"- model {model.name}: `{format_run_config(model.run_config)}`")
    for method in grid.methods:
        lines.append(f"- {method.name}: `{format_run_config(method.run_config)}`")
        for dataset, run_config in method.by_dataset.items():
            lines.append(f"- {method.name} on {dataset}: `{format_run_config(run_config)}`")
    lines.append(f"- clients: {', '.join(map(str, grid.clients))}; seeds: {', '.join(map(str, grid.seeds))}")
    return "\n".join(lines) + "\n"


def list_grids() -> None:
    for name in grid_names():
        try:
            grid = load_grid(name)
        except GridError as err:
            print(f"{name}: invalid: {err}")
            continue
        print(f"{name}: {len(grid.cells())} cells. {grid.description}")


def main(argv: Sequence[str] | None = None, runner: Runner | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        list_grids()
        return 0
    name = "quick" if args.quick else args.grid
    try:
        grid = load_grid(name).restrict(
            clients=args.clients, seeds=args.seeds, methods=args.methods, datasets=args.datasets
        )
        extra = parse_overrides(args.run_config)
        cells = grid.cells(extra)
    except (GridError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    out_dir = Path(args.out) if args.out else RESULTS_ROOT / grid.name
    runs_dir = Path(args.runs_dir) if args.runs_dir else RUNS_ROOT / grid.name
    cache_dir = Path(args.ae_cache_dir) if args.ae_cache_dir else RUNS_ROOT / "ae-cache"
    # The sweep's command for the report: the same arguments without --report-only.
    arguments = [word for word in (argv if argv is not None else sys.argv[1:]) if word != "--report-only"]
    command = shlex.join([".venv/bin/python", "benchmarks/heterogeneity.py", *arguments])

    if args.report_only:
        table = write_report(grid, extra, out_dir, command)
        if table:
            print(table)
        return 0

    # 1. Check every cell as `fedlab run` would, before any run starts.
    valid, invalid = validate_cells(cells)
    if invalid:
        reasons = Counter(error for _, error in invalid)
        print(f"warning: {len(invalid)} of {len(cells)} cells have an invalid run config and are skipped:", file=sys.stderr)
        for error, count in reasons.items():
            print(f"  {count} cells: {error}", file=sys.stderr)
    problems = check_data_roots(grid, valid)
    if problems and not args.dry_run:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2

    # 2. Work out what is left and how long it should take.
    results_path = out_dir / RESULTS_FILE
    try:
        frame = read_results(results_path)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.reuse:
        try:
            frame, counts = reuse_rows(valid, frame, [reuse_source(item) for item in args.reuse])
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for source, count in counts.items():
            print(f"reused {count} finished cells from {project_relative(source)}")
        if sum(counts.values()) and not args.dry_run:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_results(results_path, frame, list(valid[0].coordinates))
    pending, _, _ = pending_cells(valid, frame, args.retry_failed)
    pending_ids = {cell.cell_id for cell in pending}
    done = [cell for cell in valid if cell.cell_id not in pending_ids]
    estimated = {cell.cell_id: cell for cell in add_autoencoder_estimates(grid, pending, done)}
    valid = [estimated.get(cell.cell_id, cell) for cell in valid]
    total = sum(cell.estimate_seconds for cell in estimated.values())
    print(f"grid {grid.name!r}: {len(valid)} cells ({len(grid.methods)} methods x {len(grid.datasets)} datasets x "
          f"{len(grid.models)} models x {len(grid.partitions)} partitions x {len(grid.clients)} client counts x "
          f"{len(grid.seeds)} seeds)")
    print(f"results: {project_relative(results_path)}; runs: {project_relative(runs_dir)}; "
          f"autoencoder cache: {project_relative(cache_dir)}")
    if args.dry_run:
        if not pending:
            print("every cell is already in the results; nothing to run")
        else:
            print(f"estimated total for the {len(pending)} cells to run: "
                  + (format_duration(total) if total else "no estimate (the grid gives no estimate-seconds)"))
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
        for index, cell in enumerate(estimated.values(), start=1):
            argv_ = fedlab_argv(cell.run_config, output_dir=project_relative(runs_dir),
                                ae_cache_dir=project_relative(cache_dir),
                                federation_config=grid.federation_config)
            print(f"[{index}/{len(pending)}] ~{format_duration(cell.estimate_seconds)} {cell.label()}")
            print(f"    {display_command(argv_)}")
        return 0

    # 3. Run, then write the table and plots even when some cells failed.
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # SIGTERM stops the sweep like Ctrl-C: the running cell's `fedlab run` is stopped with it.
    with signals_raise_system_exit():
        summary = run_cells(
            valid,
            results_path,
            runner=runner or fedlab_runner(timeout=args.cell_timeout),
            output_dir=project_relative(runs_dir),
            ae_cache_dir=project_relative(cache_dir),
            federation_config=grid.federation_config,
            retry_failed=args.retry_failed,
        )
    print(f"ran {summary.ran} cells in {format_duration(time.perf_counter() - started)}, {summary.failed} failed")
    table = write_report(grid, extra, out_dir, command)
    if table:
        print(table)
    return 1 if summary.failed or invalid else 0


if __name__ == "__main__":
    sys.exit(main())
