"""Tests for client partitioners, partition summaries and manifests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from fedlab.data import (
    PARTITIONERS,
    PartitionParams,
    load_dataset,
    load_manifest,
    partition_summary,
    save_manifest,
)
from fedlab.data.partition import _fill_short_partitions


@pytest.fixture(scope="module")
def mnist_labels() -> np.ndarray:
    return load_dataset("mnist").train.labels.numpy()


def uneven_labels() -> np.ndarray:
    """Return 600 labels over 10 classes with class sizes from 15 to 105."""
    labels = np.repeat(np.arange(10), np.arange(15, 115, 10))
    return np.random.default_rng(11).permutation(labels)


def assert_valid_partitions(partitions: list[np.ndarray], num_samples: int) -> None:
    combined = np.concatenate(partitions)
    assert len(combined) == num_samples, "partitions must cover every index exactly once"
    assert np.array_equal(np.sort(combined), np.arange(num_samples))
    for part in partitions:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "indices within a partition must be sorted"


# ---------------------------------------------------------------------------
# Contract shared by every registered partitioner
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitioner_contract(name: str) -> None:
    labels = uneven_labels()
    params = PartitionParams(alpha=0.3, min_partition_size=8, shards_per_client=3)
    partition = PARTITIONERS.get(name)

    first = partition(labels, 12, 7, params)
    again = partition(labels, 12, 7, params)
    other_seed = partition(labels, 12, 8, params)

    assert len(first) == 12
    assert_valid_partitions(first, len(labels))
    assert min(len(part) for part in first) >= 8
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other_seed))


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitioner_rejects_too_many_clients(name: str) -> None:
    labels = uneven_labels()

    with pytest.raises(ValueError) as raised:
        PARTITIONERS.get(name)(labels, 61, 0, PartitionParams(min_partition_size=10))

    message = str(raised.value)
    assert "num_partitions=61" in message
    assert "min_partition_size=10" in message
    assert "600" in message


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitioner_rejects_zero_clients(name: str) -> None:
    with pytest.raises(ValueError, match="num_partitions must be >= 1, got 0"):
        PARTITIONERS.get(name)(uneven_labels(), 0, 0, PartitionParams())


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitioner_rejects_negative_seed(name: str) -> None:
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        PARTITIONERS.get(name)(uneven_labels(), 3, -1, PartitionParams())


def test_unknown_partitioner_lists_names() -> None:
    with pytest.raises(ValueError, match="dirichlet"):
        PARTITIONERS.get("label_skew")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("alpha", 0.0, "got 0.0"),
        ("alpha", -1.0, "got -1.0"),
        ("alpha", float("inf"), "got inf"),
        ("min_partition_size", -1, "min_partition_size must be >= 0, got -1"),
        ("shards_per_client", 0, "shards_per_client must be >= 1, got 0"),
    ],
)
def test_params_reject_invalid_values(field: str, value: float, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        PartitionParams(**{field: value})

    assert fragment in str(raised.value)


def test_params_reject_float_sizes() -> None:
    with pytest.raises(TypeError, match="min_partition_size"):
        PartitionParams(min_partition_size=2.5)


def test_params_are_hashable() -> None:
    assert hash(PartitionParams(alpha=0.5)) == hash(PartitionParams(alpha=0.5))


# ---------------------------------------------------------------------------
# iid
# ---------------------------------------------------------------------------


def test_iid_sizes_differ_by_at_most_one() -> None:
    labels = np.zeros(103, dtype=np.int64)

    partitions = PARTITIONERS.get("iid")(labels, 10, 0, PartitionParams())

    sizes = [len(part) for part in partitions]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == 103


# ---------------------------------------------------------------------------
# dirichlet
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1e-3, 0.01])
@pytest.mark.parametrize("min_partition_size", [1, 20])
def test_dirichlet_terminates_at_tiny_alpha(
    mnist_labels: np.ndarray, alpha: float, min_partition_size: int
) -> None:
    params = PartitionParams(alpha=alpha, min_partition_size=min_partition_size)

    start = time.perf_counter()
    partitions = PARTITIONERS.get("dirichlet")(mnist_labels, 100, 0, params)
    elapsed = time.perf_counter() - start

    assert len(partitions) == 100
    assert_valid_partitions(partitions, len(mnist_labels))
    assert min(len(part) for part in partitions) >= min_partition_size
    assert elapsed < 2.0


def test_dirichlet_filling_keeps_label_skew(mnist_labels: np.ndarray) -> None:
    params = PartitionParams(alpha=1e-3, min_partition_size=20)

    partitions = PARTITIONERS.get("dirichlet")(mnist_labels, 100, 0, params)

    summary = partition_summary(mnist_labels, partitions, 10)
    # Filled clients take samples of classes they already hold, so most keep one class.
    assert summary["mean_classes_per_partition"] < 2.0


def test_dirichlet_smaller_alpha_fewer_classes(mnist_labels: np.ndarray) -> None:
    dirichlet = PARTITIONERS.get("dirichlet")

    skewed = dirichlet(mnist_labels, 20, 0, PartitionParams(alpha=0.05))
    uniform = dirichlet(mnist_labels, 20, 0, PartitionParams(alpha=100.0))

    skewed_classes = partition_summary(mnist_labels, skewed, 10)["mean_classes_per_partition"]
    uniform_classes = partition_summary(mnist_labels, uniform, 10)["mean_classes_per_partition"]
    assert skewed_classes < 5.0
    assert uniform_classes == 10.0


def test_dirichlet_exact_fit_minimum() -> None:
    labels = np.repeat(np.arange(3), 10)

    partitions = PARTITIONERS.get("dirichlet")(
        labels, 6, 0, PartitionParams(alpha=0.01, min_partition_size=5)
    )

    assert [len(part) for part in partitions] == [5] * 6
    assert_valid_partitions(partitions, 30)


def test_dirichlet_single_client_gets_everything() -> None:
    labels = np.array([2, 0, 1, 1, 0])

    partitions = PARTITIONERS.get("dirichlet")(labels, 1, 0, PartitionParams())

    assert partitions[0].tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------


def test_shards_gives_exactly_k_classes() -> None:
    labels = np.repeat(np.arange(10), 30)
    params = PartitionParams(shards_per_client=3)

    partitions = PARTITIONERS.get("shards")(labels, 7, 4, params)

    held = [set(labels[part].tolist()) for part in partitions]
    assert [len(classes) for classes in held] == [3] * 7
    assert set().union(*held) == set(range(10))
    assert_valid_partitions(partitions, len(labels))


def test_shards_splits_class_among_holders() -> None:
    labels = np.repeat(np.arange(4), 10)

    partitions = PARTITIONERS.get("shards")(labels, 4, 0, PartitionParams(shards_per_client=2))

    summary = partition_summary(labels, partitions, 4)
    # 8 slots over 4 classes: each class has 2 holders, who get 5 samples each.
    assert summary["sizes"] == [10, 10, 10, 10]
    for counts in summary["class_counts"]:
        assert sorted(counts) == [0, 0, 5, 5]


def test_shards_rejects_k_above_classes() -> None:
    labels = np.repeat(np.arange(3), 5)

    with pytest.raises(ValueError) as raised:
        PARTITIONERS.get("shards")(labels, 2, 0, PartitionParams(shards_per_client=4))

    assert "shards_per_client=4" in str(raised.value)
    assert "3 classes" in str(raised.value)


def test_shards_rejects_uncovered_classes() -> None:
    labels = np.repeat(np.arange(10), 5)

    with pytest.raises(ValueError) as raised:
        PARTITIONERS.get("shards")(labels, 3, 0, PartitionParams(shards_per_client=2))

    message = str(raised.value)
    assert "num_partitions=3" in message
    assert "shards_per_client=2" in message
    assert "10 classes" in message


def test_shards_rejects_class_with_too_few_samples() -> None:
    labels = np.array([0] * 20 + [1])

    with pytest.raises(ValueError, match="class 1 has 1 samples"):
        PARTITIONERS.get("shards")(labels, 4, 0, PartitionParams(shards_per_client=2))


def test_shards_rejects_partition_below_minimum() -> None:
    # Two holders per class, so the holders of class 1 get one sample each.
    labels = np.array([0] * 20 + [1] * 2)
    params = PartitionParams(shards_per_client=1, min_partition_size=3)

    with pytest.raises(ValueError) as raised:
        PARTITIONERS.get("shards")(labels, 4, 0, params)

    assert "only 1 samples" in str(raised.value)
    assert "min_partition_size=3" in str(raised.value)


# ---------------------------------------------------------------------------
# Summary and manifest
# ---------------------------------------------------------------------------


def test_partition_summary_counts() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    partitions = [np.array([0, 1, 3]), np.array([2, 4, 5])]

    summary = partition_summary(labels, partitions, 4)

    assert summary["sizes"] == [3, 3]
    assert summary["class_counts"] == [[2, 0, 1, 0], [0, 1, 2, 0]]
    assert summary["classes_per_partition"] == [2, 2]
    assert summary["num_samples"] == 6
    assert summary["min_size"] == 3
    assert summary["mean_classes_per_partition"] == 2.0
    json.dumps(summary)


def test_partition_summary_rejects_label_above_classes() -> None:
    with pytest.raises(ValueError, match="num_classes=2"):
        partition_summary(np.array([0, 2]), [np.array([0, 1])], 2)


def test_manifest_round_trip(tmp_path: Path) -> None:
    labels = uneven_labels()
    params = PartitionParams(alpha=0.2, min_partition_size=3)
    partitions = PARTITIONERS.get("dirichlet")(labels, 5, 9, params)
    path = tmp_path / "runs" / "manifest.json"

    save_manifest(path, partitions, 9, "dirichlet", params, {"dataset": "toy", "pool": 600})
    manifest = load_manifest(path)

    assert manifest.seed == 9
    assert manifest.partitioner == "dirichlet"
    assert manifest.params == params
    assert manifest.extra == {"dataset": "toy", "pool": 600}
    assert len(manifest.partitions) == 5
    for saved, loaded in zip(partitions, manifest.partitions):
        assert loaded.dtype == np.int64
        assert np.array_equal(saved, loaded)
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.json"]


def test_manifest_overwrite_replaces_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    save_manifest(path, [np.array([0, 1])], 1, "iid", PartitionParams())

    save_manifest(path, [np.array([1]), np.array([0])], 2, "iid", PartitionParams())

    manifest = load_manifest(path)
    assert manifest.seed == 2
    assert [part.tolist() for part in manifest.partitions] == [[1], [0]]


def test_manifest_unserialisable_extra_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    save_manifest(path, [np.array([0])], 1, "iid", PartitionParams())
    before = path.read_text()

    with pytest.raises(TypeError, match="JSON"):
        save_manifest(path, [np.array([0])], 2, "iid", PartitionParams(), {"bad": object()})

    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_manifest_invalid_json_names_path(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("{not json")

    with pytest.raises(ValueError, match="manifest.json"):
        load_manifest(path)


def test_manifest_missing_field_named(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"partitioner": "iid", "seed": 0, "params": {}}))

    with pytest.raises(ValueError, match="partitions"):
        load_manifest(path)


def test_dirichlet_filling_prefers_held_classes() -> None:
    # Client 0 has 10 samples of each class, client 1 one sample of class 1,
    # client 2 five samples of class 0.
    class_positions = np.array([0] * 10 + [1] * 10 + [1] + [0] * 5)
    owners = np.array([0] * 20 + [1] + [2] * 5)

    _fill_short_partitions(owners, class_positions, 2, 3, 4, np.random.default_rng(0))

    assert np.bincount(owners).tolist() == [17, 4, 5]
    assert set(class_positions[owners == 1].tolist()) == {1}
    assert np.array_equal(owners[21:], [2] * 5)


def test_dirichlet_filling_empty_client_takes_one_class() -> None:
    class_positions = np.array([0] * 6 + [1] * 5 + [2] * 4)
    owners = np.zeros(15, dtype=np.int64)

    _fill_short_partitions(owners, class_positions, 3, 2, 3, np.random.default_rng(0))

    assert np.bincount(owners).tolist() == [12, 3]
    assert set(class_positions[owners == 1].tolist()) == {0}
