"""Build a run's federated data from its config; the same pure function on server and clients."""

from __future__ import annotations

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


def federated_data(config: RunConfig) -> FederatedData:
    """Load, split and partition the run's dataset (cached per process).

    Server and clients call this with the same config and get the same split and
    partitions, because every step is a function of the config and its seed.
    """
    return build_federated_data(
        config.dataset,
        config.data_root,
        config.image_size,
        config.test_fraction,
        config.public_fraction,
        config.max_pool_samples,
        config.partitioner,
        config.num_clients,
        config.seed,
        partition_params(config),
    )


def check_federated_partitions(config: RunConfig, labels: DatasetLabels) -> None:
    """Check that the run's splits and partitions can be made from the dataset's labels."""
    check_partition_request(
        config.dataset,
        labels,
        config.test_fraction,
        config.public_fraction,
        config.max_pool_samples,
        config.partitioner,
        config.num_clients,
        config.seed,
        partition_params(config),
    )
