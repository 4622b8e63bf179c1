"""Server-side strategies, one module per method, registered in :data:`STRATEGIES` by id."""

from strategies.base import STRATEGIES, FedLabStrategy, StrategyResult

# Importing a strategy module registers it.
from strategies import coboosting, dense, ensemble, fedavg, fedsd2c  # noqa: E402,F401  isort: skip

__all__ = ["STRATEGIES", "FedLabStrategy", "StrategyResult"]
