"""Server-side state of one run: nodes, messaging with failure and byte accounting, timers."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedlab.config import RunConfig
from fedlab.data import FederatedData
from fedlab.dispatch import POLL_SECONDS, WindowedGrid, exchange, windowed
from fedlab.models import Classifier, build_model
from fedlab.payload import (
    ARRAYS_KEY,
    PARTITION_ID,
    PayloadError,
    check_model_record,
    error_reason,
    record_bytes,
    reply_metrics,
)
from fedlab.training import evaluate_classifier, select_device

logger = logging.getLogger(__name__)


class NotEnoughRepliesError(RuntimeError):
    """Fewer clients replied successfully than the run needs (``min-replies``)."""


# Why a client is missing from the results.
FAILED, TIMED_OUT, REJECTED = "failed", "timed-out", "rejected"


@dataclass(frozen=True)
class ClientFailure:
    """A client whose reply was an error (failed), missing (timed out) or rejected."""

    node_id: int
    reason: str
    message_type: str
    kind: str = FAILED

    def to_json(self) -> dict[str, object]:
        return {"node_id": self.node_id, "kind": self.kind, "reason": self.reason,
                "message_type": self.message_type}

    @classmethod
    def from_json(cls, values: dict[str, object]) -> ClientFailure:
        return cls(int(values["node_id"]), str(values["reason"]), str(values["message_type"]),
                   str(values.get("kind", FAILED)))


# A check run on every successful reply before it is used; it raises PayloadError to reject.
ReplyCheck = Callable[[Message], None]


@dataclass
class ServerRun:
    """Everything a strategy needs from the platform during one run.

    `grid` is None when a run is resumed from stored uploads without any client.
    """

    grid: Grid | None
    config: RunConfig
    data: FederatedData
    output_dir: Path
    device: torch.device = field(default_factory=select_device)
    failures: list[ClientFailure] = field(default_factory=list)
    upload_bytes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    download_bytes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    node_partitions: dict[int, int] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    client_metrics: dict[int, dict[str, float | int]] = field(default_factory=dict)
    extra_results: dict[str, object] = field(default_factory=dict)
    poll_seconds: float = POLL_SECONDS
    _model_reference: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.grid is not None:
            self.grid = windowed(self.grid, self.config.max_in_flight)

    # Nodes -------------------------------------------------------------------------------

    def wait_for_nodes(self) -> list[int]:
        """Wait until `num-clients` nodes are connected and return their ids (sorted).

        Raises
        ------
        RuntimeError
            When fewer nodes connect within ``node-wait-seconds``, or more nodes than
            ``num-clients`` are connected (the partition count would not match).
        """
        grid = self._require_grid()
        expected = self.config.num_clients
        deadline = time.monotonic() + self.config.node_wait_seconds
        node_ids = sorted(grid.get_node_ids())
        while len(node_ids) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = sorted(grid.get_node_ids())
        if len(node_ids) < expected:
            raise RuntimeError(
                f"only {len(node_ids)} of num-clients={expected} nodes connected within "
                f"{self.config.node_wait_seconds:.0f} s; start more SuperNodes, raise "
                "node-wait-seconds, or set num-clients to the federation's num-supernodes"
            )
        if len(node_ids) > expected:
            raise RuntimeError(
                f"{len(node_ids)} nodes are connected but num-clients={expected}; set "
                f"num-clients={len(node_ids)} (it must equal the federation's num-supernodes)"
            )
        logger.info("%s nodes connected", len(node_ids))
        return node_ids

    def _require_grid(self) -> Grid:
        if self.grid is None:
            raise RuntimeError("this server run was resumed from stored uploads and has no clients")
        return self.grid

    # Messaging ---------------------------------------------------------------------------

    def send_and_collect(
        self,
        node_ids: Sequence[int],
        message_type: str,
        content_for: Callable[[int], RecordDict],
        check: ReplyCheck | None = None,
        on_accept: Callable[[Message], None] | None = None,
        min_replies: int | None = None,
    ) -> list[Message]:
        """Send one message per node and return the accepted replies, handling each on arrival.

        Every reply is checked as soon as it arrives: an error reply is recorded as failed,
        a reply larger than ``max-payload-bytes`` or failing `check` as rejected, and nodes
        that have not answered within ``reply-timeout`` as timed out; each gets one logged
        line. `on_accept` runs on every accepted reply right away (to store it before the
        others arrive). Upload bytes are counted from the serialized records of each reply.
        The accepted replies are returned in partition order, not arrival order, so that
        sums over clients add in the same order on every run.
        In a simulation at most ``max-in-flight`` messages are in flight, and the next one
        is sent when a reply arrives (:mod:`fedlab.dispatch`).

        Raises
        ------
        NotEnoughRepliesError
            When fewer than `min_replies` (default: ``min-replies``) replies are accepted.
        """
        grid = self._require_grid()
        messages = []
        sizes: dict[int, int] = {}  # serialized size by id() of the content: one shared content is measured once
        for node_id in node_ids:
            content = content_for(node_id)
            if id(content) not in sizes:
                sizes[id(content)] = record_bytes(content)
            self.download_bytes[node_id] += sizes[id(content)]
            messages.append(Message(content=content, dst_node_id=node_id, message_type=message_type))
        logger.info("Sending %s '%s' messages", len(messages), message_type)

        accepted: list[Message] = []
        answered: set[int] = set()
        deadline = time.monotonic() + self.config.reply_timeout
        window = grid.window if isinstance(grid, WindowedGrid) else 0
        for reply in exchange(grid, messages, window, deadline, self.poll_seconds):
            answered.add(reply.metadata.src_node_id)
            if self._accept(reply, message_type, check):
                accepted.append(reply)
                if on_accept is not None:
                    on_accept(reply)
        del messages
        self._record_timeouts(node_ids, answered, message_type)
        return self._check_enough(accepted, len(node_ids), message_type, min_replies)

    def account_replies(
        self,
        node_ids: Sequence[int],
        replies: Iterable[Message],
        message_type: str,
        check: ReplyCheck | None = None,
        min_replies: int | None = None,
    ) -> list[Message]:
        """Sort replies collected elsewhere into accepted ones and recorded failures.

        The same checks, accounting and partition order as :meth:`send_and_collect`, for
        replies that a Flower strategy received itself.

        Raises
        ------
        NotEnoughRepliesError
            When fewer than `min_replies` (default: ``min-replies``) replies are accepted.
        """
        accepted, answered = [], set()
        for reply in replies:
            answered.add(reply.metadata.src_node_id)
            if self._accept(reply, message_type, check):
                accepted.append(reply)
        self._record_timeouts(node_ids, answered, message_type)
        return self._check_enough(accepted, len(node_ids), message_type, min_replies)

    def _accept(self, reply: Message, message_type: str, check: ReplyCheck | None) -> bool:
        """Account one reply; return whether it may be used."""
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            self.record_failure(node_id, error_reason(reply), message_type, FAILED)
            return False
        size = record_bytes(reply.content)
        self.upload_bytes[node_id] += size
        metrics = reply_metrics(reply)
        if PARTITION_ID in metrics:
            self.node_partitions[node_id] = int(metrics[PARTITION_ID])
        if size > self.config.max_payload_bytes:
            self.record_failure(
                node_id,
                f"payload of {size} bytes exceeds max-payload-bytes={self.config.max_payload_bytes}",
                message_type,
                REJECTED,
            )
            return False
        if check is not None:
            try:
                check(reply)
            except PayloadError as err:
                self.record_failure(node_id, str(err), message_type, REJECTED)
                return False
        self.client_metrics.setdefault(node_id, {}).update(metrics)
        return True

    def _record_timeouts(self, node_ids: Sequence[int], answered: set[int], message_type: str) -> None:
        for node_id in node_ids:
            if node_id not in answered:
                self.record_failure(
                    node_id, f"no reply within reply-timeout={self.config.reply_timeout:g} s",
                    message_type, TIMED_OUT,
                )

    def _check_enough(
        self, accepted: list[Message], sent: int, message_type: str, min_replies: int | None
    ) -> list[Message]:
        logger.info("Accepted %s of %s replies to '%s'", len(accepted), sent, message_type)
        needed = self.config.min_replies if min_replies is None else min_replies
        if len(accepted) < needed:
            raise NotEnoughRepliesError(
                f"only {len(accepted)} of {sent} clients replied acceptably to '{message_type}', "
                f"fewer than min-replies={needed}; lower min-replies or fix the clients; failures: "
                + "; ".join(f"node {f.node_id} {f.kind}: {f.reason}" for f in self.failures)
            )
        return self._in_partition_order(accepted)

    def _in_partition_order(self, replies: list[Message]) -> list[Message]:
        """Sort replies by partition id, then node id for nodes that reported none.

        Replies arrive in whatever order the clients finish, and floating-point sums
        such as a model average depend on the order of their terms.
        """

        def key(reply: Message) -> tuple[int, int, int]:
            node_id = reply.metadata.src_node_id
            partition = self.node_partitions.get(node_id)
            return (0, partition, node_id) if partition is not None else (1, 0, node_id)

        return sorted(replies, key=key)

    def record_failure(self, node_id: int, reason: str, message_type: str, kind: str = FAILED) -> None:
        """Record and log, in one line, a client that failed, timed out or was rejected."""
        partition = self.node_partitions.get(node_id)
        where = f"node {node_id}" if partition is None else f"node {node_id} (partition {partition})"
        logger.warning("Client on %s %s '%s': %s", where, kind, message_type, reason)
        self.failures.append(ClientFailure(node_id, reason, message_type, kind))

    def check_model_reply(self, reply: Message) -> None:
        """Reject a model upload whose record, keys, shapes, dtypes or values are wrong."""
        if ARRAYS_KEY not in reply.content.array_records:
            raise PayloadError(f"reply lacks the '{ARRAYS_KEY}' ArrayRecord")
        if self._model_reference is None:
            self._model_reference = {k: v.cpu() for k, v in self.build_model().state_dict().items()}
        check_model_record(reply.content.array_records[ARRAYS_KEY], self._model_reference)

    # Timing and models -------------------------------------------------------------------

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to :attr:`phase_seconds` under `name`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] += time.perf_counter() - start

    def build_model(self, seed_offset: int = 0) -> Classifier:
        """Build the configured global model with weights drawn from the run seed."""
        cfg = self.config
        channels, height, _ = self.data.train.image_shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + seed_offset)
            model = build_model(
                cfg.model,
                in_channels=channels,
                num_classes=self.data.train.num_classes,
                image_size=height,
                width=cfg.model_width,
                depth=cfg.model_depth,
            )
        return model.to(self.device)

    def evaluate(self, model: torch.nn.Module) -> float:
        """Return the model's top-1 accuracy on the server test set."""
        test = self.data.test
        return evaluate_classifier(
            model.to(self.device), test.float_images().to(self.device), test.labels.to(self.device)
        )

    def failed_clients(self, kind: str | None = None) -> list[dict[str, object]]:
        """Return the failures (all, or those of one `kind`) as JSON-ready dicts."""
        return [
            {**failure.to_json(), "partition_id": self.node_partitions.get(failure.node_id)}
            for failure in self.failures
            if kind in (None, failure.kind)
        ]
