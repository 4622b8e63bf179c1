"""Assembly of the server test set, public set and client partitions for one experiment."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedlab.data.datasets import DatasetLabels, ImageDataset, load_dataset
from fedlab.data.feature_skew import apply_feature_skew, feature_skew_record
from fedlab.data.partition import (
    PARTITIONERS,
    Partitioner,
    PartitionParams,
    heterogeneity_scalars,
    partition_summary,
)
from fedlab.data.splits import Splits, split_indices, stratified_subsample

logger = logging.getLogger(__name__)

# Datasets read from class folders, whose optional val/ folder is the official test split.
_VAL_FOLDER_DATASETS = frozenset({"imagefolder", "imagenette", "tinyimagenet"})


@dataclass(frozen=True, eq=False)
class FederatedData:
    """Data of one federated experiment.

    Instances are cached and shared within a process, so treat them as read-only.
    The index arrays are marked non-writeable. Tensors have no such flag, so do not
    modify them in place.

    Attributes
    ----------
    train : ImageDataset
        Dataset that `pool_indices` and `partitions` index into.
    test : ImageDataset
        Server test set, never given to clients or to the autoencoder: the official
        test split when the dataset has one, else a stratified part of train.
    public : ImageDataset or None
        Public set for the autoencoder, carved from train, or None.
    pool_indices : numpy.ndarray
        Sorted int64 indices into `train` that the clients share.
    partitions : list of numpy.ndarray
        Per client, sorted int64 indices into `train` (not into the pool).
    params : PartitionParams
        Settings the partitions were made with, including the feature skew that
        `client_dataset` applies.
    seed : int
        Seed of the partitions and of the feature skew.
    """

    train: ImageDataset
    test: ImageDataset
    public: ImageDataset | None
    pool_indices: np.ndarray
    partitions: list[np.ndarray]
    params: PartitionParams = PartitionParams()
    seed: int = 0

    @property
    def num_partitions(self) -> int:
        """Number of clients."""
        return len(self.partitions)

    @property
    def feature_skew(self) -> dict[str, Any]:
        """Feature-skew settings, unit and per-client levels, as saved in the manifest."""
        return feature_skew_record(
            self.params.feature_skew,
            self.params.feature_skew_strength,
            self.params.feature_skew_levels,
            len(self.partitions),
            self.seed,
        )

    def client_dataset(self, partition_id: int) -> ImageDataset:
        """Return the training samples of client `partition_id`, with its feature skew applied."""
        if not 0 <= partition_id < len(self.partitions):
            raise ValueError(
                f"partition_id must be in 0..{len(self.partitions) - 1}, got {partition_id}"
            )
        samples = self.train.subset(self.partitions[partition_id])
        level = self.feature_skew["levels"][partition_id]
        return apply_feature_skew(
            samples, self.params.feature_skew, level, self.seed, partition_id
        )

    def partition_summary(self) -> dict[str, Any]:
        """Summarise the partitions' heterogeneity, feature skew included (see `partition_summary`)."""
        return partition_summary(
            self.train.labels.numpy(),
            self.partitions,
            self.train.num_classes,
            feature_skew=self.feature_skew,
        )

    def heterogeneity(self) -> dict[str, Any]:
        """Return the few scalars of `partition_summary` saved in ``results.json``."""
        return heterogeneity_scalars(self.partition_summary())


