"""Windowed dispatch: keep at most a fixed number of messages in flight in a simulation.

In a simulation, the ServerApp and the clients share Flower's in-memory LinkState. Ten
times a second, Flower 1.42's simulation engine requests the next message of every node from
that state (``vce_api.add_messages_to_queue``). Each request scans all stored messages
(``InMemoryLinkState.get_message_ins``), so one pass costs the number of nodes times the
number of stored messages. With one message pushed to each of 1,000 nodes at once, the
simulation process used 405 s of CPU in 28 minutes on a 2-core machine, against 240 s for
both client actors together, and the run had not finished (``benchmarks/scale.py``).
Sending the next message only when a reply arrives keeps the stored messages at the window
size, and the cost of a pass falls by the same factor. A window of 64 still left that thread
busy most of the time at 1,000 nodes, so the automatic window is two messages per CPU of the
Ray cluster plus two: enough to keep every actor of at least one CPU fed.

The deployment engine stores messages in the SuperLink, and each SuperNode requests only its
own, so :func:`windowed` leaves other grids unchanged.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run

logger = logging.getLogger(__name__)

#: Seconds between pulls for replies while messages are in flight.
POLL_SECONDS = 0.1
#: Window used when ``max-in-flight`` is 0 and the Ray cluster's size cannot be read.
FALLBACK_WINDOW = 64
#: Seconds a simulation grid waits, when it first sends, for Flower to start Ray.
RAY_START_WAIT_SECONDS = 60.0


def ray_cluster_cpus(wait_seconds: float = 0.0, poll_seconds: float = POLL_SECONDS) -> int | None:
    """Return the CPU count of the Ray cluster this process drives, or None if Ray is not up.

    In a simulation the ServerApp shares its process with the Ray driver, and Flower imports
    and starts Ray in another thread while the ServerApp already runs. The ``ray`` module may
    therefore be missing, half imported (its functions not yet defined), or imported but not
    initialised. This waits up to `wait_seconds` for a started cluster and never imports Ray
    itself.
    """
    deadline = time.monotonic() + wait_seconds
    while True:
        ray = sys.modules.get("ray")
        is_initialized = getattr(ray, "is_initialized", None)
        cluster_resources = getattr(ray, "cluster_resources", None)
        if is_initialized is not None and cluster_resources is not None and is_initialized():
            cpus = int(cluster_resources().get("CPU", 0))
            if cpus > 0:
                return cpus
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_seconds)


def auto_window(wait_seconds: float = 0.0) -> int:
    """Return two messages per CPU of the Ray cluster this process drives, plus two.

    Flower gives every actor at least one CPU, so this keeps one message running and one
    waiting for every actor. When no started Ray cluster is found within `wait_seconds`
    (:func:`ray_cluster_cpus`), it returns ``FALLBACK_WINDOW``.
    """
    cpus = ray_cluster_cpus(wait_seconds)
    return FALLBACK_WINDOW if cpus is None else 2 * cpus + 2


def exchange(
    grid: Grid,
    messages: Sequence[Message],
    window: int,
    deadline: float,
    poll_seconds: float = POLL_SECONDS,
) -> Iterator[Message]:
    """Push `messages` with at most `window` in flight and yield each reply as it arrives.

    A message is pushed when an earlier one gets its reply. At ``time.monotonic() >= deadline``
    the exchange stops, and messages still waiting are never pushed. `window` 0 or less
    pushes every message at once.
    """
    window = len(messages) if window <= 0 else window
    logger.info("Sending %s messages with at most %s in flight", len(messages), window)
    next_index = 0
    pending: set[str] = set()

    def push_more() -> None:
        nonlocal next_index
        free = window - len(pending)
        if free <= 0 or next_index >= len(messages):
            return
        batch = messages[next_index : next_index + free]
        next_index += len(batch)
        pending.update(grid.push_messages(batch))

    push_more()
    while pending:
        for reply in grid.pull_messages(list(pending)):
            pending.discard(reply.metadata.reply_to_message_id)
            yield reply
        if time.monotonic() >= deadline:
            break
        push_more()
        if pending:
            time.sleep(poll_seconds)
    unsent = len(messages) - next_index
    if unsent:
        logger.warning("Stopped before sending %s of %s messages: the deadline passed", unsent, len(messages))


def is_simulation_grid(grid: Grid) -> bool:
    """Return whether `grid` is the in-memory grid of Flower's simulation engine."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    return isinstance(grid, InMemoryGrid)


class WindowedGrid(Grid):
    """A grid whose ``send_and_receive`` keeps at most `window` messages in flight.

    Every other method goes to the wrapped grid unchanged, so Flower strategies that call
    ``send_and_receive`` (FedAvg) get the window without changes. A `window` of 0 is chosen
    from the Ray cluster's CPUs when messages are first sent, because Flower may still be
    starting Ray when the grid is wrapped: the first send waits up to
    ``RAY_START_WAIT_SECONDS`` for it. The window is fixed once it has been read from Ray;
    until then each send uses ``FALLBACK_WINDOW``.
    """

    def __init__(self, grid: Grid, window: int, ray_wait_seconds: float = RAY_START_WAIT_SECONDS) -> None:
        self.inner = grid
        self._window = window
        self._ray_wait_seconds = ray_wait_seconds

    @property
    def window(self) -> int:
        """Messages kept in flight, fixed once read from Ray when chosen automatically."""
        if self._window > 0:
            return self._window
        cpus = ray_cluster_cpus(wait_seconds=self._ray_wait_seconds)
        if cpus is None:
            self._ray_wait_seconds = 0.0  # Later sends do not wait, because this one already did.
            logger.warning("Ray is not running in this process; sending with at most %s messages in flight",
                           FALLBACK_WINDOW)
            return FALLBACK_WINDOW
        self._window = 2 * cpus + 2
        return self._window

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        deadline = float("inf") if timeout is None else time.monotonic() + timeout
        return list(exchange(self.inner, list(messages), self.window, deadline))


def windowed(grid: Grid, max_in_flight: int) -> Grid:
    """Wrap a simulation grid in :class:`WindowedGrid`; return any other grid unchanged.

    `max_in_flight` is the run-config value: 0 chooses the window automatically, and a
    negative value sends every message at once.
    """
    if max_in_flight < 0 or isinstance(grid, WindowedGrid) or not is_simulation_grid(grid):
        return grid
    return WindowedGrid(grid, max_in_flight)
