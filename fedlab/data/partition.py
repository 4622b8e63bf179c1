"""Partitioners that split sample indices among federated clients, and partition manifests.

Every partitioner has the signature
``(labels, num_partitions, seed, params) -> list[numpy.ndarray]`` and returns, per
client, sorted int64 positions into `labels`. The partitions are disjoint, cover
every position, hold at least ``params.min_partition_size`` samples each, and depend
only on the labels, the number of partitions, the seed and the parameters.

``dirichlet`` and ``shards`` skew the labels (and, for ``dirichlet``, the sizes too).
``quantity-lognormal`` and ``quantity-powerlaw`` skew only the sizes: each client is a
uniform random sample of the pool, so the two kinds of skew are separate partitioners
and do not combine. Feature skew (``fedlab.data.feature_skew``) combines with every
partitioner because it transforms each client's images after partitioning.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from fedlab.data.feature_skew import check_feature_skew, feature_skew_record
from fedlab.data.splits import check_labels, check_seed
from fedlab.registry import Registry
from fedlab.results import atomic_write_text

logger = logging.getLogger(__name__)

MANIFEST_FORMAT_VERSION = 1

# Dirichlet draws tried before the shortest partitions are filled up by moving samples.
_MAX_DIRICHLET_DRAWS = 10


@dataclass(frozen=True)
class PartitionParams:
    """Settings that decide each client's data, frozen and hashable so they can be cache keys.

    The partitioners read the first five. The feature-skew settings act after
    partitioning (`fedlab.data.FederatedData.client_dataset`), and they live here so
    that the partition manifest records them with the partitions.

    Attributes
    ----------
    alpha : float
        Dirichlet concentration for ``dirichlet``, > 0. Smaller values give each
        client fewer classes.
    min_partition_size : int
        Minimum number of samples per client, >= 0. Every partitioner honours it.
    shards_per_client : int
        Number of distinct classes per client for ``shards``, >= 1.
    quantity_sigma : float
        Standard deviation of the normal draws whose exponentials set the client
        sizes for ``quantity-lognormal``, >= 0. 0 gives equal sizes, and larger
        values give a wider size spread.
    quantity_exponent : float
        Tail index of the Pareto distribution of client sizes for
        ``quantity-powerlaw``, > 0. Smaller values give heavier tails, so a few
        clients get most samples.
    feature_skew : str
        Per-client input transform: ``none``, ``rotation`` or ``noise``.
    feature_skew_strength : float
        Maximum transform level, >= 0: degrees (at most 360) for ``rotation``, the
        standard deviation of the noise on pixel values scaled to [0, 1] for ``noise``.
    feature_skew_levels : str
        ``even`` spreads client levels evenly from 0 to the strength, ``random``
        draws them uniformly with the seed.
    """

    alpha: float = 0.1
    min_partition_size: int = 1
    shards_per_client: int = 2
    quantity_sigma: float = 1.0
    quantity_exponent: float = 1.5
    feature_skew: str = "none"
    feature_skew_strength: float = 0.0
    feature_skew_levels: str = "even"

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, Real):
            raise TypeError(f"alpha must be a number > 0, got {self.alpha!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(
                f"alpha must be a finite number > 0 (small values such as 0.1 give strong "
                f"label skew, large values such as 100 are close to iid), got {self.alpha}"
            )
        _check_int("min_partition_size", self.min_partition_size, minimum=0)
        _check_int("shards_per_client", self.shards_per_client, minimum=1)
        _check_real("quantity_sigma", self.quantity_sigma)
        if not self.quantity_sigma >= 0:
            raise ValueError(
                f"quantity_sigma must be a finite number >= 0 (0 gives equal sizes, 1 a "
                f"strong size skew), got {self.quantity_sigma}"
            )
        _check_real("quantity_exponent", self.quantity_exponent)
        if not self.quantity_exponent > 0:
            raise ValueError(
                f"quantity_exponent must be a finite number > 0 (1.5 gives a few large "
                f"clients, 10 nearly equal sizes), got {self.quantity_exponent}"
            )
        check_feature_skew(
            self.feature_skew, self.feature_skew_strength, self.feature_skew_levels
        )


Partitioner = Callable[[np.ndarray, int, int, PartitionParams], list[np.ndarray]]

PARTITIONERS: Registry[Partitioner] = Registry("partitioner")


@PARTITIONERS.register("iid")
def partition_iid(
    labels: np.ndarray, num_partitions: int, seed: int, params: PartitionParams
) -> list[np.ndarray]:
    """Split samples uniformly at random into partitions whose sizes differ by at most one.

    Parameters
    ----------
    labels : numpy.ndarray
        1-D integer class labels, of which only the number matters here.
    num_partitions : int
        Number of clients, >= 1.
    seed : int
        Non-negative seed.
    params : PartitionParams
        Only ``min_partition_size`` is used.

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 positions into `labels`, one array per client.
    """
    # Own code: flwr-datasets' IidPartitioner slices contiguous shards without shuffling.
    labels = _check_request(labels, num_partitions, seed, params)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_partitions)]


@PARTITIONERS.register("dirichlet")
def partition_dirichlet(
    labels: np.ndarray, num_partitions: int, seed: int, params: PartitionParams
) -> list[np.ndarray]:
    """Split each class among clients in proportions drawn from Dir(alpha).

    Up to 10 draws are tried, and the one closest to meeting ``min_partition_size``
    is kept. If some clients are still short, samples move to them from clients
    above the minimum. The largest block of a class the short client already has is
    taken first. When no donor has such a class, the largest class block of the
    client with the most samples is taken. The result therefore exists for any
    alpha > 0 whenever ``num_partitions * min_partition_size <= len(labels)``.

    Parameters
    ----------
    labels : numpy.ndarray
        1-D integer class labels.
    num_partitions : int
        Number of clients, >= 1.
    seed : int
        Non-negative seed.
    params : PartitionParams
        Uses ``alpha`` and ``min_partition_size``.

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 positions into `labels`, one array per client.
    """
    # Own code: flwr-datasets' DirichletPartitioner raises after 10 redraws when a
    # client stays below min_partition_size (alpha=0.01, 100 clients, 5,000 labels).
    labels = _check_request(labels, num_partitions, seed, params)
    rng = np.random.default_rng(seed)
    classes, class_positions = np.unique(labels, return_inverse=True)
    minimum = params.min_partition_size

    best_owners: np.ndarray | None = None
    best_shortfall = -1
    for _ in range(_MAX_DIRICHLET_DRAWS):
        owners = _draw_dirichlet_owners(
            class_positions, len(classes), num_partitions, params.alpha, rng
        )
        sizes = np.bincount(owners, minlength=num_partitions)
        shortfall = int(np.maximum(minimum - sizes, 0).sum())
        if best_owners is None or shortfall < best_shortfall:
            best_owners, best_shortfall = owners, shortfall
        if shortfall == 0:
            break

    if best_shortfall > 0:
        logger.debug(
            "dirichlet draws left partitions %d samples short of min_partition_size=%d, "
            "so samples move to the short partitions",
            best_shortfall,
            minimum,
        )
        _fill_short_partitions(
            best_owners, class_positions, len(classes), num_partitions, minimum, rng
        )
    return _owners_to_partitions(best_owners, num_partitions)


@PARTITIONERS.register("shards")
def partition_shards(
    labels: np.ndarray, num_partitions: int, seed: int, params: PartitionParams
) -> list[np.ndarray]:
    """Give every client exactly ``shards_per_client`` distinct classes (pathological split).

    Classes are first dealt to clients in a random order so every class has at
    least one holder, then each client's remaining slots are filled with random
    classes among those with the fewest holders. The samples of a class are split
    evenly at random among its holders.

    Parameters
    ----------
    labels : numpy.ndarray
        1-D integer class labels.
    num_partitions : int
        Number of clients, >= 1, with ``num_partitions * shards_per_client`` at
        least the number of classes present so that every sample is assigned.
    seed : int
        Non-negative seed.
    params : PartitionParams
        Uses ``shards_per_client`` and ``min_partition_size``.

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 positions into `labels`, one array per client.

    Raises
    ------
    ValueError
        If ``shards_per_client`` exceeds the number of classes, the clients cannot
        cover every class, a class has fewer samples than holders, or a client ends
        up below ``min_partition_size``.
    """
    # Own code: flwr-datasets' PathologicalPartitioner drops the samples of classes no
    # client drew, and its ShardPartitioner can give a client two shards of one class.
    labels = _check_request(labels, num_partitions, seed, params)
    classes, class_positions, class_counts = np.unique(
        labels, return_inverse=True, return_counts=True
    )
    num_classes = len(classes)
    per_client = params.shards_per_client
    if per_client > num_classes:
        raise ValueError(
            f"shards_per_client={per_client} (run-config shards-per-client) exceeds the "
            f"{num_classes} classes present in labels. Use shards-per-client <= {num_classes}"
        )
    if num_partitions * per_client < num_classes:
        raise ValueError(
            f"num_partitions={num_partitions} (num-clients) times shards_per_client={per_client} "
            f"(shards-per-client) is less "
            f"than the {num_classes} classes present, so some samples would be left out. "
            f"Raise either value so that their product is >= {num_classes}"
        )

    rng = np.random.default_rng(seed)
    holders = _assign_classes(num_classes, num_partitions, per_client, rng)
    holder_counts = np.array([len(clients) for clients in holders])
    too_few = np.flatnonzero(holder_counts > class_counts)
    if too_few.size > 0:
        first = too_few[0]
        raise ValueError(
            f"class {classes[first]} has {class_counts[first]} samples but "
            f"{holder_counts[first]} clients hold it (num_partitions={num_partitions}, "
            f"shards_per_client={per_client}). Lower either value"
        )

    owners = np.empty(len(labels), dtype=np.int64)
    for position, clients in enumerate(holders):
        members = rng.permutation(np.flatnonzero(class_positions == position))
        for client, part in zip(clients, np.array_split(members, len(clients))):
            owners[part] = client
    partitions = _owners_to_partitions(owners, num_partitions)

    sizes = np.array([len(part) for part in partitions])
    if sizes.min() < params.min_partition_size:
        raise ValueError(
            f"shards gives client {int(sizes.argmin())} only {int(sizes.min())} samples, "
            f"below min_partition_size={params.min_partition_size} (num_partitions="
            f"{num_partitions}, shards_per_client={per_client}). Use fewer clients, more "
            "classes per client or a smaller minimum"
        )
    return partitions


@PARTITIONERS.register("quantity-lognormal")
def partition_quantity_lognormal(
    labels: np.ndarray, num_partitions: int, seed: int, params: PartitionParams
) -> list[np.ndarray]:
    """Give clients log-normal sizes, each client a uniform random sample of the labels.

    Client ``i`` gets a weight ``exp(quantity_sigma * z_i)`` with ``z_i ~ N(0, 1)``,
    and sizes follow the weights as described in `_quantity_sizes`. For a fixed seed
    the draws ``z_i`` do not depend on ``quantity_sigma``, so a larger sigma spreads
    the same clients further apart.

    Parameters
    ----------
    labels : numpy.ndarray
        1-D integer class labels, of which only the number matters here.
    num_partitions : int
        Number of clients, >= 1.
    seed : int
        Non-negative seed.
    params : PartitionParams
        Uses ``quantity_sigma`` and ``min_partition_size``.

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 positions into `labels`, one array per client.

    Raises
    ------
    ValueError
        If ``num_partitions * min_partition_size`` exceeds the number of labels.
    """
    labels = _check_request(labels, num_partitions, seed, params)
    rng = np.random.default_rng(seed)
    log_weights = params.quantity_sigma * rng.standard_normal(num_partitions)
    return _split_by_log_weights(len(labels), log_weights, params.min_partition_size, rng)


@PARTITIONERS.register("quantity-powerlaw")
def partition_quantity_powerlaw(
    labels: np.ndarray, num_partitions: int, seed: int, params: PartitionParams
) -> list[np.ndarray]:
    """Give clients power-law (Pareto) sizes, each client a uniform random sample of the labels.

    Client ``i`` gets a weight ``(1 - u_i) ** (-1 / quantity_exponent)`` with
    ``u_i ~ U[0, 1)``, a Pareto draw with tail ``P(w > x) = x ** -quantity_exponent``
    for ``x >= 1``. Sizes follow the weights as described in `_quantity_sizes`.

    Parameters
    ----------
    labels : numpy.ndarray
        1-D integer class labels, of which only the number matters here.
    num_partitions : int
        Number of clients, >= 1.
    seed : int
        Non-negative seed.
    params : PartitionParams
        Uses ``quantity_exponent`` and ``min_partition_size``.

    Returns
    -------
    list of numpy.ndarray
        Sorted int64 positions into `labels`, one array per client.

    Raises
    ------
    ValueError
        If ``num_partitions * min_partition_size`` exceeds the number of labels.
    """
    labels = _check_request(labels, num_partitions, seed, params)
    rng = np.random.default_rng(seed)
    log_weights = -np.log1p(-rng.random(num_partitions)) / params.quantity_exponent
    return _split_by_log_weights(len(labels), log_weights, params.min_partition_size, rng)


def partition_summary(
    labels: np.ndarray,
    partitions: Sequence[np.ndarray],
    num_classes: int,
    feature_skew: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Summarise how heterogeneous the partitions are: sizes, classes and label skew.

    Label skew is the earth mover's distance (EMD) between each client's label
    distribution ``q`` and the label distribution ``p`` of all partitions together.
    Labels are categories with no order, so the ground distance is 0/1 (moving mass
    between any two different classes costs 1). Under that ground distance the EMD
    equals the total variation distance ``0.5 * sum(|q - p|)``, which lies in [0, 1]:
    0 when the client has the global label mix, close to 1 when it contains only a
    class that is rare globally. The L1 distance ``sum(|q - p|)`` is twice this value.

    Parameters
    ----------
    labels : numpy.ndarray
        1-D integer class labels that the partition indices point into.
    partitions : sequence of numpy.ndarray
        Indices into `labels`, one array per client.
    num_classes : int
        Number of classes, so labels must lie in ``0..num_classes-1``.
    feature_skew : dict or None
        Per-client input transform from `fedlab.data.feature_skew.feature_skew_record`,
        copied into the summary under ``"feature_skew"`` when given.

    Returns
    -------
    dict
        JSON-serialisable summary with keys

        - ``num_partitions``, ``num_samples``;
        - ``sizes`` (per client), ``min_size``, ``max_size``, ``mean_size`` and
          ``size_cv``, the coefficient of variation of the sizes (population standard
          deviation over the mean, 0 when there are no samples);
        - ``class_counts`` (per client, a list of `num_classes` counts),
          ``classes_per_partition`` (distinct classes per client),
          ``mean_classes_per_partition``, ``min_classes_per_partition`` and
          ``max_classes_per_partition``;
        - ``global_label_distribution`` (`num_classes` fractions), ``label_emd`` (per
          client, None for an empty client, which has no label distribution),
          ``mean_label_emd`` and ``max_label_emd`` over the non-empty clients, and
          ``label_emd_ground_distance`` (``"0/1"``);
        - ``feature_skew`` when `feature_skew` is given.
    """
    labels = check_labels(labels)
    _check_int("num_classes", num_classes, minimum=1)
    if labels.size > 0 and labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1} for num_classes={num_classes}, "
            f"got maximum {labels.max()}"
        )
    class_counts = np.zeros((len(partitions), num_classes), dtype=np.int64)
    for client, part in enumerate(partitions):
        part_labels = labels[np.asarray(part, dtype=np.int64)]
        class_counts[client] = np.bincount(part_labels, minlength=num_classes)
    sizes = class_counts.sum(axis=1)
    classes_per_partition = (class_counts > 0).sum(axis=1)
    empty = len(partitions) == 0
    global_distribution, label_emd = _label_emd(class_counts)
    known_emd = [value for value in label_emd if value is not None]
    mean_size = 0.0 if empty else float(sizes.mean())
    summary: dict[str, Any] = {
        "num_partitions": len(partitions),
        "num_samples": int(sizes.sum()),
        "sizes": sizes.tolist(),
        "class_counts": class_counts.tolist(),
        "classes_per_partition": classes_per_partition.tolist(),
        "min_size": 0 if empty else int(sizes.min()),
        "max_size": 0 if empty else int(sizes.max()),
        "mean_size": mean_size,
        "size_cv": float(sizes.std() / mean_size) if mean_size > 0 else 0.0,
        "mean_classes_per_partition": 0.0 if empty else float(classes_per_partition.mean()),
        "min_classes_per_partition": 0 if empty else int(classes_per_partition.min()),
        "max_classes_per_partition": 0 if empty else int(classes_per_partition.max()),
        "global_label_distribution": global_distribution.tolist(),
        "label_emd": label_emd,
        "mean_label_emd": float(np.mean(known_emd)) if known_emd else 0.0,
        "max_label_emd": float(np.max(known_emd)) if known_emd else 0.0,
        "label_emd_ground_distance": "0/1",
    }
    if feature_skew is not None:
        summary["feature_skew"] = dict(feature_skew)
    return summary


