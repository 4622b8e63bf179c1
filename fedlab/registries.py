"""Every registry of the platform by kind, for config validation and listing."""

from __future__ import annotations

from fedlab.registry import Registry


def all_registries() -> dict[str, Registry]:
    """Return the registries keyed by the kind named in run-config errors.

    Imports are local because the component packages import the config module.
    """
    from clients import DISTILLERS
    from fedlab.data import DATASETS, PARTITIONERS
    from fedlab.models import MODELS
    from strategies import STRATEGIES

    return {
        "strategy": STRATEGIES,
        "dataset": DATASETS,
        "model": MODELS,
        "partitioner": PARTITIONERS,
        "distiller": DISTILLERS,
    }


def check_name(kind: str, name: str) -> None:
    """Raise a ConfigError listing the valid names when `name` is not registered."""
    from fedlab.config import ConfigError

    registry = all_registries()[kind]
    if name not in registry:
        raise ConfigError(
            f"unknown {kind} {name!r} (run-config key '{kind}'); valid names: "
            f"{', '.join(registry.names())}"
        )
