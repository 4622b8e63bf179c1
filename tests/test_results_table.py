"""Which rows of the README's results table `benchmarks/results_table.py` measures."""

from __future__ import annotations

from benchmarks.results_table import ROWS, git_commit, row_command, rows_to_run, table_lines


def recorded(names: list[str]) -> dict[str, dict]:
    by_name = dict(ROWS)
    return {name: {"name": name, "command": row_command(by_name[name])} for name in names}


def test_missing_rows_run_and_recorded_rows_are_skipped() -> None:
    first, second = ROWS[0][0], ROWS[1][0]
    todo = [name for name, _ in rows_to_run(recorded([first, second]))]
    assert first not in todo
    assert second not in todo
    assert len(todo) == len(ROWS) - 2


def test_row_with_changed_command_runs_again() -> None:
    name = ROWS[0][0]
    done = {name: {"name": name, "command": "fedlab run --clients 10 --run-config \"ipc=5\""}}
    assert name in [row for row, _ in rows_to_run(done)]


def test_rerun_measures_recorded_rows_again_within_only() -> None:
    done = recorded([name for name, _ in ROWS])
    assert rows_to_run(done) == []
    again = rows_to_run(done, only="fedsd2c", rerun=True)
    assert [name for name, _ in again] == [name for name, _ in ROWS if "FedSD2C" in name]
    assert len(again) == 3


def test_commit_names_a_revision() -> None:
    commit = git_commit()
    assert commit == "unknown" or len(commit.removesuffix("+changes")) == 40


def test_table_marks_missing_downloads() -> None:
    (first, first_overrides), (second, second_overrides) = ROWS[0], ROWS[1]
    measured = {
        "name": first, "command": row_command(first_overrides), "test_accuracy": 0.94,
        "upload_bytes_per_client": 35782.4, "download_bytes_per_client": 726947.0,
        "model_bytes": 1242418, "wall_seconds": 310.2,
    }
    older = {
        "name": second, "command": row_command(second_overrides), "test_accuracy": 0.54,
        "upload_bytes_per_client": 1242805.0, "model_bytes": 1242418, "wall_seconds": 117.0,
    }
    header, _, *rows = table_lines({first: measured, second: older})
    assert "download per client (bytes)" in header
    assert rows[0].startswith(f"| {first} | 0.9400 | 35782 | 726947 | 1242418 | 310 |")
    assert rows[1].startswith(f"| {second} | 0.5400 | 1242805 | n/a | 1242418 | 117 |")
    assert len(rows) == 2
