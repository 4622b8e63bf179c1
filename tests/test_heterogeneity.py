"""Tests for quantity skew, feature skew and the heterogeneity summary."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedlab.config import ConfigError, RunConfig
from fedlab.data import (
    PARTITIONERS,
    FederatedData,
    ImageDataset,
    PartitionParams,
    apply_feature_skew,
    build_federated_data,
    feature_skew_levels,
    heterogeneity_scalars,
    load_manifest,
    partition_summary,
    save_manifest,
)
from fedlab.data.partition import _quantity_sizes
from fedlab.federation import federated_data, partition_params

QUANTITY_PARTITIONERS = ["quantity-lognormal", "quantity-powerlaw"]


def balanced_labels(num_samples: int = 3000, num_classes: int = 10) -> np.ndarray:
    labels = np.arange(num_samples) % num_classes
    return np.random.default_rng(5).permutation(labels)


def size_cv(partitions: list[np.ndarray]) -> float:
    sizes = np.array([len(part) for part in partitions], dtype=np.float64)
    return float(sizes.std() / sizes.mean())


def random_images(count: int, side: int = 6, seed: int = 0) -> ImageDataset:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 1, side, side), generator=generator, dtype=torch.uint8)
    return ImageDataset("toy", images, torch.arange(count) % 2, num_classes=2)


def build_digits(params: PartitionParams, num_partitions: int = 3) -> FederatedData:
    return build_federated_data("digits", "", 0, 0.2, 0.1, 300, "iid", num_partitions, 0, params)


# ---------------------------------------------------------------------------
# Quantity skew
# ---------------------------------------------------------------------------


def test_lognormal_cv_grows_with_sigma() -> None:
    labels = balanced_labels()
    partition = PARTITIONERS.get("quantity-lognormal")

    cvs = [
        size_cv(partition(labels, 20, 3, PartitionParams(quantity_sigma=sigma)))
        for sigma in (0.25, 0.5, 1.0, 2.0)
    ]

    assert cvs == sorted(cvs)
    assert len(set(cvs)) == 4


def test_lognormal_zero_sigma_gives_equal_sizes() -> None:
    partitions = PARTITIONERS.get("quantity-lognormal")(
        balanced_labels(1003), 10, 0, PartitionParams(quantity_sigma=0.0)
    )

    sizes = [len(part) for part in partitions]
    assert max(sizes) - min(sizes) <= 1


def test_powerlaw_cv_shrinks_with_exponent() -> None:
    labels = balanced_labels()
    partition = PARTITIONERS.get("quantity-powerlaw")

    cvs = [
        size_cv(partition(labels, 20, 3, PartitionParams(quantity_exponent=exponent)))
        for exponent in (0.75, 1.5, 3.0, 10.0)
    ]

    assert cvs == sorted(cvs, reverse=True)
    assert len(set(cvs)) == 4


@pytest.mark.parametrize("name", QUANTITY_PARTITIONERS)
def test_quantity_seeded_draw_reproducible(name: str) -> None:
    labels = balanced_labels()
    params = PartitionParams(quantity_sigma=1.5, quantity_exponent=1.0)

    first = PARTITIONERS.get(name)(labels, 8, 4, params)
    again = PARTITIONERS.get(name)(labels, 8, 4, params)
    other = PARTITIONERS.get(name)(labels, 8, 5, params)

    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert [len(part) for part in first] != [len(part) for part in other]


@pytest.mark.parametrize("name", QUANTITY_PARTITIONERS)
def test_quantity_assigns_every_sample_once(name: str) -> None:
    labels = balanced_labels()
    params = PartitionParams(quantity_sigma=3.0, quantity_exponent=0.5, min_partition_size=0)

    partitions = PARTITIONERS.get(name)(labels, 15, 1, params)

    combined = np.concatenate(partitions)
    assert len(combined) == len(labels)
    assert np.array_equal(np.sort(combined), np.arange(len(labels)))
    assert all(part.dtype == np.int64 for part in partitions)


@pytest.mark.parametrize("name", QUANTITY_PARTITIONERS)
def test_quantity_honours_min_partition_size(name: str) -> None:
    labels = balanced_labels()
    # Strong skew, so the smallest clients would be far below 50 without the minimum.
    params = PartitionParams(quantity_sigma=5.0, quantity_exponent=0.3, min_partition_size=50)

    sizes = [len(part) for part in PARTITIONERS.get(name)(labels, 20, 2, params)]

    assert min(sizes) == 50
    assert sum(sizes) == len(labels)


@pytest.mark.parametrize("name", QUANTITY_PARTITIONERS)
def test_quantity_fills_exact_minimum(name: str) -> None:
    # 10 clients times the minimum of 30 is all 300 samples, so every size is 30.
    params = PartitionParams(quantity_sigma=4.0, quantity_exponent=0.5, min_partition_size=30)

    sizes = [len(part) for part in PARTITIONERS.get(name)(balanced_labels(300), 10, 0, params)]

    assert sizes == [30] * 10


@pytest.mark.parametrize("name", QUANTITY_PARTITIONERS)
def test_quantity_impossible_minimum_rejected(name: str) -> None:
    with pytest.raises(ValueError) as raised:
        PARTITIONERS.get(name)(balanced_labels(300), 10, 0, PartitionParams(min_partition_size=31))

    message = str(raised.value)
    assert "num_partitions=10" in message
    assert "min_partition_size=31" in message
    assert "300 samples" in message


@pytest.mark.parametrize("name", QUANTITY_PARTITIONERS)
def test_quantity_keeps_labels_near_global_mix(name: str) -> None:
    labels = balanced_labels(10_000)
    params = PartitionParams(quantity_sigma=0.5, quantity_exponent=3.0, min_partition_size=500)

    partitions = PARTITIONERS.get(name)(labels, 5, 0, params)
    summary = partition_summary(labels, partitions, 10)

    assert summary["min_classes_per_partition"] == 10
    assert summary["max_label_emd"] < 0.1


def test_quantity_sizes_follow_weights() -> None:
    sizes = _quantity_sizes(100, np.log([1.0, 2.0, 7.0]), minimum=0)

    assert sizes.tolist() == [10, 20, 70]


def test_quantity_sizes_raise_small_clients_to_minimum() -> None:
    # Client 0 is raised to 15. Clients 1 and 2 share the other 85 in the ratio 2:7,
    # which is 18.89 and 66.11, rounded by largest remainder to 19 and 66.
    sizes = _quantity_sizes(100, np.log([1.0, 2.0, 7.0]), minimum=15)

    assert sizes.tolist() == [15, 19, 66]


def test_quantity_sizes_survive_huge_log_weights() -> None:
    sizes = _quantity_sizes(100, np.array([0.0, 800.0, 1600.0]), minimum=5)

    assert sizes.tolist() == [5, 5, 90]


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("quantity_sigma", -0.5, "quantity_sigma must be a finite number >= 0"),
        ("quantity_sigma", float("nan"), "quantity_sigma must be a finite number, got nan"),
        ("quantity_exponent", 0.0, "quantity_exponent must be a finite number > 0"),
        ("feature_skew", "blur", "none, rotation, noise"),
        ("feature_skew_levels", "linear", "even, random"),
        ("feature_skew_strength", -1.0, "feature_skew_strength must be a finite number >= 0"),
    ],
)
def test_params_reject_invalid_skew(field: str, value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        PartitionParams(**{field: value})

    assert fragment in str(raised.value)


def test_params_reject_rotation_above_360() -> None:
    with pytest.raises(ValueError, match="<= 360, got 400"):
        PartitionParams(feature_skew="rotation", feature_skew_strength=400.0)


# ---------------------------------------------------------------------------
# Heterogeneity summary
# ---------------------------------------------------------------------------


def test_summary_emd_zero_for_identical_mix() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    partitions = [np.array([0, 2, 4]), np.array([1, 3, 5])]

    summary = partition_summary(labels, partitions, 3)

    assert summary["label_emd"] == [0.0, 0.0]
    assert summary["mean_label_emd"] == 0.0
    assert summary["max_label_emd"] == 0.0
    assert summary["size_cv"] == 0.0


def test_summary_emd_hand_computed() -> None:
    # Global counts 3, 3, 2 give p = (3/8, 3/8, 2/8).
    # Client A = (1, 0, 0): 0.5 * (5/8 + 3/8 + 2/8) = 5/8.
    # Client B = (1/2, 1/2, 0): 0.5 * (1/8 + 1/8 + 2/8) = 2/8.
    # Client C = (0, 1/2, 1/2): 0.5 * (3/8 + 1/8 + 2/8) = 3/8.
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    partitions = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5, 6, 7])]

    summary = partition_summary(labels, partitions, 3)

    assert summary["global_label_distribution"] == pytest.approx([3 / 8, 3 / 8, 2 / 8])
    assert summary["label_emd"] == pytest.approx([5 / 8, 2 / 8, 3 / 8])
    assert summary["mean_label_emd"] == pytest.approx((5 / 8 + 2 / 8 + 3 / 8) / 3)
    assert summary["max_label_emd"] == pytest.approx(5 / 8)
    assert summary["label_emd_ground_distance"] == "0/1"


def test_summary_sizes_and_classes_hand_computed() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    partitions = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5, 6, 7])]

    summary = partition_summary(labels, partitions, 3)

    # Sizes 2, 2, 4: mean 8/3, population std sqrt(8/9), so CV = sqrt(2) / 4.
    assert summary["mean_size"] == pytest.approx(8 / 3)
    assert summary["size_cv"] == pytest.approx(math.sqrt(2) / 4)
    assert summary["classes_per_partition"] == [1, 2, 2]
    assert summary["min_classes_per_partition"] == 1
    assert summary["max_classes_per_partition"] == 2
    assert summary["mean_classes_per_partition"] == pytest.approx(5 / 3)


def test_summary_empty_client_has_no_emd() -> None:
    labels = np.array([0, 1])
    partitions = [np.array([0]), np.array([], dtype=np.int64), np.array([1])]

    summary = partition_summary(labels, partitions, 2)

    assert summary["label_emd"] == [0.5, None, 0.5]
    assert summary["mean_label_emd"] == 0.5
    json.dumps(summary)


def test_summary_skewed_beats_iid() -> None:
    labels = balanced_labels()
    iid = PARTITIONERS.get("iid")(labels, 10, 0, PartitionParams())
    shards = PARTITIONERS.get("shards")(labels, 10, 0, PartitionParams(shards_per_client=2))

    iid_emd = partition_summary(labels, iid, 10)["mean_label_emd"]
    shards_emd = partition_summary(labels, shards, 10)["mean_label_emd"]

    # Two classes out of ten balanced ones: 0.5 * (2 * (1/2 - 1/10) + 8 * 1/10) = 0.8.
    assert shards_emd == pytest.approx(0.8)
    assert iid_emd < 0.1


def test_heterogeneity_scalars_pick_summary_values() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    partitions = [np.array([0, 1]), np.array([2, 3]), np.array([4, 5, 6, 7])]
    skew = {"kind": "noise", "strength": 0.2, "levels": [0.0, 0.1, 0.2]}

    scalars = heterogeneity_scalars(partition_summary(labels, partitions, 3, feature_skew=skew))

    assert scalars["mean_label_emd"] == pytest.approx(10 / 24)
    assert scalars["max_label_emd"] == pytest.approx(5 / 8)
    assert scalars["mean_classes_per_client"] == pytest.approx(5 / 3)
    assert scalars["size_cv"] == pytest.approx(math.sqrt(2) / 4)
    assert scalars["feature_skew"] == "noise"
    assert scalars["feature_skew_strength"] == 0.2
    assert scalars["feature_skew_mean_level"] == pytest.approx(0.1)


def test_heterogeneity_scalars_without_feature_skew() -> None:
    summary = partition_summary(np.array([0, 1]), [np.array([0, 1])], 2)

    scalars = heterogeneity_scalars(summary)

    assert scalars["feature_skew"] == "none"
    assert scalars["feature_skew_mean_level"] == 0.0


# ---------------------------------------------------------------------------
# Feature skew
# ---------------------------------------------------------------------------


def test_rotation_by_90_matches_rot90() -> None:
    dataset = random_images(4)

    rotated = apply_feature_skew(dataset, "rotation", 90.0, seed=0, client=1)

    assert torch.equal(rotated.images, torch.rot90(dataset.images, 1, dims=(-2, -1)))
    assert torch.equal(rotated.labels, dataset.labels)


def test_rotation_by_45_keeps_centre_pixel() -> None:
    images = torch.zeros((1, 1, 5, 5), dtype=torch.uint8)
    images[0, 0, 2, :] = 200
    dataset = ImageDataset("toy", images, torch.zeros(1, dtype=torch.int64), num_classes=1)

    rotated = apply_feature_skew(dataset, "rotation", 45.0, seed=0, client=0).images

    assert rotated[0, 0, 2, 2] == 200
    assert not torch.equal(rotated, images)


def test_zero_level_returns_dataset_unchanged() -> None:
    dataset = random_images(3)

    assert apply_feature_skew(dataset, "rotation", 0.0, seed=0, client=0) is dataset
    assert apply_feature_skew(dataset, "noise", 0.0, seed=0, client=0) is dataset
    assert apply_feature_skew(dataset, "none", 5.0, seed=0, client=0) is dataset


def test_noise_std_matches_level() -> None:
    images = torch.full((200, 1, 8, 8), 128, dtype=torch.uint8)
    dataset = ImageDataset("gray", images, torch.zeros(200, dtype=torch.int64), num_classes=1)

    noisy = apply_feature_skew(dataset, "noise", 0.1, seed=0, client=0).images

    residual = (noisy.float() - images.float()) / 255.0
    assert residual.std().item() == pytest.approx(0.1, rel=0.05)
    assert abs(residual.mean().item()) < 0.01


def test_noise_reproducible_and_per_client() -> None:
    dataset = random_images(10)

    first = apply_feature_skew(dataset, "noise", 0.1, seed=3, client=1).images
    again = apply_feature_skew(dataset, "noise", 0.1, seed=3, client=1).images
    other_client = apply_feature_skew(dataset, "noise", 0.1, seed=3, client=2).images
    other_seed = apply_feature_skew(dataset, "noise", 0.1, seed=4, client=1).images

    assert torch.equal(first, again)
    assert not torch.equal(first, other_client)
    assert not torch.equal(first, other_seed)


def test_even_levels_span_strength() -> None:
    levels = feature_skew_levels("noise", 0.3, "even", 4, seed=0)

    assert levels.tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert feature_skew_levels("rotation", 90.0, "even", 1, seed=0).tolist() == [0.0]
    assert feature_skew_levels("none", 90.0, "even", 3, seed=0).tolist() == [0.0, 0.0, 0.0]


def test_random_levels_seeded_and_bounded() -> None:
    first = feature_skew_levels("rotation", 60.0, "random", 50, seed=1)
    again = feature_skew_levels("rotation", 60.0, "random", 50, seed=1)
    other = feature_skew_levels("rotation", 60.0, "random", 50, seed=2)

    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.min() >= 0.0
    assert first.max() <= 60.0
    assert len(np.unique(first)) == 50


def test_client_dataset_rotates_each_client() -> None:
    params = PartitionParams(feature_skew="rotation", feature_skew_strength=90.0)
    data = build_digits(params)

    for client, angle in enumerate([0.0, 45.0, 90.0]):
        original = data.train.subset(data.partitions[client]).images
        transformed = data.client_dataset(client).images
        assert data.feature_skew["levels"][client] == angle
        if angle == 0.0:
            assert torch.equal(transformed, original)
        elif angle == 90.0:
            assert torch.equal(transformed, torch.rot90(original, 1, dims=(-2, -1)))
        else:
            assert not torch.equal(transformed, original)


def test_client_dataset_noise_levels_differ() -> None:
    params = PartitionParams(feature_skew="noise", feature_skew_strength=0.2)
    data = build_digits(params)

    residual_stds = []
    for client in range(3):
        original = data.train.subset(data.partitions[client]).images.float()
        residual = (data.client_dataset(client).images.float() - original) / 255.0
        residual_stds.append(residual.std().item())

    assert residual_stds[0] == 0.0
    assert 0.0 < residual_stds[1] < residual_stds[2]
    assert torch.equal(data.client_dataset(2).images, data.client_dataset(2).images)


def test_feature_skew_leaves_test_set() -> None:
    plain = build_digits(PartitionParams())
    rotated = build_digits(PartitionParams(feature_skew="rotation", feature_skew_strength=90.0))
    noisy = build_digits(PartitionParams(feature_skew="noise", feature_skew_strength=0.3))

    for data in (rotated, noisy):
        assert torch.equal(data.test.images, plain.test.images)
        assert data.public is not None
        assert plain.public is not None
        assert torch.equal(data.public.images, plain.public.images)
        assert torch.equal(data.train.images, plain.train.images)


def test_client_app_data_is_rotated() -> None:
    from fedlab.client_app import ClientData

    config = RunConfig(
        dataset="digits", partitioner="iid", num_clients=3, max_pool_samples=300,
        feature_skew="rotation", feature_skew_strength=90.0,
    )
    data = federated_data(config)

    client = ClientData(config, partition_id=2)

    original = data.train.subset(data.partitions[2]).float_images()
    assert torch.equal(client.images.cpu(), torch.rot90(original, 1, dims=(-2, -1)))


def test_zero_strength_logs_warning(caplog: pytest.LogCaptureFixture) -> None:
    params = PartitionParams(feature_skew="noise", feature_skew_strength=0.0)

    with caplog.at_level(logging.WARNING, logger="fedlab.data.federated"):
        data = build_digits(params, num_partitions=2)

    assert "leaves every client's data unchanged" in caplog.text
    assert torch.equal(data.client_dataset(1).images, data.train.subset(data.partitions[1]).images)


def test_federated_heterogeneity_reports_skew() -> None:
    params = PartitionParams(feature_skew="rotation", feature_skew_strength=60.0)
    data = build_digits(params, num_partitions=4)

    scalars = data.heterogeneity()
    summary = data.partition_summary()

    assert scalars["feature_skew"] == "rotation"
    assert scalars["feature_skew_strength"] == 60.0
    assert scalars["feature_skew_mean_level"] == pytest.approx(30.0)
    assert summary["feature_skew"]["levels"] == pytest.approx([0.0, 20.0, 40.0, 60.0])
    assert summary["feature_skew"]["unit"] == "degrees"
    json.dumps(scalars)


def test_manifest_records_feature_skew(tmp_path: Path) -> None:
    params = PartitionParams(feature_skew="rotation", feature_skew_strength=90.0)
    partitions = [np.array([0, 1]), np.array([2]), np.array([3, 4])]
    path = tmp_path / "manifest.json"

    save_manifest(path, partitions, 7, "iid", params)

    document = json.loads(path.read_text())
    assert document["params"]["feature_skew"] == "rotation"
    assert document["params"]["feature_skew_strength"] == 90.0
    assert document["feature_skew"]["levels"] == [0.0, 45.0, 90.0]
    assert document["feature_skew"]["unit"] == "degrees"
    assert load_manifest(path).params == params


def test_manifest_without_new_params_loads(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    old_params = {"alpha": 0.5, "min_partition_size": 2, "shards_per_client": 2}
    path.write_text(
        json.dumps({"partitioner": "iid", "seed": 0, "params": old_params, "partitions": [[0]]})
    )

    params = load_manifest(path).params

    assert params.alpha == 0.5
    assert params.feature_skew == "none"


# ---------------------------------------------------------------------------
# Run config
# ---------------------------------------------------------------------------


def test_config_passes_skew_to_params() -> None:
    config = RunConfig.from_run_config(
        {
            "partitioner": "quantity-powerlaw",
            "quantity-exponent": 2.0,
            "quantity-sigma": 0.5,
            "feature-skew": "noise",
            "feature-skew-strength": 0.1,
            "feature-skew-levels": "random",
        }
    )

    params = partition_params(config)

    assert params.quantity_exponent == 2.0
    assert params.quantity_sigma == 0.5
    assert params.feature_skew == "noise"
    assert params.feature_skew_strength == 0.1
    assert params.feature_skew_levels == "random"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"quantity-sigma": -1.0}, "quantity-sigma=-1.0: must be a finite number >= 0"),
        ({"quantity-exponent": 0.0}, "quantity-exponent=0.0: must be a finite number > 0"),
        ({"feature-skew": "blur"}, "feature-skew='blur': must be one of none, rotation, noise"),
        ({"feature-skew-levels": "linear"}, "feature-skew-levels='linear': must be one of even"),
        ({"feature-skew-strength": -0.1}, "feature-skew-strength=-0.1: must be a finite number"),
        (
            {"feature-skew": "rotation", "feature-skew-strength": 400.0},
            "feature-skew-strength=400.0: must be at most 360 degrees",
        ),
    ],
)
def test_config_rejects_bad_skew(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        RunConfig.from_run_config(overrides)

    assert fragment in str(raised.value)


def test_config_accepts_quantity_partitioners() -> None:
    for name in QUANTITY_PARTITIONERS:
        assert RunConfig.from_run_config({"partitioner": name}).partitioner == name