def heterogeneity_scalars(summary: dict[str, Any]) -> dict[str, Any]:
    """Select the few numbers of a `partition_summary` that compare runs at a glance.

    Returns
    -------
    dict
        ``mean_label_emd``, ``max_label_emd``, ``mean_classes_per_client``,
        ``size_cv``, and from ``summary["feature_skew"]`` (``none`` and 0 when the
        summary has none) ``feature_skew``, ``feature_skew_strength`` and
        ``feature_skew_mean_level``.
    """
    feature_skew = summary.get("feature_skew") or {}
    levels = feature_skew.get("levels") or []
    return {
        "mean_label_emd": summary["mean_label_emd"],
        "max_label_emd": summary["max_label_emd"],
        "mean_classes_per_client": summary["mean_classes_per_partition"],
        "size_cv": summary["size_cv"],
        "feature_skew": feature_skew.get("kind", "none"),
        "feature_skew_strength": float(feature_skew.get("strength", 0.0)),
        "feature_skew_mean_level": float(np.mean(levels)) if levels else 0.0,
    }


@dataclass(frozen=True, eq=False)
class PartitionManifest:
    """Contents of a partition manifest file written by `save_manifest`.

    Attributes
    ----------
    partitions : list of numpy.ndarray
        int64 indices per client, as saved.
    seed : int
        Seed the partitions were made with.
    partitioner : str
        Registered partitioner name.
    params : PartitionParams
        Partitioner settings.
    extra : dict
        Caller-supplied JSON metadata (dataset name, pool size, ...).
    """

    partitions: list[np.ndarray]
    seed: int
    partitioner: str
    params: PartitionParams
    extra: dict[str, Any] = field(default_factory=dict)


