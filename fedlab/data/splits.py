"""Stratified, seeded splits of a labelled dataset into test, public and client-pool indices."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np


@dataclass(frozen=True, eq=False)
class Splits:
    """Disjoint index sets that together cover every sample.

    Attributes
    ----------
    test : numpy.ndarray
        Sorted int64 indices of the server's held-out test set (empty when the
        dataset has an official test split).
    public : numpy.ndarray
        Sorted int64 indices of the public set (empty when no public set is requested).
    pool : numpy.ndarray
        Sorted int64 indices left for the clients.
    """

    test: np.ndarray
    public: np.ndarray
    pool: np.ndarray


def split_indices(
    labels: np.ndarray, test_fraction: float, public_fraction: float, seed: int
) -> Splits:
    """Split sample indices into test, public and pool sets, stratified by class.

    Each set receives ``round(fraction * len(labels))`` samples in total, shared among
    classes in proportion to their sizes by largest-remainder rounding. The samples
    taken from each class are chosen at random.

    Parameters
    ----------
    labels : numpy.ndarray
        1-D integer class labels, one per sample.
    test_fraction : float
        Fraction of samples for the test set, in [0, 1). Use 0 when the dataset
        has an official test split.
    public_fraction : float
        Fraction of samples for the public set, in [0, 1), or 0 for no public set.
    seed : int
        Non-negative seed. The same seed and labels always give the same split.

    Returns
    -------
    Splits
        Sorted, disjoint int64 index arrays covering ``range(len(labels))``.

    Raises
    ------
    ValueError
        If a fraction is outside [0, 1), the fractions sum to 1 or more, or a class
        would keep no sample in the pool.
    """
    labels = check_labels(labels)
    check_seed(seed)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    public_fraction = _check_fraction("public_fraction", public_fraction)
    if test_fraction + public_fraction >= 1.0:
        raise ValueError(
            f"test_fraction + public_fraction must be < 1 so clients keep samples, got "
            f"{test_fraction} + {public_fraction} = {test_fraction + public_fraction}"
        )

    classes, class_counts = np.unique(labels, return_counts=True)
    test_counts = allocate_stratified(class_counts, round(test_fraction * len(labels)))
    public_counts = allocate_stratified(class_counts, round(public_fraction * len(labels)))
    pool_counts = class_counts - test_counts - public_counts
    short = np.flatnonzero(pool_counts < 1)
    if short.size > 0:
        first = short[0]
        raise ValueError(
            f"class {classes[first]} has {class_counts[first]} samples, and "
            f"test_fraction={test_fraction} with public_fraction={public_fraction} leave "
            f"none of them for the client pool. Lower the fractions or use more data "
            f"({short.size} class(es) affected)"
        )

    rng = np.random.default_rng(seed)
    test_parts, public_parts, pool_parts = [], [], []
    for label, num_test, num_public in zip(classes, test_counts, public_counts):
        members = rng.permutation(np.flatnonzero(labels == label))
        test_parts.append(members[:num_test])
        public_parts.append(members[num_test : num_test + num_public])
        pool_parts.append(members[num_test + num_public :])
    return Splits(
        test=_sorted_indices(test_parts),
        public=_sorted_indices(public_parts),
        pool=_sorted_indices(pool_parts),
    )


def stratified_subsample(labels: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """Choose `num_samples` positions in `labels` at random, keeping class proportions.

    Parameters
    ----------
    labels : numpy.ndarray
        1-D integer class labels.
    num_samples : int
        How many positions to keep, 0..len(labels). A class whose share rounds
        down to zero is dropped.
    seed : int
        Non-negative seed.

    Returns
    -------
    numpy.ndarray
        Sorted int64 positions into `labels`.
    """
    labels = check_labels(labels)
    check_seed(seed)
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise TypeError(f"num_samples must be an int, got {num_samples!r}")
    if not 0 <= num_samples <= len(labels):
        raise ValueError(
            f"num_samples must be in 0..{len(labels)} (the number of labels), got {num_samples}"
        )
    classes, class_counts = np.unique(labels, return_counts=True)
    keep_counts = allocate_stratified(class_counts, int(num_samples))
    rng = np.random.default_rng(seed)
    parts = []
    for label, keep in zip(classes, keep_counts):
        members = np.flatnonzero(labels == label)
        parts.append(rng.choice(members, size=int(keep), replace=False))
    return _sorted_indices(parts)


def allocate_stratified(class_counts: np.ndarray, total: int) -> np.ndarray:
    """Share `total` samples among classes in proportion to `class_counts`.

    Uses largest-remainder rounding: each class gets the floor of its exact share, and
    the leftover samples go to the classes with the largest fractional parts (ties
    to the lower class position). No class gets more than it has.

    Parameters
    ----------
    class_counts : numpy.ndarray
        Number of samples of each class, all >= 0.
    total : int
        Samples to share, 0..sum(class_counts).

    Returns
    -------
    numpy.ndarray
        int64 counts per class summing to `total`.
    """
    class_counts = np.asarray(class_counts, dtype=np.int64)
    available = int(class_counts.sum())
    if not 0 <= total <= available:
        raise ValueError(f"total must be in 0..{available} (the number of samples), got {total}")
    if available == 0:
        return np.zeros_like(class_counts)
    exact = class_counts * (total / available)
    counts = np.floor(exact).astype(np.int64)
    leftover = total - int(counts.sum())
    # A stable sort keeps ties in class order, so the result does not depend on a seed.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:leftover]] += 1
    return counts


def check_labels(labels: np.ndarray) -> np.ndarray:
    """Return `labels` as a 1-D int64 array, raising if it is not one.

    Raises
    ------
    TypeError
        If the labels are not integers.
    ValueError
        If the labels are not 1-D or are negative.
    """
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {array.shape}")
    if array.size > 0 and array.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size > 0 and array.min() < 0:
        raise ValueError(f"labels must be >= 0, got minimum {array.min()}")
    return array


def check_seed(seed: int) -> None:
    """Raise unless `seed` is a non-negative int, as numpy.random.default_rng requires."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number in [0, 1), got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def _sorted_indices(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.empty(0, dtype=np.int64)
    return np.sort(np.concatenate(parts)).astype(np.int64, copy=False)


__all__ = [
    "Splits",
    "allocate_stratified",
    "check_labels",
    "check_seed",
    "split_indices",
    "stratified_subsample",
]
