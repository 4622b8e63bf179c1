"""Tests of the heterogeneity benchmark suite: grids, cell identity, resume, table, plots, configs."""

from __future__ import annotations

import contextlib
import json
import math
import shlex
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from benchmarks import heterogeneity, report
from benchmarks.grid import GridError, grid_names, load_grid, parse_grid, validate_cells
from benchmarks.suite import (
    FAILED,
    OK,
    RESULT_COLUMNS,
    Cell,
    CellFailed,
    cell_identity,
    display_command,
    fedlab_argv,
    format_duration,
    read_results,
    run_cells,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent

# Two methods x one dataset x (two alphas + IID) x one client count x two seeds = 12 cells.
SMALL_GRID: dict[str, Any] = {
    "description": "test grid",
    "clients": [3],
    "seeds": [0, 1],
    "run-config": {"model-width": 8, "local-epochs": 1},
    "methods": [
        {"name": "FedAvg one-shot", "run-config": {"strategy": "fedavg", "num-server-rounds": 1},
         "estimate-seconds": 10},
        {"name": "Ensemble", "run-config": {"strategy": "ensemble", "local-epochs": 2},
         "estimate-seconds": {"digits": 20}},
    ],
    "datasets": [{"name": "digits", "run-config": {"ae-downsample": 2}, "autoencoder-seconds": 5}],
    "partitions": [
        {"partitioner": "dirichlet", "alpha": [0.1, 1], "label": "alpha={alpha}"},
        {"partitioner": "iid", "label": "IID"},
    ],
}


def small_grid(**changes: Any):
    return parse_grid({**SMALL_GRID, **changes}, name="small")


def fake_results(cell: Cell, accuracy: float | None = None) -> dict[str, Any]:
    """A results.json as a finished run writes it, with an accuracy derived from the cell."""
    alpha = cell.coordinates["alpha"] or 10.0
    return {
        "test_accuracy": accuracy if accuracy is not None else 0.5 + 0.04 * math.log10(alpha) + 0.01 * cell.coordinates["seed"],
        "upload_bytes_per_client": 1000.0 * (1 + (cell.coordinates["method"] == "Ensemble")),
        "download_bytes_per_client": 7000.0,
        "model_bytes": 5000,
        "wall_seconds": 12.34,
        "failed_clients": [{"node_id": 1, "reason": "timeout"}],
        "heterogeneity": {
            "mean_label_emd": 0.4, "max_label_emd": 0.7, "mean_classes_per_client": 3.5, "size_cv": 0.2,
            "feature_skew": "none", "feature_skew_strength": 0.0, "feature_skew_mean_level": 0.0,
        },
        "run_dir": "/tmp/run",
    }


class FakeRunner:
    """Records the cells it is asked to run; fails the cells whose method is in `fail`."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.calls: list[tuple[Cell, list[str]]] = []
        self.fail = fail

    def __call__(self, cell: Cell, argv: list[str]) -> dict[str, Any]:
        self.calls.append((cell, argv))
        if cell.coordinates["method"] in self.fail:
            raise CellFailed("fedlab run exited with status 1: error: boom")
        return fake_results(cell)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 5.0
        return self.now


# ---------------------------------------------------------------------------
# Grid expansion and cell identity
# ---------------------------------------------------------------------------


def test_grid_expands_every_axis() -> None:
    cells = small_grid().cells()

    assert len(cells) == 2 * 3 * 2
    coordinates = {(c.coordinates["method"], c.coordinates["partition"], c.coordinates["seed"]) for c in cells}
    assert len(coordinates) == 12
    assert {c.coordinates["partition"] for c in cells} == {"alpha=0.1", "alpha=1", "IID"}
    # Seeds are the outer loop, so a partial sweep covers every method and partition once.
    assert [c.coordinates["seed"] for c in cells[:6]] == [0] * 6


def test_grid_cell_run_config_precedence() -> None:
    cells = small_grid().cells({"data-root": "/data"})
    ensemble_iid = next(c for c in cells if c.coordinates["method"] == "Ensemble" and c.coordinates["partition"] == "IID")

    assert ensemble_iid.run_config["local-epochs"] == 2  # the method wins over the grid
    assert ensemble_iid.run_config["ae-downsample"] == 2  # dataset settings apply
    assert ensemble_iid.run_config["partitioner"] == "iid"
    assert "alpha" not in ensemble_iid.run_config
    assert ensemble_iid.coordinates["alpha"] is None
    assert ensemble_iid.run_config["data-root"] == "/data"
    assert ensemble_iid.run_config["num-clients"] == 3
    assert ensemble_iid.coordinates["strategy"] == "ensemble"


def test_grid_method_by_dataset_overrides() -> None:
    methods = [
        {"name": "FedAvg 10 rounds", "run-config": {"strategy": "fedavg", "local-epochs": 2},
         "by-dataset": {"digits": {"local-epochs": 8}}},
    ]
    datasets = [{"name": "digits", "run-config": {"local-epochs": 40}}, {"name": "mnist"}]

    cells = small_grid(methods=methods, datasets=datasets).cells()

    epochs = {c.coordinates["dataset"]: c.run_config["local-epochs"] for c in cells}
    assert epochs == {"digits": 8, "mnist": 2}


def test_grid_estimate_scales_with_clients() -> None:
    cells = small_grid(clients=[10, 20]).cells()
    by_clients = {c.num_clients: c.estimate_seconds for c in cells if c.coordinates["method"] == "Ensemble"}

    assert by_clients[10] == pytest.approx(20.0)
    assert by_clients[20] == pytest.approx(30.0)


def test_cell_identity_ignores_key_order_and_paths() -> None:
    first = cell_identity({"strategy": "fedavg", "alpha": 0.1})
    assert first == cell_identity({"alpha": 0.1, "strategy": "fedavg"})
    assert first == cell_identity({"alpha": 0.1, "strategy": "fedavg", "output-dir": "/elsewhere"})
    assert first != cell_identity({"alpha": 0.5, "strategy": "fedavg"})
    assert first != cell_identity({"alpha": 0.1, "strategy": "fedavg", "model-width": 8})


def test_grid_alpha_int_and_float_same_cell() -> None:
    as_int = small_grid(partitions=[{"partitioner": "dirichlet", "alpha": 1}]).cells()
    as_float = small_grid(partitions=[{"partitioner": "dirichlet", "alpha": 1.0}]).cells()

    assert [c.cell_id for c in as_int] == [c.cell_id for c in as_float]
    assert as_int[0].run_config["alpha"] == 1.0
    assert isinstance(as_int[0].run_config["alpha"], float)
    assert isinstance(as_int[0].run_config["num-clients"], int)


def test_cell_rejects_path_keys() -> None:
    with pytest.raises(ValueError, match="output-dir"):
        Cell(coordinates={}, run_config={"output-dir": "x"})


def test_validate_cells_reports_unknown_strategy() -> None:
    grid = small_grid(methods=[{"name": "Nope", "run-config": {"strategy": "no-such-method"}}])

    valid, invalid = validate_cells(grid.cells())

    assert valid == []
    assert len(invalid) == 6
    assert "no-such-method" in invalid[0][1]
    assert "fedavg" in invalid[0][1]  # the message lists the valid names


def test_grid_restrict_changes_axes() -> None:
    grid = small_grid().restrict(clients=[5, 10, 20], seeds=[7], methods=["ensemble"])

    cells = grid.cells()

    assert {c.num_clients for c in cells} == {5, 10, 20}
    assert {c.coordinates["seed"] for c in cells} == {7}
    assert {c.coordinates["method"] for c in cells} == {"Ensemble"}
    with pytest.raises(GridError, match="no method 'FedSD2C'"):
        small_grid().restrict(methods=["FedSD2C"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"seeds": []}, "'seeds' is missing or empty"),
        ({"clients": [0]}, "at least 1"),
        ({"methods": [{"name": "X", "run-config": {"alpha": 0.1}}]}, "must set 'strategy'"),
        ({"methods": [{"name": "X", "run-config": {"strategy": "fedavg", "seed": 3}}]}, "'seeds' lists"),
        ({"run-config": {"output-dir": "x"}}, "set by the sweep"),
        ({"partitions": [{"partitioner": "dirichlet", "alpha": [0.1], "label": "{beta}"}]}, "names a key"),
        ({"partitions": [{"alpha": [0.1]}]}, "'partitioner' is missing"),
        ({"datasets": [{"name": "digits"}, {"name": "digits"}]}, "must be unique"),
        ({"federation-config": {"num-supernodes": 3}}, "num-supernodes"),
        ({"methods": [{"name": "X", "run-config": {"strategy": "fedavg"}, "by-dataset": {"mnist": {"ipc": 2}}}]},
         "by-dataset entries for 'mnist'"),
        ({"methods": [{"name": "X", "run-config": {"strategy": "fedavg"}, "by-dataset": {"digits": 3}}]},
         "by-dataset.digits"),
    ],
)
def test_grid_rejects_malformed_file(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(GridError, match=message):
        small_grid(**changes)


def test_load_grid_unknown_name_lists_grids() -> None:
    with pytest.raises(GridError, match="quick"):
        load_grid("no-such-grid")


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


def test_command_reproduces_argv() -> None:
    run_config = {"strategy": "fedavg", "alpha": 0.1, "data-root": "/data/my set", "num-clients": 4, "seed": 1}
    argv = fedlab_argv(run_config, output_dir="outputs/x", ae_cache_dir="outputs/cache",
                       federation_config={"client-resources-num-gpus": 0.25})

    command = display_command(argv)
    words = shlex.split(command)

    assert words[1:] == [word for word in argv[1:] if word != "--quiet"]
    assert words[:4] == [words[0], "run", "--clients", "4"]
    assert "strategy='fedavg' alpha=0.1 data-root='/data/my set' seed=1 output-dir='outputs/x'" in command
    assert "--federation-config \"client-resources-num-gpus=0.25\"" in command
    assert "num-clients" not in command  # passed as --clients


def test_command_parses_as_fedlab_config() -> None:
    from fedlab.cli import resolve_run_config

    run_config = {"strategy": "ensemble", "dataset": "digits", "alpha": 0.3, "privacy-report": False, "num-clients": 3}
    argv = fedlab_argv(run_config)

    config, _ = resolve_run_config(PROJECT_DIR, [argv[argv.index("--run-config") + 1]], clients=3)

    assert config.strategy == "ensemble"
    assert config.dataset == "digits"
    assert config.alpha == 0.3
    assert config.privacy_report is False
    assert config.num_clients == 3


# ---------------------------------------------------------------------------
# The sweep: CSV, resume, failures
# ---------------------------------------------------------------------------


def sweep(tmp_path: Path, runner: FakeRunner, cells: list[Cell] | None = None, **kwargs: Any):
    lines: list[str] = []
    summary = run_cells(
        cells if cells is not None else small_grid().cells(),
        tmp_path / "runs.csv",
        runner=runner,
        output_dir="outputs/test",
        ae_cache_dir="outputs/cache",
        echo=lines.append,
        clock=FakeClock(),
        **kwargs,
    )
    return summary, lines


def test_sweep_writes_one_row_per_cell(tmp_path: Path) -> None:
    runner = FakeRunner()

    summary, _ = sweep(tmp_path, runner)

    frame = read_results(tmp_path / "runs.csv")
    assert summary.ran == 12
    assert len(frame) == 12
    assert set(frame["status"]) == {OK}
    expected = {"cell_id", "status", "method", "strategy", "dataset", "model", "partition", "partitioner",
                "alpha", "num_clients", "seed", *RESULT_COLUMNS, "error", "run_dir", "command", "date", "machine"}
    assert expected <= set(frame.columns)
    assert list(frame.columns[:3]) == ["cell_id", "status", "method"]
    row = frame.iloc[0]
    assert row["failed_clients"] == 1
    assert row["mean_label_emd"] == pytest.approx(0.4)
    assert row["run_seconds"] == pytest.approx(12.3)
    assert row["wall_seconds"] == pytest.approx(5.0)  # one tick of the fake clock
    assert row["command"].startswith(".venv/bin/fedlab run --clients 3 --run-config")
    assert "output-dir='outputs/test'" in row["command"]


def test_sweep_resume_skips_done_cells(tmp_path: Path) -> None:
    cells = small_grid().cells()
    first = FakeRunner()
    sweep(tmp_path, first, cells[:5])

    second = FakeRunner()
    summary, lines = sweep(tmp_path, second, cells)

    assert summary.already_done == 5
    assert summary.ran == 7
    assert {cell.cell_id for cell, _ in second.calls} == {cell.cell_id for cell in cells[5:]}
    assert len(read_results(tmp_path / "runs.csv")) == 12
    assert "12 cells: 5 already done, 0 failed earlier, 7 to run" in lines[0]


def test_sweep_runs_duplicate_cells_once(tmp_path: Path) -> None:
    cells = small_grid().cells()
    runner = FakeRunner()

    summary, _ = sweep(tmp_path, runner, cells + cells[:3])

    assert summary.total == 12
    assert len(runner.calls) == 12


def test_sweep_records_failures_and_continues(tmp_path: Path) -> None:
    runner = FakeRunner(fail=("Ensemble",))

    summary, lines = sweep(tmp_path, runner)

    frame = read_results(tmp_path / "runs.csv")
    failed = frame[frame["status"] == FAILED]
    assert summary.failed == 6
    assert len(failed) == 6
    assert set(failed["method"]) == {"Ensemble"}
    assert failed["error"].str.contains("boom").all()
    assert failed["command"].str.contains("strategy='ensemble'").all()
    assert failed["test_accuracy"].isna().all()
    assert any("FAILED: fedlab run exited with status 1: error: boom" in line for line in lines)


def test_sweep_retries_failed_only_when_asked(tmp_path: Path) -> None:
    sweep(tmp_path, FakeRunner(fail=("Ensemble",)))

    again = FakeRunner()
    summary, _ = sweep(tmp_path, again)
    assert again.calls == []
    assert summary.skipped_failed == 6

    retry = FakeRunner()
    summary, _ = sweep(tmp_path, retry, retry_failed=True)
    frame = read_results(tmp_path / "runs.csv")
    assert len(retry.calls) == 6
    assert len(frame) == 12  # failed rows are replaced, not duplicated
    assert set(frame["status"]) == {OK}


def test_sweep_progress_shows_eta(tmp_path: Path) -> None:
    _, lines = sweep(tmp_path, FakeRunner())

    assert any(line.startswith("estimated total for the 12 cells to run:") for line in lines)
    assert "[1/12] FedAvg one-shot | digits | alpha=0.1 | 3 clients | seed 0" in lines
    progress = [line for line in lines if "elapsed" in line]
    assert len(progress) == 12
    assert "ETA" in progress[0]
    assert "ETA" not in progress[-1]


def test_format_duration() -> None:
    assert format_duration(12.4) == "12s"
    assert format_duration(245) == "4m05s"
    assert format_duration(3720) == "1h02m"
    assert format_duration(float("nan")) == "unknown"


# ---------------------------------------------------------------------------
# Table and plots
# ---------------------------------------------------------------------------


def hand_made_rows() -> pd.DataFrame:
    rows = []
    for seed, accuracy in enumerate([0.8, 0.9, 1.0]):
        rows.append({"method": "A", "partition": "alpha=0.1", "seed": seed, "test_accuracy": accuracy})
    rows.append({"method": "A", "partition": "IID", "seed": 0, "test_accuracy": 0.95})
    rows.append({"method": "B", "partition": "alpha=0.1", "seed": 0, "test_accuracy": 0.5})
    rows.append({"method": "B", "partition": "alpha=0.1", "seed": 1, "test_accuracy": 0.7})
    rows.append({"method": "B", "partition": "IID", "seed": 0, "status": FAILED})
    frame = pd.DataFrame(rows)
    frame["status"] = frame.get("status").fillna(OK)
    return frame.assign(dataset="mnist", model="convnet", num_clients=10, upload_bytes_per_client=1000.0,
                        model_bytes=4000, wall_seconds=60.0)


def test_table_mean_and_sample_std() -> None:
    table = report.markdown_tables(hand_made_rows(), ["A", "B"], ["alpha=0.1", "IID"], expected_seeds=3)

    assert "#### mnist, convnet, 10 clients" in table
    assert "| method | alpha=0.1 | IID |" in table
    # A: mean 0.9, sample std 0.1 over three seeds; one IID seed, so no std and n=1.
    assert "| A | 0.900 ± 0.100 | 0.950 (n=1) |" in table
    # B: mean 0.6, sample std 0.141 over two seeds; its only IID run failed.
    assert "| B | 0.600 ± 0.141 (n=2) | failed |" in table


def test_single_partition_table_has_client_columns() -> None:
    frame = hand_made_rows()
    frame = frame[frame["partition"] == "alpha=0.1"]
    frame = pd.concat([frame.assign(num_clients=20, test_accuracy=frame["test_accuracy"] - 0.1), frame])

    table = report.markdown_tables(frame, ["A", "B"], ["alpha=0.1", "IID"], expected_seeds=3)

    assert table.count("####") == 1
    assert "#### mnist, convnet, alpha=0.1" in table
    assert "| method | 10 clients | 20 clients |" in table
    assert "| A | 0.900 ± 0.100 | 0.800 ± 0.100 |" in table
    assert "| B | 0.600 ± 0.141 (n=2) | 0.500 ± 0.141 (n=2) |" in table


def test_cost_table_counts_runs_and_failures() -> None:
    table = report.cost_table(hand_made_rows(), ["A", "B"])

    # The hand-made rows predate download bytes, so the download column is empty.
    assert "| A | mnist | 1.0 | 0.250 | - | 60 | 4 | 0 |" in table
    assert "| B | mnist | 1.0 | 0.250 | - | 60 | 2 | 1 |" in table


def test_cost_table_reports_downloads() -> None:
    frame = hand_made_rows()
    frame["download_bytes_per_client"] = 3000.0
    frame.loc[frame["method"] == "B", "download_bytes_per_client"] = None
    table = report.cost_table(frame, ["A", "B"])

    assert "| A | mnist | 1.0 | 0.250 | 3.0 | 60 | 4 | 0 |" in table
    assert "| B | mnist | 1.0 | 0.250 | - | 60 | 2 | 1 |" in table


def test_plots_are_written(tmp_path: Path) -> None:
    frame = hand_made_rows()
    frame = pd.concat([frame, frame.assign(num_clients=20, test_accuracy=frame["test_accuracy"] - 0.1)])

    paths = report.write_plots(frame, tmp_path, ["A", "B"], ["alpha=0.1", "IID"])

    assert set(paths) == {"alpha", "clients", "upload"}
    for path in paths.values():
        assert path.parent == tmp_path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 5000


@pytest.mark.parametrize(
    ("partitions", "ordered"),
    [(["alpha=0.1", "alpha=0.5", "IID"], True), (["IID", "rotation 0-90 deg"], False)],
)
def test_alpha_axis_only_for_label_skew(partitions: list[str], ordered: bool) -> None:
    assert report.is_alpha_axis(partitions) is ordered


# ---------------------------------------------------------------------------
# The command-line script, with a fake runner
# ---------------------------------------------------------------------------


def write_grid(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(
        'description = "tiny"\nclients = [3]\nseeds = [0, 1]\n'
        "[[methods]]\nname = \"FedAvg one-shot\"\nrun-config = { strategy = \"fedavg\" }\nestimate-seconds = 30\n"
        "[[methods]]\nname = \"FedSD2C\"\nrun-config = { strategy = \"fedsd2c\" }\nestimate-seconds = 60\n"
        "pretrains-autoencoder = true\n"
        "[[datasets]]\nname = \"digits\"\nrun-config = { ae-downsample = 2 }\nautoencoder-seconds = 100\n"
        "[[partitions]]\npartitioner = \"dirichlet\"\nalpha = [0.1, 0.5]\nlabel = \"alpha={alpha}\"\n"
    )
    return path


def run_script(tmp_path: Path, runner: Any, *extra: str) -> int:
    return heterogeneity.main(
        ["--grid", str(write_grid(tmp_path)), "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"),
         "--ae-cache-dir", str(tmp_path / "cache"), *extra],
        runner=runner,
    )


def test_script_writes_all_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runner = FakeRunner()

    assert run_script(tmp_path, runner) == 0

    out = tmp_path / "out"
    frame = pd.read_csv(out / "runs.csv")
    assert len(frame) == 8
    table = (out / "table.md").read_text()
    assert "| FedAvg one-shot |" in table
    assert "| FedSD2C |" in table
    assert "--out" in table  # the command that produced it
    for name in report.PLOT_FILES.values():
        assert (out / name).is_file()
    assert "[8/8]" in capsys.readouterr().out


def test_script_resumes_and_extends_clients(tmp_path: Path) -> None:
    run_script(tmp_path, FakeRunner())

    second = FakeRunner()
    assert run_script(tmp_path, second, "--clients", "3", "5") == 0

    assert {cell.num_clients for cell, _ in second.calls} == {5}
    assert len(second.calls) == 8
    table = (tmp_path / "out" / "table.md").read_text()
    assert "3 clients" in table
    assert "5 clients" in table

    # A later invocation without --clients still reports the recorded 5-client cells.
    assert run_script(tmp_path, FakeRunner()) == 0
    assert "5 clients" in (tmp_path / "out" / "table.md").read_text()


SWEEP_SCRIPT = """
import sys
from benchmarks import heterogeneity
from benchmarks.suite import run_fedlab

pid_file, grid, out = sys.argv[1:4]
child = "import os, time; open({!r}, 'w').write(str(os.getpid())); time.sleep(600)".format(pid_file)

def runner(cell, argv):
    return run_fedlab([sys.executable, "-c", child])

heterogeneity.main(["--grid", grid, "--out", out], runner=runner)
"""


def process_running(pid: int) -> bool:
    """Return whether `pid` is a live process; a zombie waiting to be reaped counts as stopped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_the_running_cell(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "cell.pid"
    sweep = subprocess.Popen(
        [sys.executable, "-c", SWEEP_SCRIPT, str(pid_file), str(write_grid(tmp_path)), str(tmp_path / "out")],
        cwd=PROJECT_DIR, env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            assert sweep.poll() is None, "the sweep exited before its first cell started"
            time.sleep(0.1)
        cell_pid = int(pid_file.read_text())

        sweep.send_signal(signal.SIGTERM)
        assert sweep.wait(timeout=60) != 0

        assert not process_running(cell_pid)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
        if pid_file.is_file() and pid_file.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_script_reuses_shared_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_script(tmp_path, FakeRunner(), "--seeds", "0")
    first = pd.read_csv(tmp_path / "out" / "runs.csv", dtype={"cell_id": str})
    capsys.readouterr()

    runner = FakeRunner()
    assert heterogeneity.main(
        ["--grid", str(write_grid(tmp_path)), "--out", str(tmp_path / "other"), "--runs-dir", str(tmp_path / "runs"),
         "--reuse", str(tmp_path / "out")],
        runner=runner,
    ) == 0

    # Seed 0's four cells come from the first file; only seed 1 runs.
    assert {cell.coordinates["seed"] for cell, _ in runner.calls} == {1}
    assert len(runner.calls) == 4
    assert "reused 4 finished cells" in capsys.readouterr().out
    second = pd.read_csv(tmp_path / "other" / "runs.csv", dtype={"cell_id": str})
    assert len(second) == 8
    copied = second[second["cell_id"].isin(first["cell_id"])]
    assert list(copied["command"]) == list(first["command"])


def test_script_reuse_skips_failed_rows(tmp_path: Path) -> None:
    run_script(tmp_path, FakeRunner(fail=("FedSD2C",)), "--seeds", "0")

    runner = FakeRunner()
    heterogeneity.main(
        ["--grid", str(write_grid(tmp_path)), "--out", str(tmp_path / "other"), "--runs-dir", str(tmp_path / "runs"),
         "--seeds", "0", "--reuse", str(tmp_path / "out" / "runs.csv")],
        runner=runner,
    )

    assert {cell.coordinates["method"] for cell, _ in runner.calls} == {"FedSD2C"}


def test_script_reuse_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runner = FakeRunner()

    assert run_script(tmp_path, runner, "--reuse", str(tmp_path / "nowhere.csv")) == 2

    assert runner.calls == []
    assert "nowhere.csv" in capsys.readouterr().err


def test_script_exits_nonzero_after_failures(tmp_path: Path) -> None:
    assert run_script(tmp_path, FakeRunner(fail=("FedSD2C",))) == 1
    assert (tmp_path / "out" / "table.md").is_file()
    assert run_script(tmp_path, FakeRunner()) == 0  # failed cells are skipped without --retry-failed


def test_script_dry_run_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runner = FakeRunner()

    assert run_script(tmp_path, runner, "--dry-run") == 0

    assert runner.calls == []
    assert not (tmp_path / "out" / "runs.csv").exists()
    out = capsys.readouterr().out
    # At 3 clients a cell takes 0.5 + 0.5 * 3 / 10 = 0.65 of its 10-client estimate: 4 FedAvg
    # cells at 19.5 s, 4 FedSD2C cells at 39 s, and 2 autoencoders (seeds 0 and 1) at 100 s.
    assert "estimated total for the 8 cells to run: 7m14s" in out
    assert out.count("fedlab run --clients 3") == 8


def test_script_dry_run_after_a_full_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_script(tmp_path, FakeRunner()) == 0
    capsys.readouterr()

    runner = FakeRunner()
    assert run_script(tmp_path, runner, "--dry-run") == 0

    assert runner.calls == []
    assert "every cell is already in the results; nothing to run" in capsys.readouterr().out


def test_autoencoder_estimate_once_per_seed(tmp_path: Path) -> None:
    grid = load_grid(str(write_grid(tmp_path)))
    cells, _ = validate_cells(grid.cells())

    estimated = heterogeneity.add_autoencoder_estimates(grid, cells, done=[])
    with_pretraining = [c for c in estimated if c.estimate_seconds > 60 * 0.65 + 1e-9 and c.coordinates["method"] == "FedSD2C"]

    assert [c.coordinates["seed"] for c in with_pretraining] == [0, 1]
    assert [c.coordinates["partition"] for c in with_pretraining] == ["alpha=0.1", "alpha=0.1"]
    first_seed = [c for c in cells if c.coordinates["seed"] == 0]
    assert heterogeneity.add_autoencoder_estimates(grid, cells[len(first_seed):], done=first_seed)[1].estimate_seconds \
        == pytest.approx(cells[1].estimate_seconds + 100)


def test_script_rejects_unknown_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert heterogeneity.main(["--grid", "no-such-grid", "--out", str(tmp_path)], runner=FakeRunner()) == 2
    assert "unknown grid 'no-such-grid'" in capsys.readouterr().err


def test_script_requires_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runner = FakeRunner()

    code = heterogeneity.main(["--grid", "paper-imagenette", "--out", str(tmp_path)], runner=runner)

    assert code == 2
    assert runner.calls == []
    assert "data-root is empty" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Named configs
# ---------------------------------------------------------------------------


def test_named_grids_exist() -> None:
    assert {"default", "quick", "paper-imagenette", "paper-tinyimagenet"} <= set(grid_names())


@pytest.mark.parametrize("name", grid_names())
def test_named_grid_cells_valid(name: str) -> None:
    from fedlab.cli import app_defaults
    from fedlab.config import RunConfig

    grid = load_grid(name)
    cells = grid.cells({"data-root": "/data"} if any(d.needs_data_root for d in grid.datasets) else None)

    valid, invalid = validate_cells(cells)

    assert invalid == []
    assert len(valid) == len(cells) == len({cell.cell_id for cell in cells})
    for cell in valid:
        config = RunConfig.from_run_config({**app_defaults(PROJECT_DIR), **cell.run_config})
        assert config.num_clients == cell.num_clients


@pytest.mark.parametrize(("name", "shared"), [("default", 45), ("clients", 15)])
def test_grid_shares_mnist_cells(name: str, shared: int) -> None:
    # --reuse mnist relies on these grids running the mnist grid's cells with equal settings.
    mnist = {cell.cell_id for cell in load_grid("mnist").cells()}

    ids = {cell.cell_id for cell in load_grid(name).cells()}

    assert len(ids & mnist) == shared


def test_skew_grid_shares_default_iid_cells() -> None:
    # --reuse default copies the skew grid's IID cells: 5 methods x 3 seeds.
    default = {cell.cell_id for cell in load_grid("default").cells()}
    skew = load_grid("skew").cells()

    shared = [cell for cell in skew if cell.cell_id in default]

    assert len(shared) == 15
    assert {cell.coordinates["partition"] for cell in shared} == {"IID"}


def test_default_grid_axes() -> None:
    grid = load_grid("default")

    assert [m.run_config["strategy"] for m in grid.methods] == [
        "fedsd2c", "fedavg", "fedavg", "ensemble", "dense", "coboosting"]
    assert [d.name for d in grid.datasets] == ["mnist", "digits"]
    assert [p.label for p in grid.partitions] == [
        "alpha=0.05", "alpha=0.1", "alpha=0.3", "alpha=0.5", "alpha=1.0", "IID"]
    assert grid.clients == (10,)
    assert grid.seeds == (0, 1, 2)
    assert grid.dataset("digits").run_config["ae-downsample"] == 2


def write_image(path: Path, size: int, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def write_imagenette(root: Path) -> None:
    for split, count in (("train", 4), ("val", 2)):
        for label, wnid in enumerate(("n01440764", "n02102040")):
            for i in range(count):
                write_image(root / split / wnid / f"{wnid}_{i}.JPEG", 40, (40 * label + 10 * i, 90, 160))


def write_tinyimagenet(root: Path) -> None:
    wnids = ["n01443537", "n01629819"]
    (root).mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations = []
    for label, wnid in enumerate(wnids):
        for i in range(4):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", 64, (60 * label, 20 * i, 200))
        name = f"val_{label}.JPEG"
        write_image(root / "val" / "images" / name, 64, (60 * label, 0, 200))
        annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


@pytest.mark.parametrize("name", ["paper-imagenette", "paper-tinyimagenet"])
def test_paper_config_trains_one_step(tmp_path: Path, name: str) -> None:
    """Load the paper setting's dataset from a tiny tree, build each model and take one SGD step."""
    import torch

    from fedlab.cli import app_defaults
    from fedlab.config import RunConfig
    from fedlab.data import load_dataset
    from fedlab.models import build_model
    from fedlab.training import seeded_generator, train_classifier

    grid = load_grid(name)
    dataset = grid.datasets[0].name
    (write_imagenette if dataset == "imagenette" else write_tinyimagenet)(tmp_path)
    cells, invalid = validate_cells(grid.cells({"data-root": str(tmp_path)}))
    assert invalid == []

    for model_entry in grid.models:
        cell = next(c for c in cells if c.coordinates["model"] == model_entry.name)
        config = RunConfig.from_run_config({**app_defaults(PROJECT_DIR), **cell.run_config})
        bundle = load_dataset(config.dataset, config.data_root, config.image_size)
        assert bundle.train.image_shape == (3, config.image_size, config.image_size)
        assert bundle.test is not None
        assert len(bundle.test) > 0

        torch.manual_seed(config.seed)
        model = build_model(config.model, 3, bundle.train.num_classes, config.image_size,
                            width=config.model_width, depth=config.model_depth)
        # One SGD step on one image of each class keeps ResNet-18 at 128 px fast on a CPU.
        first_of_class = [int((bundle.train.labels == label).nonzero()[0]) for label in (0, 1)]
        images = bundle.train.float_images(first_of_class)
        loss = train_classifier(model, images, bundle.train.labels[first_of_class], epochs=1,
                                lr=config.local_lr, batch_size=len(images),
                                weight_decay=config.local_weight_decay, generator=seeded_generator(config.seed))
        assert math.isfinite(loss)


# ---------------------------------------------------------------------------
# One real cell through `fedlab run`
# ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_script_runs_real_cell(tmp_path: Path) -> None:
    path = tmp_path / "real.toml"
    path.write_text(
        'description = "one real cell"\nclients = [3]\nseeds = [0]\n'
        # Digits clients need many local epochs to fit; 30 epochs of about 420 images take seconds.
        "[run-config]\nmodel-width = 16\nlocal-epochs = 30\nnode-wait-seconds = 60.0\n"
        "[[methods]]\nname = \"Ensemble\"\nrun-config = { strategy = \"ensemble\" }\n"
        "[[datasets]]\nname = \"digits\"\n"
        "[[partitions]]\npartitioner = \"iid\"\nlabel = \"IID\"\n"
    )
    out = tmp_path / "out"

    code = heterogeneity.main(["--grid", str(path), "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
                               "--ae-cache-dir", str(tmp_path / "cache"), "--cell-timeout", "600"])

    frame = pd.read_csv(out / "runs.csv")
    assert code == 0, frame.get("error")
    row = frame.iloc[0]
    assert row["status"] == OK
    assert row["test_accuracy"] > 0.5  # chance is 0.1
    assert row["upload_bytes_per_client"] > 0
    assert row["download_bytes_per_client"] > row["model_bytes"]  # one model per client
    assert row["failed_clients"] == 0
    assert row["mean_label_emd"] < 0.2  # IID
    results = json.loads(Path(row["run_dir"], "results.json").read_text())
    assert results["strategy"] == "ensemble"
    assert (out / "table.md").is_file()
