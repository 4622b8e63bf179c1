"""One-shot logit ensemble: clients train local models once; the server averages their logits."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, RecordDict
from torch import Tensor, nn

from fedlab.payload import ARRAYS_KEY, CONFIG_KEY, TRAIN, load_model_record, model_to_record
from fedlab.server_run import ServerRun
from strategies.base import STRATEGIES, FedLabStrategy, StrategyResult

logger = logging.getLogger(__name__)


class LogitEnsemble(nn.Module):
    """Average of the members' logits; `forward_features` is not defined for an ensemble.

    The forward pass adds the members' logits one member at a time instead of stacking them.
    Each member's logits are then freed before the next member runs, which keeps glibc's heap
    from fragmenting: with 1,000 members, stacking grew the evaluating process by about
    2.4 GB, the running sum by 0.16 GB.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("LogitEnsemble needs at least one member model")
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        total = self.members[0](x)
        for member in self.members[1:]:
            total = total + member(x)
        return total / len(self.members)


@STRATEGIES.register("ensemble")
class EnsembleStrategy(FedLabStrategy):
    """Each client trains from the same initial model once; the global model is the ensemble."""

    def run(self, server: ServerRun, node_ids: list[int]) -> StrategyResult:
        initial = server.build_model()
        content = RecordDict(
            {ARRAYS_KEY: model_to_record(initial), CONFIG_KEY: ConfigRecord({"server-round": 1})}
        )
        with server.phase("round"):
            replies = server.send_and_collect(
                node_ids, TRAIN, lambda _node: content, check=server.check_model_reply
            )

        members = []
        for index, reply in enumerate(replies):
            member = server.build_model(seed_offset=index + 1)
            load_model_record(member, reply.content.array_records[ARRAYS_KEY])
            members.append(member.eval())
        ensemble = LogitEnsemble(members).to(server.device).eval()
        accuracy = server.evaluate(ensemble)
        logger.info("Ensemble of %s local models: test accuracy %.4f", len(members), accuracy)
        return StrategyResult(model=ensemble, test_accuracy=accuracy, extra={"ensemble_size": len(members)})
