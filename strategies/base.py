"""Base class and registry of the server-side strategies."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fedlab.config import RunConfig
from fedlab.registry import Registry
from fedlab.server_run import ServerRun


@dataclass
class StrategyResult:
    """Result of a strategy run: the global model, its test accuracy and extra figures."""

    model: nn.Module
    test_accuracy: float
    # Strategy-specific figures merged into results.json (JSON-serialisable values only).
    extra: dict[str, Any] = field(default_factory=dict)


class FedLabStrategy(ABC):
    """A federated method driven by the ServerApp: one concrete `run` per method."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    @abstractmethod
    def run(self, server: ServerRun, node_ids: list[int]) -> StrategyResult:
        """Run the method over the connected `node_ids` and return the trained global model."""


STRATEGIES: Registry[type[FedLabStrategy]] = Registry("strategy")