def save_manifest(
    path: str | os.PathLike[str],
    partitions: Sequence[np.ndarray],
    seed: int,
    partitioner: str,
    params: PartitionParams,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the partitions and their settings to a JSON file atomically.

    Besides the partitions and `params`, the file records the per-client feature-skew
    levels under ``"feature_skew"`` (see `fedlab.data.feature_skew.feature_skew_record`),
    which follow from `params`, the seed and the number of partitions.

    The JSON goes to a temporary file in the destination folder, which then replaces
    `path` with ``os.replace``, so readers see either the old file or the complete
    new one. Missing parent folders are created.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    partitions : sequence of numpy.ndarray
        Integer indices per client.
    seed : int
        Seed the partitions were made with.
    partitioner : str
        Partitioner name.
    params : PartitionParams
        Partitioner settings.
    extra : dict or None
        JSON-serialisable metadata stored under ``"extra"``.

    Raises
    ------
    TypeError
        If `extra` is not a dict or contains values that JSON cannot encode.
    """
    if not isinstance(params, PartitionParams):
        raise TypeError(f"params must be a PartitionParams, got {type(params).__name__}")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise TypeError(f"extra must be a dict of JSON values, got {type(extra).__name__}")
    document = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "partitioner": str(partitioner),
        "seed": int(seed),
        "params": asdict(params),
        "num_partitions": len(partitions),
        "sizes": [len(part) for part in partitions],
        "partitions": [np.asarray(part, dtype=np.int64).tolist() for part in partitions],
        "feature_skew": feature_skew_record(
            params.feature_skew,
            params.feature_skew_strength,
            params.feature_skew_levels,
            len(partitions),
            int(seed),
        ),
        "extra": extra,
    }
    try:
        text = json.dumps(document)
    except (TypeError, ValueError) as error:
        raise TypeError(f"extra must contain only JSON-serialisable values: {error}") from error

    destination = Path(path)
    atomic_write_text(destination, text)
    logger.info(
        "saved %d partitions (%s, seed %d) to %s", len(partitions), partitioner, seed, destination
    )


def load_manifest(path: str | os.PathLike[str]) -> PartitionManifest:
    """Read a manifest written by `save_manifest`.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is not valid JSON or lacks a manifest field.
    """
    source = Path(path)
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"partition manifest {source} is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"partition manifest {source} must contain a JSON object")
    required = ("partitioner", "seed", "params", "partitions")
    missing = [key for key in required if key not in document]
    if missing:
        raise ValueError(f"partition manifest {source} lacks the field(s) {', '.join(missing)}")
    version = document.get("format_version", MANIFEST_FORMAT_VERSION)
    if version != MANIFEST_FORMAT_VERSION:
        raise ValueError(
            f"partition manifest {source} has format_version {version}, but this version of "
            f"fedlab reads format_version {MANIFEST_FORMAT_VERSION}"
        )
    try:
        params = PartitionParams(**document["params"])
        partitions = [
            np.asarray(part, dtype=np.int64).reshape(-1) for part in document["partitions"]
        ]
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"partition manifest {source} has invalid params or partitions: {error}"
        ) from error
    return PartitionManifest(
        partitions=partitions,
        seed=int(document["seed"]),
        partitioner=str(document["partitioner"]),
        params=params,
        extra=dict(document.get("extra") or {}),
    )


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _check_request(
    labels: np.ndarray, num_partitions: int, seed: int, params: PartitionParams
) -> np.ndarray:
    labels = check_labels(labels)
    check_seed(seed)
    _check_int("num_partitions", num_partitions, minimum=1)
    if not isinstance(params, PartitionParams):
        raise TypeError(f"params must be a PartitionParams, got {type(params).__name__}")
    if num_partitions * params.min_partition_size > len(labels):
        raise ValueError(
            f"num_partitions={num_partitions} (num-clients) times min_partition_size="
            f"{params.min_partition_size} (min-partition-size) exceeds the {len(labels)} samples "
            "to partition. Lower either value"
        )
    return labels


def _label_emd(class_counts: np.ndarray) -> tuple[np.ndarray, list[float | None]]:
    """Return the global label distribution and each client's EMD (0/1 ground distance) to it."""
    total = class_counts.sum(axis=0)
    num_samples = int(total.sum())
    if num_samples == 0:
        return np.zeros(class_counts.shape[1]), [None] * len(class_counts)
    global_distribution = total / num_samples
    distances: list[float | None] = []
    for counts in class_counts:
        size = int(counts.sum())
        if size == 0:
            distances.append(None)
            continue
        distances.append(float(0.5 * np.abs(counts / size - global_distribution).sum()))
    return global_distribution, distances


def _check_real(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _draw_dirichlet_owners(
    class_positions: np.ndarray,
    num_classes: int,
    num_partitions: int,
    alpha: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Return the client of every sample after one Dir(alpha) draw per class."""
    owners = np.empty(len(class_positions), dtype=np.int64)
    concentration = np.full(num_partitions, alpha)
    for position in range(num_classes):
        members = rng.permutation(np.flatnonzero(class_positions == position))
        proportions = rng.dirichlet(concentration)
        if not np.all(np.isfinite(proportions)) or proportions.sum() <= 0:
            # Guard against underflow at tiny alpha: give the whole class to one client.
            proportions = np.zeros(num_partitions)
            proportions[rng.integers(num_partitions)] = 1.0
        bounds = np.floor(np.cumsum(proportions) * len(members)).astype(np.int64)
        bounds = np.clip(bounds, 0, len(members))
        bounds[-1] = len(members)
        counts = np.diff(bounds, prepend=0)
        owners[members] = np.repeat(np.arange(num_partitions), counts)
    return owners


def _fill_short_partitions(
    owners: np.ndarray,
    class_positions: np.ndarray,
    num_classes: int,
    num_partitions: int,
    minimum: int,
    rng: np.random.Generator,
) -> None:
    """Move samples in `owners` until every client has at least `minimum` samples.

    Requires ``num_partitions * minimum <= len(owners)``, which guarantees that a
    client above the minimum exists while any client is below it.
    """
    counts = np.zeros((num_partitions, num_classes), dtype=np.int64)
    np.add.at(counts, (owners, class_positions), 1)
    sizes = counts.sum(axis=1)
    for receiver in np.argsort(sizes, kind="stable"):
        while sizes[receiver] < minimum:
            surplus = np.maximum(sizes - minimum, 0)
            held = counts[receiver] > 0
            preferred = counts * (surplus > 0)[:, None] * held[None, :]
            if preferred.any():
                donor, position = np.unravel_index(np.argmax(preferred), preferred.shape)
            else:
                # No donor has a class the receiver has (or the receiver is empty),
                # so take the largest class block of the largest partition.
                donor = int(np.argmax(sizes))
                position = int(np.argmax(counts[donor]))
            amount = int(min(minimum - sizes[receiver], surplus[donor], counts[donor, position]))
            candidates = np.flatnonzero((owners == donor) & (class_positions == position))
            moved = rng.choice(candidates, size=amount, replace=False)
            owners[moved] = receiver
            counts[donor, position] -= amount
            counts[receiver, position] += amount
            sizes[donor] -= amount
            sizes[receiver] += amount


def _assign_classes(
    num_classes: int, num_partitions: int, per_client: int, rng: np.random.Generator
) -> list[list[int]]:
    """Return, per class position, the sorted clients that hold it.

    Requires ``num_partitions * per_client >= num_classes`` and
    ``per_client <= num_classes``.
    """
    client_classes: list[set[int]] = [set() for _ in range(num_partitions)]
    holder_counts = np.zeros(num_classes, dtype=np.int64)
    # Deal every class once, round-robin, so each class has a holder. No client gets
    # more than per_client classes because num_classes <= num_partitions * per_client.
    for slot, position in enumerate(rng.permutation(num_classes)):
        client_classes[slot % num_partitions].add(int(position))
        holder_counts[position] += 1
    for client in rng.permutation(num_partitions):
        chosen = client_classes[client]
        while len(chosen) < per_client:
            open_positions = np.array([p for p in range(num_classes) if p not in chosen])
            open_counts = holder_counts[open_positions]
            least_held = open_positions[open_counts == open_counts.min()]
            position = int(rng.choice(least_held))
            chosen.add(position)
            holder_counts[position] += 1
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for client, chosen in enumerate(client_classes):
        for position in chosen:
            holders[position].append(client)
    return holders


def _quantity_sizes(num_samples: int, log_weights: np.ndarray, minimum: int) -> np.ndarray:
    """Turn client weights into integer sizes that sum to `num_samples`, each >= `minimum`.

    The real-valued sizes are ``max(minimum, scale * w_i)``, with the one `scale` that
    makes them sum to `num_samples`. Clients above the minimum therefore keep the
    ratios of their weights. Largest-remainder rounding then makes the sizes integers.
    Requires ``len(log_weights) * minimum <= num_samples``.
    """
    # Weights relative to the largest one cannot overflow, even for a large sigma.
    weights = np.exp(log_weights - log_weights.max())
    num_clients = len(weights)

    # 1. Find the scale. If the k smallest weights sit at the minimum, the rest share
    # num_samples - k * minimum in proportion to their weights. The solution uses the
    # first k for which the (k+1)-th smallest client ends up at or above the minimum.
    # Such a k exists: k = num_clients - 1 qualifies because the largest weight is 1
    # and num_samples - (num_clients - 1) * minimum >= minimum.
    ascending = np.sort(weights)
    weight_left = np.cumsum(ascending[::-1])[::-1]
    for clamped in range(num_clients):
        scale = (num_samples - clamped * minimum) / weight_left[clamped]
        if scale * ascending[clamped] >= minimum:
            break
    exact = np.maximum(float(minimum), scale * weights)

    # 2. Round down, then give the samples left over to the largest fractional parts.
    sizes = np.floor(exact).astype(np.int64)
    leftover = num_samples - int(sizes.sum())
    by_fraction = np.argsort(-(exact - np.floor(exact)), kind="stable")
    if leftover > 0:
        sizes[by_fraction[:leftover]] += 1
    while leftover < 0:
        # Rounding error can only push the floors a sample or two over the total.
        largest = int(np.argmax(sizes))
        sizes[largest] -= 1
        leftover += 1
    return sizes


def _split_by_log_weights(
    num_samples: int, log_weights: np.ndarray, minimum: int, rng: np.random.Generator
) -> list[np.ndarray]:
    sizes = _quantity_sizes(num_samples, log_weights, minimum)
    order = rng.permutation(num_samples).astype(np.int64)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def _owners_to_partitions(owners: np.ndarray, num_partitions: int) -> list[np.ndarray]:
    # A stable sort by owner keeps each client's indices in ascending order.
    order = np.argsort(owners, kind="stable").astype(np.int64)
    bounds = np.cumsum(np.bincount(owners, minlength=num_partitions))[:-1]
    return list(np.split(order, bounds))


__all__ = [
    "MANIFEST_FORMAT_VERSION",
    "PARTITIONERS",
    "PartitionManifest",
    "PartitionParams",
    "Partitioner",
    "heterogeneity_scalars",
    "load_manifest",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity_lognormal",
    "partition_quantity_powerlaw",
    "partition_shards",
    "partition_summary",
    "save_manifest",
]
