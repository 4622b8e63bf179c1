"""FedAvg baseline (McMahan et al., 2017, https://arxiv.org/abs/1602.05629).

Runs Flower's own message-based FedAvg; with ``num-server-rounds=1`` it is one-shot model
averaging. Replies pass through the platform's accounting (upload bytes, failures with
reasons, ``min-replies``) before Flower aggregates them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedlab.payload import ARRAYS_KEY, CONFIG_KEY, TRAIN, load_model_record, model_to_record, record_bytes
from fedlab.server_run import ServerRun
from strategies.base import STRATEGIES, FedLabStrategy, StrategyResult

logger = logging.getLogger(__name__)


class _AccountedFedAvg(FedAvg):
    """Flower FedAvg whose messages and replies are counted by the ServerRun."""

    def __init__(self, server: ServerRun, num_nodes: int) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=num_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=num_nodes,
            arrayrecord_key=ARRAYS_KEY,
            configrecord_key=CONFIG_KEY,
        )
        self.server = server
        self._sent_to: list[int] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            self.server.download_bytes[message.metadata.dst_node_id] += record_bytes(message.content)
        self._sent_to = [message.metadata.dst_node_id for message in messages]
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        good = self.server.account_replies(
            self._sent_to, replies, f"{TRAIN} round {server_round}", check=self.server.check_model_reply
        )
        return super().aggregate_train(server_round, good)


@STRATEGIES.register("fedavg")
class FedAvgStrategy(FedLabStrategy):
    """Federated averaging over ``num-server-rounds`` rounds of local training."""

    def run(self, server: ServerRun, node_ids: list[int]) -> StrategyResult:
        cfg = self.config
        model = server.build_model()
        initial = model_to_record(model)

        accuracy_per_round: dict[int, float] = {}

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            load_model_record(model, arrays)
            accuracy = server.evaluate(model)
            accuracy_per_round[server_round] = accuracy
            logger.info("Round %s: test accuracy %.4f", server_round, accuracy)
            return MetricRecord({"test-accuracy": accuracy})

        strategy = _AccountedFedAvg(server, num_nodes=len(node_ids))
        with server.phase("rounds"):
            result = strategy.start(
                grid=server.grid,
                initial_arrays=initial,
                num_rounds=cfg.num_server_rounds,
                timeout=cfg.reply_timeout,
                train_config=ConfigRecord({}),
                evaluate_fn=evaluate_fn,
            )
        load_model_record(model, result.arrays)
        accuracy = accuracy_per_round.get(cfg.num_server_rounds, server.evaluate(model))
        return StrategyResult(
            model=model,
            test_accuracy=accuracy,
            extra={"test_accuracy_per_round": {str(k): v for k, v in sorted(accuracy_per_round.items())}},
        )

