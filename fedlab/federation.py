"""Build a run's federated data from its config; the same pure function on server and clients."""

from __future__ import annotations

from typing import Any

from fedlab.config import RunConfig
from fedlab.data import (
    DatasetLabels,
    FederatedData,
    PartitionParams,
    build_federated_data,
    check_partition_request,
)


def partition_params(config: RunConfig) -> PartitionParams:
    """Return the partitioner and feature-skew settings of a run."""
    return PartitionParams(
        alpha=config.alpha,
        min_partition_size=config.min_partition_size,
        shards_per_client=config.shards_per_client,
        quantity_sigma=config.quantity_sigma,
        quantity_exponent=config.quantity_exponent,
        feature_skew=config.feature_skew,
        feature_skew_strength=config.feature_skew_strength,
        feature_skew_levels=config.feature_skew_levels,
    )


def split_settings(config: RunConfig) -> dict[str, Any]:
    """Return the run's split and partition arguments, shared by loading and checking its data."""
    return {
        "test_fraction": config.test_fraction,
        "public_fraction": config.public_fraction,
        "max_pool_samples": config.max_pool_samples,
        "partitioner": config.partitioner,
        "num_partitions": config.num_clients,
        "seed": config.seed,
        "params": partition_params(config),
    }


def federated_data(config: RunConfig) -> FederatedData:
    """Load, split and partition the run's dataset (cached per process).

    Server and clients call this with the same config and get the same split and
    partitions, because every step is a function of the config and its seed.
    """
    return build_federated_data(config.dataset, config.data_root, config.image_size, **split_settings(config))


def check_federated_partitions(config: RunConfig, labels: DatasetLabels) -> None:
    """Check that the run's splits and partitions can be made from the dataset's labels."""
    check_partition_request(config.dataset, labels, **split_settings(config))
