"""Which rows of the README's results table `benchmarks/results_table.py` measures."""

from __future__ import annotations

from benchmarks.results_table import ROWS, git_commit, row_command, rows_to_run


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
    assert len(again) == 2


def test_commit_names_a_revision() -> None:
    commit = git_commit()
    assert commit == "unknown" or len(commit.removesuffix("+changes")) == 40
