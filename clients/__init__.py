"""Client-side components, one module per method, registered by id (distillers: DISTILLERS)."""

from clients.base import DISTILLERS, Distillates, Distiller

# Importing a component module registers it.
from clients import fedsd2c  # noqa: E402,F401  isort: skip

__all__ = ["DISTILLERS", "Distillates", "Distiller"]
