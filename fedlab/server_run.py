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
from fedlab.models import Classifier, build_model
from fedlab.payload import PARTITION_ID, error_reason, record_bytes, reply_metrics
from fedlab.training import evaluate_classifier, select_device

logger = logging.getLogger(__name__)


class NotEnoughRepliesError(RuntimeError):
    """Fewer clients replied successfully than the run needs (``min-replies``)."""


@dataclass(frozen=True)
class ClientFailure:
    """A client whose reply was missing, an error, or rejected."""

    node_id: int
    reason: str
    message_type: str

    def to_json(self) -> dict[str, object]:
        return {"node_id": self.node_id, "reason": self.reason, "message_type": self.message_type}


@dataclass
class ServerRun:
    """Everything a strategy needs from the platform during one run."""

    grid: Grid
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

    # Nodes -------------------------------------------------------------------------------

    def wait_for_nodes(self) -> list[int]:
        """Wait until `num-clients` nodes are connected and return their ids (sorted).

        Raises
        ------
        RuntimeError
            When fewer nodes connect within ``node-wait-seconds``, or more nodes than
            ``num-clients`` are connected (the partition count would not match).
        """
        expected = self.config.num_clients
        deadline = time.monotonic() + self.config.node_wait_seconds
        node_ids = sorted(self.grid.get_node_ids())
        while len(node_ids) < expected and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = sorted(self.grid.get_node_ids())
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

    # Messaging ---------------------------------------------------------------------------

    def send_and_collect(
        self,
        node_ids: Sequence[int],
        message_type: str,
        content_for: Callable[[int], RecordDict],
        min_replies: int | None = None,
    ) -> list[Message]:
        """Send one message per node and return the replies that carry content.

        Failed replies are logged in one line each and recorded in :attr:`failures`;
        upload bytes are counted from the serialized records of each successful reply.

        Raises
        ------
        NotEnoughRepliesError
            When fewer than `min_replies` (default: ``min-replies``) replies succeed.
        """
        messages = []
        for node_id in node_ids:
            content = content_for(node_id)
            self.download_bytes[node_id] += record_bytes(content)
            messages.append(Message(content=content, dst_node_id=node_id, message_type=message_type))
        logger.info("Sent %s '%s' messages", len(messages), message_type)
        replies = self.grid.send_and_receive(messages, timeout=self.config.reply_timeout)
        return self.account_replies(node_ids, replies, message_type, min_replies)

    def account_replies(
        self,
        node_ids: Sequence[int],
        replies: Iterable[Message],
        message_type: str,
        min_replies: int | None = None,
    ) -> list[Message]:
        """Sort replies into successes and recorded failures; count bytes and client metrics.

        Raises
        ------
        NotEnoughRepliesError
            When fewer than `min_replies` (default: ``min-replies``) replies succeed.
        """
        replies = list(replies)
        answered = {reply.metadata.src_node_id for reply in replies}
        successes = []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if reply.has_error():
                self.record_failure(node_id, error_reason(reply), message_type)
                continue
            self.upload_bytes[node_id] += record_bytes(reply.content)
            metrics = reply_metrics(reply)
            if PARTITION_ID in metrics:
                self.node_partitions[node_id] = int(metrics[PARTITION_ID])
            self.client_metrics.setdefault(node_id, {}).update(metrics)
            successes.append(reply)
        for node_id in node_ids:
            if node_id not in answered:
                self.record_failure(
                    node_id, f"no reply within reply-timeout={self.config.reply_timeout} s", message_type
                )

        logger.info(
            "Received %s results and %s failures for '%s'",
            len(successes),
            len(node_ids) - len(successes),
            message_type,
        )
        needed = self.config.min_replies if min_replies is None else min_replies
        if len(successes) < needed:
            raise NotEnoughRepliesError(
                f"only {len(successes)} of {len(node_ids)} clients replied successfully to "
                f"'{message_type}', fewer than min-replies={needed}; failures: "
                + "; ".join(f"node {f.node_id}: {f.reason}" for f in self.failures)
            )
        return successes

    def record_failure(self, node_id: int, reason: str, message_type: str) -> None:
        """Record and log a client that failed or whose reply was rejected."""
        logger.warning("Client on node %s failed '%s': %s", node_id, message_type, reason)
        self.failures.append(ClientFailure(node_id, reason, message_type))

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

    def failed_clients(self) -> list[dict[str, object]]:
        """Return the failures as JSON-ready dicts."""
        return [failure.to_json() for failure in self.failures]