@functools.lru_cache(maxsize=4)
def build_federated_data(
    dataset: str,
    data_root: str,
    image_size: int,
    test_fraction: float,
    public_fraction: float,
    max_pool_samples: int,
    partitioner: str,
    num_partitions: int,
    seed: int,
    params: PartitionParams,
) -> FederatedData:
    """Load a dataset, split off test and public sets, and partition the rest among clients.

    Results are cached per process (up to 4 argument combinations), so repeated
    calls with the same arguments return the same object without reloading.

    Parameters
    ----------
    dataset : str
        Registered dataset name, one of ``fedlab.data.DATASETS.names()``.
    data_root : str
        Folder with the dataset files, for datasets not bundled with a package.
    image_size : int
        Square side length in pixels, 0 for the dataset's default size.
    test_fraction : float
        Fraction of train held out as the server test set, in [0, 1). Ignored when
        the dataset has an official test split. Must be > 0 otherwise.
    public_fraction : float
        Fraction of train held out as the public set, in [0, 1), or 0 for no public set.
    max_pool_samples : int
        Cap on the client pool size, applied by a stratified random subsample;
        0 keeps the whole pool.
    partitioner : str
        Registered partitioner name, one of ``fedlab.data.PARTITIONERS.names()``.
    num_partitions : int
        Number of clients, >= 1.
    seed : int
        Non-negative seed for the splits, the pool cap and the partitioner.
    params : PartitionParams
        Partitioner and feature-skew settings.

    Returns
    -------
    FederatedData
        Train, test and public datasets, the client pool and the client partitions.

    Raises
    ------
    ValueError
        If the dataset has no official test split and `test_fraction` is 0, or any
        argument is outside its valid range.
    """
    partition_fn = PARTITIONERS.get(partitioner)
    _check_max_pool_samples(max_pool_samples)

    bundle = load_dataset(dataset, data_root, image_size)
    train = bundle.train
    splits, pool, parts = _split_and_partition(
        dataset, train.labels.numpy(), bundle.test is not None, test_fraction, public_fraction,
        max_pool_samples, partition_fn, num_partitions, seed, params,
    )
    test = bundle.test if bundle.test is not None else train.subset(splits.test)
    public = train.subset(splits.public) if len(splits.public) > 0 else None
    partitions = [_read_only(pool[part]) for part in parts]
    if params.feature_skew != "none" and params.feature_skew_strength == 0:
        logger.warning(
            "feature_skew=%r with feature_skew_strength=0 leaves every client's data "
            "unchanged; set a strength > 0 to transform it",
            params.feature_skew,
        )

    logger.info(
        "federated data for %s: %d test, %d public, %d pool samples in %d %s partitions "
        "(seed %d, feature skew %s up to %g)",
        dataset,
        len(test),
        0 if public is None else len(public),
        len(pool),
        len(partitions),
        partitioner,
        seed,
        params.feature_skew,
        params.feature_skew_strength,
    )
    return FederatedData(
        train=train,
        test=test,
        public=public,
        pool_indices=_read_only(pool),
        partitions=partitions,
        params=params,
        seed=seed,
    )


def check_partition_request(
    dataset: str,
    labels: DatasetLabels,
    test_fraction: float,
    public_fraction: float,
    max_pool_samples: int,
    partitioner: str,
    num_partitions: int,
    seed: int,
    params: PartitionParams,
) -> None:
    """Make the splits and partitions of :func:`build_federated_data` from the labels alone.

    Reading the labels of a dataset (:func:`~fedlab.data.read_labels`) decodes no
    image, so an impossible partition request fails before a run starts. The other
    arguments mean the same as in :func:`build_federated_data`.

    Raises
    ------
    ValueError
        The error :func:`build_federated_data` would raise for these settings.
    """
    partition_fn = PARTITIONERS.get(partitioner)
    _check_max_pool_samples(max_pool_samples)
    _split_and_partition(
        dataset, labels.train, labels.has_test, test_fraction, public_fraction,
        max_pool_samples, partition_fn, num_partitions, seed, params,
    )


def _check_max_pool_samples(max_pool_samples: int) -> None:
    if isinstance(max_pool_samples, bool) or not isinstance(max_pool_samples, (int, np.integer)):
        raise TypeError(f"max_pool_samples must be an int (0 for no cap), got {max_pool_samples!r}")
    if max_pool_samples < 0:
        raise ValueError(f"max_pool_samples must be >= 0 (0 for no cap), got {max_pool_samples}")


def _split_and_partition(
    dataset: str,
    labels: np.ndarray,
    has_test: bool,
    test_fraction: float,
    public_fraction: float,
    max_pool_samples: int,
    partition_fn: Partitioner,
    num_partitions: int,
    seed: int,
    params: PartitionParams,
) -> tuple[Splits, np.ndarray, list[np.ndarray]]:
    """Return the splits, the capped client pool and the partitions as positions in the pool."""
    if not has_test and test_fraction == 0:
        val_hint = " or add a val/ split to data-root" if dataset in _VAL_FOLDER_DATASETS else ""
        raise ValueError(
            f"dataset {dataset!r} has no official test split, so test_fraction (run-config "
            "test-fraction) must be > 0 to hold out a server test set, got test_fraction=0; "
            f"raise test-fraction{val_hint}"
        )
    splits = split_indices(labels, 0.0 if has_test else test_fraction, public_fraction, seed)
    pool = splits.pool
    if 0 < max_pool_samples < len(pool):
        pool = pool[stratified_subsample(labels[pool], max_pool_samples, seed)]
    try:
        parts = partition_fn(labels[pool], num_partitions, seed, params)
    except ValueError as err:
        raise ValueError(
            f"{err} (the client pool contains {len(pool)} of the {len(labels)} training samples; "
            "the others are the server test set, the public set or beyond max-pool-samples)"
        ) from err
    return splits, pool, parts


def _read_only(indices: np.ndarray) -> np.ndarray:
    array = np.array(indices, dtype=np.int64)
    array.setflags(write=False)
    return array


__all__ = ["FederatedData", "build_federated_data"]
