"""Tests of the windowed dispatch of messages in a simulation."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedlab import dispatch
from fedlab.dispatch import FALLBACK_WINDOW, WindowedGrid, auto_window, exchange, windowed


class FakeGrid:
    """A grid whose clients reply to the `replies_per_pull` oldest pending messages per pull."""

    def __init__(self, replies_per_pull: int = 2) -> None:
        self.replies_per_pull = replies_per_pull
        self.pending: list[str] = []
        self.pushed: list[object] = []
        self.max_pending = 0

    def push_messages(self, messages):
        ids = []
        for message in messages:
            self.pushed.append(message)
            ids.append(f"m{len(self.pushed) - 1}")
        self.pending.extend(ids)
        self.max_pending = max(self.max_pending, len(self.pending))
        return ids

    def pull_messages(self, message_ids):
        wanted = set(message_ids)
        answered = [mid for mid in self.pending if mid in wanted][: self.replies_per_pull]
        for mid in answered:
            self.pending.remove(mid)
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid, src_node_id=int(mid[1:])))
                for mid in answered]


def test_exchange_keeps_window() -> None:
    grid = FakeGrid(replies_per_pull=2)
    replies = list(exchange(grid, list(range(10)), window=3, deadline=float("inf"), poll_seconds=0))
    assert sorted(r.metadata.src_node_id for r in replies) == list(range(10))
    assert grid.max_pending == 3
    assert grid.pushed == list(range(10))


def test_exchange_without_window_pushes_all() -> None:
    grid = FakeGrid(replies_per_pull=4)
    replies = list(exchange(grid, list(range(10)), window=0, deadline=float("inf"), poll_seconds=0))
    assert len(replies) == 10
    assert grid.max_pending == 10


def test_exchange_window_larger_than_messages() -> None:
    grid = FakeGrid()
    replies = list(exchange(grid, list(range(3)), window=64, deadline=float("inf"), poll_seconds=0))
    assert len(replies) == 3
    assert grid.max_pending == 3


def test_exchange_stops_at_deadline() -> None:
    grid = FakeGrid(replies_per_pull=1)
    replies = list(exchange(grid, list(range(10)), window=2, deadline=time.monotonic() - 1, poll_seconds=0))
    # One pull happens, then the deadline stops the exchange; unsent messages stay unsent.
    assert len(replies) == 1
    assert grid.pushed == [0, 1]


def test_exchange_empty() -> None:
    grid = FakeGrid()
    assert list(exchange(grid, [], window=4, deadline=float("inf"), poll_seconds=0)) == []
    assert grid.pushed == []


def test_windowed_grid_send_and_receive() -> None:
    inner = FakeGrid(replies_per_pull=1)
    grid = WindowedGrid(inner, window=2)
    replies = list(grid.send_and_receive(list(range(5)), timeout=60))
    assert len(replies) == 5
    assert inner.max_pending == 2


def test_windowed_wraps_only_simulation_grids() -> None:
    other = FakeGrid()
    assert windowed(other, 8) is other

    simulation = InMemoryGrid.__new__(InMemoryGrid)  # no state needed to check the type
    wrapped = windowed(simulation, 8)
    assert isinstance(wrapped, WindowedGrid)
    assert wrapped.inner is simulation
    assert wrapped.window == 8
    assert windowed(wrapped, 8) is wrapped
    assert windowed(simulation, -1) is simulation


def fake_ray(cpus: float, initialized: bool = True) -> SimpleNamespace:
    return SimpleNamespace(is_initialized=lambda: initialized, cluster_resources=lambda: {"CPU": cpus})


def test_auto_window_from_ray_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch.sys.modules, "ray", fake_ray(2.0))
    assert auto_window() == 6
    monkeypatch.setitem(dispatch.sys.modules, "ray", fake_ray(64.0))
    assert auto_window() == 130


def test_auto_window_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch.sys.modules, "ray", fake_ray(2.0, initialized=False))
    assert auto_window() == FALLBACK_WINDOW
    monkeypatch.setitem(dispatch.sys.modules, "ray", fake_ray(0.0))
    assert auto_window() == FALLBACK_WINDOW
    monkeypatch.delitem(dispatch.sys.modules, "ray", raising=False)
    assert auto_window() == FALLBACK_WINDOW


def test_auto_window_with_a_half_imported_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread is still importing Ray: the module exists but has no functions yet.
    monkeypatch.setitem(dispatch.sys.modules, "ray", SimpleNamespace())
    assert auto_window() == FALLBACK_WINDOW


def test_first_send_waits_for_ray_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch.sys.modules, "ray", SimpleNamespace())
    starter = threading.Timer(0.3, lambda: dispatch.sys.modules.__setitem__("ray", fake_ray(1.0)))
    starter.start()
    try:
        grid = WindowedGrid(FakeGrid(replies_per_pull=1), window=0, ray_wait_seconds=30)
        assert len(list(grid.send_and_receive(list(range(6)), timeout=60))) == 6
    finally:
        starter.cancel()
    assert grid.window == 4
    assert grid.inner.max_pending == 4


def test_fallback_window_dropped_once_ray_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch.sys.modules, "ray", fake_ray(1.0, initialized=False))
    grid = WindowedGrid(FakeGrid(replies_per_pull=1), window=0, ray_wait_seconds=0.2)
    assert grid.window == FALLBACK_WINDOW
    monkeypatch.setitem(dispatch.sys.modules, "ray", fake_ray(3.0))
    assert grid.window == 8


def test_automatic_window_chosen_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(dispatch.sys.modules, "ray", fake_ray(1.0, initialized=False))
    grid = WindowedGrid(FakeGrid(replies_per_pull=1), window=0)
    # Ray starts after the grid is wrapped; the window is read when messages go out.
    monkeypatch.setitem(dispatch.sys.modules, "ray", fake_ray(1.0))
    assert len(list(grid.send_and_receive(list(range(6)), timeout=60))) == 6
    assert grid.window == 4
    assert grid.inner.max_pending == 4
