"""Tests for dataset loading, stratified splits and federated data assembly."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedlab.data import (
    DATASETS,
    DatasetBundle,
    FederatedData,
    ImageDataset,
    PartitionParams,
    build_federated_data,
    check_partition_request,
    load_dataset,
    read_labels,
    split_indices,
    stratified_subsample,
)

# ---------------------------------------------------------------------------
# Fixture writers
# ---------------------------------------------------------------------------


def write_cifar_batch(path: Path, labels: list[int], label_key: bytes) -> np.ndarray:
    """Write a CIFAR-style pickle whose pixel (channel c, 0, 0) of image i is 10*i + c."""
    data = np.zeros((len(labels), 3072), dtype=np.uint8)
    for i in range(len(labels)):
        data[i, 0] = 10 * i
        data[i, 1024] = 10 * i + 1
        data[i, 2048] = 10 * i + 2
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump({b"data": data, label_key: labels, b"batch_label": b"test"}, handle)
    return data


def write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    for batch in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{batch}", [batch % 10, 9, 0, 3], b"labels")
    write_cifar_batch(folder / "test_batch", [1, 2, 3], b"labels")
    return folder


def write_image(
    path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 12), mode: str = "RGB"
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)


def write_image_tree(root: Path) -> None:
    write_image(root / "train" / "dog" / "a.jpg", (0, 0, 255))
    write_image(root / "train" / "dog" / "b.JPEG", (0, 0, 255))
    write_image(root / "train" / "dog" / "c.png", (0, 0, 255))
    write_image(root / "train" / "cat" / "a.png", (255, 0, 0))
    write_image(root / "train" / "cat" / "b.png", (128, 128, 128), mode="L")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    write_image(root / "val" / "cat" / "v.png", (255, 0, 0))
    write_image(root / "val" / "dog" / "v.png", (0, 0, 255))


def write_tinyimagenet(root: Path, wnids: list[str] | None) -> None:
    write_image(root / "train" / "n01" / "images" / "n01_0.JPEG", (255, 0, 0), size=(64, 64))
    write_image(root / "train" / "n01" / "images" / "n01_1.JPEG", (255, 0, 0), size=(64, 64))
    write_image(root / "train" / "n02" / "images" / "n02_0.JPEG", (0, 255, 0), size=(64, 64))
    (root / "train" / "n01" / "n01_boxes.txt").write_text("n01_0.JPEG\t0\t0\t10\t10\n")
    write_image(root / "val" / "images" / "val_0.JPEG", (0, 255, 0), size=(64, 64))
    write_image(root / "val" / "images" / "val_1.JPEG", (255, 0, 0), size=(64, 64))
    (root / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02\t0\t0\t63\t63\nval_1.JPEG\tn01\t1\t2\t30\t40\n"
    )
    if wnids is not None:
        (root / "wnids.txt").write_text("\n".join(wnids) + "\n")


# ---------------------------------------------------------------------------
# ImageDataset
# ---------------------------------------------------------------------------


def make_dataset(num_samples: int = 6) -> ImageDataset:
    images = torch.arange(num_samples * 4, dtype=torch.uint8).reshape(num_samples, 1, 2, 2)
    labels = torch.arange(num_samples, dtype=torch.int64) % 3
    return ImageDataset(name="toy", images=images, labels=labels, num_classes=3)


def test_image_dataset_helpers() -> None:
    dataset = make_dataset()

    assert len(dataset) == 6
    assert dataset.image_shape == (1, 2, 2)

    subset = dataset.subset(np.array([4, 1]))
    assert len(subset) == 2
    assert subset.labels.tolist() == [1, 1]
    assert torch.equal(subset.images[0], dataset.images[4])
    assert subset.num_classes == 3


def test_float_images_scaled_to_unit_range() -> None:
    dataset = ImageDataset(
        name="toy",
        images=torch.tensor([0, 51, 255, 255], dtype=torch.uint8).reshape(1, 1, 2, 2),
        labels=torch.tensor([0]),
        num_classes=1,
    )

    values = dataset.float_images()

    assert values.dtype == torch.float32
    assert values.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0, 1.0])
    assert dataset.float_images([0]).shape == (1, 1, 2, 2)
    assert dataset.images.dtype == torch.uint8


def test_image_dataset_rejects_float_images() -> None:
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset("bad", torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64), 2)


def test_image_dataset_rejects_label_out_of_range() -> None:
    with pytest.raises(ValueError, match="0..1"):
        ImageDataset(
            "bad", torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 2]), 2
        )


def test_image_dataset_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="match images"):
        ImageDataset(
            "bad", torch.zeros(3, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), 2
        )


def test_subset_rejects_out_of_range_index() -> None:
    with pytest.raises(IndexError, match="0..5"):
        make_dataset().subset([6])


# ---------------------------------------------------------------------------
# Bundled datasets and the registry
# ---------------------------------------------------------------------------


def test_mnist_loads_500_per_class() -> None:
    bundle = load_dataset()

    assert bundle.test is None
    assert len(bundle.train) == 5000
    assert bundle.train.image_shape == (1, 28, 28)
    assert bundle.train.images.dtype == torch.uint8
    assert bundle.train.num_classes == 10
    assert np.bincount(bundle.train.labels.numpy()).tolist() == [500] * 10
    assert int(bundle.train.images.max()) == 255


def test_digits_loads_1797_8x8() -> None:
    bundle = load_dataset("digits")

    assert bundle.test is None
    assert len(bundle.train) == 1797
    assert bundle.train.image_shape == (1, 8, 8)
    assert int(bundle.train.images.min()) == 0
    assert int(bundle.train.images.max()) == 255
    assert sorted(set(bundle.train.labels.tolist())) == list(range(10))


def test_image_size_resizes_at_load() -> None:
    bundle = load_dataset("digits", image_size=16)

    assert bundle.train.image_shape == (1, 16, 16)
    assert bundle.train.images.dtype == torch.uint8
    assert len(bundle.train) == 1797


def test_registry_lists_all_datasets() -> None:
    expected = {
        "mnist", "digits", "cifar10", "cifar100", "imagefolder", "imagenette", "tinyimagenet"
    }
    assert expected <= set(DATASETS.names())


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="mnist"):
        load_dataset("mnits")


@pytest.mark.parametrize("image_size", [-1, -64])
def test_negative_image_size_rejected(image_size: int) -> None:
    with pytest.raises(ValueError, match=str(image_size)):
        load_dataset("digits", image_size=image_size)


def test_non_integer_image_size_rejected() -> None:
    with pytest.raises(TypeError, match="image_size"):
        load_dataset("digits", image_size=16.0)


# ---------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_reads_pickle_batches(tmp_path: Path, point_at_folder: bool) -> None:
    folder = write_cifar10(tmp_path)
    data_root = folder if point_at_folder else tmp_path

    bundle = load_dataset("cifar10", str(data_root))

    assert len(bundle.train) == 20
    assert bundle.train.image_shape == (3, 32, 32)
    assert bundle.train.num_classes == 10
    assert bundle.train.labels[:4].tolist() == [1, 9, 0, 3]
    assert bundle.train.labels[16:].tolist() == [5, 9, 0, 3]
    assert bundle.test is not None
    assert bundle.test.labels.tolist() == [1, 2, 3]
    # Rows are channel-major: values 0..1023 are red, 1024..2047 green, the rest blue.
    assert bundle.train.images[1, :, 0, 0].tolist() == [10, 11, 12]
    assert int(bundle.train.images[1, 0, 0, 1]) == 0


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    write_cifar_batch(folder / "train", [99, 0, 42], b"fine_labels")
    write_cifar_batch(folder / "test", [7], b"fine_labels")

    bundle = load_dataset("cifar100", str(tmp_path), image_size=8)

    assert bundle.train.num_classes == 100
    assert bundle.train.labels.tolist() == [99, 0, 42]
    assert bundle.train.image_shape == (3, 8, 8)
    assert bundle.test is not None
    assert bundle.test.labels.tolist() == [7]


def test_cifar10_missing_folder_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        load_dataset("cifar10", str(tmp_path))

    message = str(raised.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "by hand" in message


def test_cifar10_missing_batch_names_file(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()

    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar_empty_data_root_rejected() -> None:
    with pytest.raises(ValueError, match="data_root"):
        load_dataset("cifar100", "")


def test_cifar_malformed_batch_names_file(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    with (folder / "test_batch").open("wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, handle)

    with pytest.raises(ValueError, match="test_batch"):
        load_dataset("cifar10", str(tmp_path))


def test_cifar_truncated_pickle_names_file(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(b"\x80\x04garbage")

    with pytest.raises(ValueError, match="data_batch_2"):
        load_dataset("cifar10", str(tmp_path))


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------
# Labels without images
# ---------------------------------------------------------------------------


def write_cifar100(root: Path) -> None:
    folder = root / "cifar-100-python"
    write_cifar_batch(folder / "train", [5, 99, 5, 0], b"fine_labels")
    write_cifar_batch(folder / "test", [1, 2], b"fine_labels")


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("mnist", None),
        ("digits", None),
        ("cifar10", write_cifar10),
        ("cifar100", write_cifar100),
        ("imagefolder", write_image_tree),
        ("imagenette", write_image_tree),
        ("tinyimagenet", lambda root: write_tinyimagenet(root, ["n02", "n01"])),
    ],
)
def test_read_labels_matches_the_loader(tmp_path: Path, name: str, write) -> None:
    if write is not None:
        write(tmp_path)

    labels = read_labels(name, str(tmp_path))
    bundle = load_dataset(name, str(tmp_path), image_size=8)

    assert labels is not None
    assert labels.train.dtype == np.int64
    assert labels.train.tolist() == bundle.train.labels.tolist()
    assert labels.has_test == (bundle.test is not None)


def test_read_labels_opens_no_image(tmp_path: Path) -> None:
    write_image_tree(tmp_path)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")

    labels = read_labels("imagefolder", str(tmp_path))

    assert labels is not None
    assert labels.train.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="broken.png"):
        load_dataset("imagefolder", str(tmp_path), image_size=8)


def test_read_labels_checks_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        read_labels("cifar10", str(tmp_path))
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        read_labels("cifar10", str(tmp_path))
    with pytest.raises(ValueError, match="data-root"):
        read_labels("imagenette", "")
    with pytest.raises(ValueError, match="mnist"):
        read_labels("no-such-dataset")


def test_read_labels_of_a_dataset_without_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_toy(data_root: str, image_size: int) -> DatasetBundle:
        return DatasetBundle(train=make_dataset(), test=None)

    # Registered for this test only; a registry has no removal.
    monkeypatch.setitem(DATASETS._entries, "toy", load_toy)

    assert read_labels("toy") is None


# ---------------------------------------------------------------------------


def test_imagefolder_reads_train_and_val(tmp_path: Path) -> None:
    write_image_tree(tmp_path)

    bundle = load_dataset("imagefolder", str(tmp_path), image_size=16)

    train = bundle.train
    assert train.num_classes == 2
    assert len(train) == 5
    assert train.image_shape == (3, 16, 16)
    # Classes follow sorted folder names (cat=0, dog=1), and files within a class are sorted.
    assert train.labels.tolist() == [0, 0, 1, 1, 1]
    assert train.images[0, :, 8, 8].tolist() == [255, 0, 0]
    assert train.images[1, :, 8, 8].tolist() == [128, 128, 128]
    assert bundle.test is not None
    assert bundle.test.labels.tolist() == [0, 1]


def test_imagefolder_default_size_is_64(tmp_path: Path) -> None:
    write_image_tree(tmp_path)

    bundle = load_dataset("imagefolder", str(tmp_path))

    assert bundle.train.image_shape == (3, 64, 64)


def test_imagenette_default_size_is_128(tmp_path: Path) -> None:
    write_image_tree(tmp_path)

    bundle = load_dataset("imagenette", str(tmp_path))

    assert bundle.train.image_shape == (3, 128, 128)
    assert bundle.test is not None
    assert bundle.test.image_shape == (3, 128, 128)


def test_imagefolder_without_val_has_no_test(tmp_path: Path) -> None:
    write_image(tmp_path / "train" / "a" / "x.png", (1, 2, 3))

    bundle = load_dataset("imagefolder", str(tmp_path), image_size=4)

    assert bundle.test is None
    assert len(bundle.train) == 1


def test_imagefolder_missing_train_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        load_dataset("imagefolder", str(tmp_path))

    assert str(tmp_path / "train") in str(raised.value)


def test_imagefolder_missing_root_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"

    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("imagenette", str(missing))


def test_imagefolder_empty_class_rejected(tmp_path: Path) -> None:
    write_image_tree(tmp_path)
    (tmp_path / "train" / "emu").mkdir()

    with pytest.raises(ValueError, match="emu"):
        load_dataset("imagefolder", str(tmp_path))


def test_imagefolder_corrupt_image_names_file(tmp_path: Path) -> None:
    write_image_tree(tmp_path)
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"not a png")

    with pytest.raises(ValueError, match="broken.png"):
        load_dataset("imagefolder", str(tmp_path))


def test_imagefolder_val_class_missing_from_train(tmp_path: Path) -> None:
    write_image_tree(tmp_path)
    write_image(tmp_path / "val" / "fox" / "v.png", (0, 0, 0))

    with pytest.raises(ValueError, match="fox"):
        load_dataset("imagefolder", str(tmp_path))


def test_tinyimagenet_follows_wnids_order(tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path, wnids=["n02", "n01"])

    bundle = load_dataset("tinyimagenet", str(tmp_path))

    assert bundle.train.image_shape == (3, 64, 64)
    assert bundle.train.num_classes == 2
    assert bundle.train.labels.tolist() == [0, 1, 1]
    assert bundle.test is not None
    assert bundle.test.labels.tolist() == [0, 1]
    # JPEG is lossy, so compare the dominant channel only.
    assert int(bundle.test.images[0, 1, 32, 32]) > 200
    assert int(bundle.test.images[0, 0, 32, 32]) < 50


def test_tinyimagenet_sorted_folders_without_wnids(tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path, wnids=None)

    bundle = load_dataset("tinyimagenet", str(tmp_path), image_size=32)

    assert bundle.train.labels.tolist() == [0, 0, 1]
    assert bundle.train.image_shape == (3, 32, 32)
    assert bundle.test is not None
    assert bundle.test.labels.tolist() == [1, 0]


def test_tinyimagenet_unknown_val_wnid_rejected(tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path, wnids=None)
    (tmp_path / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")

    with pytest.raises(ValueError, match="n99"):
        load_dataset("tinyimagenet", str(tmp_path))


def test_tinyimagenet_missing_annotations_names_path(tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path, wnids=None)
    (tmp_path / "val" / "val_annotations.txt").unlink()

    with pytest.raises(FileNotFoundError, match="val_annotations.txt"):
        load_dataset("tinyimagenet", str(tmp_path))


def test_tinyimagenet_missing_images_folder_names_path(tmp_path: Path) -> None:
    (tmp_path / "train" / "n01").mkdir(parents=True)

    with pytest.raises(FileNotFoundError) as raised:
        load_dataset("tinyimagenet", str(tmp_path))

    assert str(tmp_path / "train" / "n01" / "images") in str(raised.value)


def test_tinyimagenet_wnids_mismatch_rejected(tmp_path: Path) -> None:
    write_tinyimagenet(tmp_path, wnids=["n01", "n02", "n03"])

    with pytest.raises(ValueError, match="n03"):
        load_dataset("tinyimagenet", str(tmp_path))


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------


def mnist_like_labels() -> np.ndarray:
    return np.repeat(np.arange(10), 500)


def test_splits_disjoint_and_covering() -> None:
    labels = np.random.default_rng(3).integers(0, 7, size=1234)

    splits = split_indices(labels, 0.15, 0.1, seed=0)

    combined = np.concatenate([splits.test, splits.public, splits.pool])
    assert len(combined) == len(labels)
    assert np.array_equal(np.sort(combined), np.arange(len(labels)))
    for part in (splits.test, splits.public, splits.pool):
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)


def test_splits_stratified_counts() -> None:
    labels = mnist_like_labels()

    splits = split_indices(labels, 0.2, 0.1, seed=1)

    assert np.bincount(labels[splits.test]).tolist() == [100] * 10
    assert np.bincount(labels[splits.public]).tolist() == [50] * 10
    assert np.bincount(labels[splits.pool]).tolist() == [350] * 10


def test_splits_uneven_classes_keep_total() -> None:
    labels = np.array([0] * 7 + [1] * 13 + [2] * 30)

    splits = split_indices(labels, 0.1, 0.0, seed=0)

    assert len(splits.test) == 5
    counts = np.bincount(labels[splits.test], minlength=3)
    assert np.all(np.abs(counts - np.array([0.7, 1.3, 3.0])) < 1)


def test_splits_deterministic_in_seed() -> None:
    labels = mnist_like_labels()

    first = split_indices(labels, 0.2, 0.1, seed=5)
    second = split_indices(labels, 0.2, 0.1, seed=5)
    other = split_indices(labels, 0.2, 0.1, seed=6)

    assert np.array_equal(first.test, second.test)
    assert np.array_equal(first.public, second.public)
    assert np.array_equal(first.pool, second.pool)
    assert not np.array_equal(first.test, other.test)


def test_splits_zero_fractions_give_empty_sets() -> None:
    labels = mnist_like_labels()

    splits = split_indices(labels, 0.0, 0.0, seed=0)

    assert len(splits.test) == 0
    assert len(splits.public) == 0
    assert np.array_equal(splits.pool, np.arange(5000))


@pytest.mark.parametrize(
    ("test_fraction", "public_fraction", "fragment"),
    [
        (1.0, 0.0, "test_fraction must be in [0, 1), got 1.0"),
        (-0.1, 0.0, "got -0.1"),
        (0.0, float("nan"), "public_fraction"),
        (0.6, 0.4, "0.6 + 0.4"),
    ],
)
def test_splits_invalid_fractions_rejected(
    test_fraction: float, public_fraction: float, fragment: str
) -> None:
    with pytest.raises(ValueError) as raised:
        split_indices(mnist_like_labels(), test_fraction, public_fraction, seed=0)

    assert fragment in str(raised.value)


def test_splits_class_left_without_pool_rejected() -> None:
    labels = np.array([0] + [1] * 9)

    with pytest.raises(ValueError) as raised:
        split_indices(labels, 0.5, 0.0, seed=0)

    message = str(raised.value)
    assert "class 0 has 1 samples" in message
    assert "test_fraction=0.5" in message


def test_splits_reject_float_labels() -> None:
    with pytest.raises(TypeError, match="labels"):
        split_indices(np.array([0.0, 1.0]), 0.0, 0.0, seed=0)


def test_stratified_subsample_keeps_proportions() -> None:
    labels = np.array([0] * 300 + [1] * 100)

    chosen = stratified_subsample(labels, 40, seed=2)

    assert len(chosen) == 40
    assert len(np.unique(chosen)) == 40
    assert np.bincount(labels[chosen]).tolist() == [30, 10]


# ---------------------------------------------------------------------------
# Federated data
# ---------------------------------------------------------------------------


def build_mnist(seed: int = 0, partitioner: str = "dirichlet") -> FederatedData:
    return build_federated_data(
        dataset="mnist",
        data_root="",
        image_size=0,
        test_fraction=0.2,
        public_fraction=0.1,
        max_pool_samples=1000,
        partitioner=partitioner,
        num_partitions=10,
        seed=seed,
        params=PartitionParams(alpha=0.5, min_partition_size=5),
    )


def test_federated_data_sets_are_disjoint() -> None:
    data = build_mnist()
    labels = data.train.labels.numpy()

    assert len(data.test) == 1000
    assert data.public is not None
    assert len(data.public) == 500
    assert len(data.pool_indices) == 1000
    assert np.bincount(labels[data.pool_indices]).tolist() == [100] * 10

    combined = np.concatenate(data.partitions)
    assert np.array_equal(np.sort(combined), data.pool_indices)
    assert all(len(part) >= 5 for part in data.partitions)

    # The held-out sets come from the same seeded split, so recompute it to check overlap.
    splits = split_indices(labels, 0.2, 0.1, seed=0)
    assert not np.intersect1d(splits.test, data.pool_indices).size
    assert not np.intersect1d(splits.public, data.pool_indices).size
    assert torch.equal(data.test.images, data.train.images[splits.test])


def test_federated_data_cached_per_arguments() -> None:
    assert build_mnist() is build_mnist()
    assert build_mnist(seed=1) is not build_mnist()


def test_federated_data_indices_read_only() -> None:
    data = build_mnist(partitioner="iid")

    with pytest.raises(ValueError):
        data.pool_indices[0] = 1
    with pytest.raises(ValueError):
        data.partitions[0][0] = 1


def test_federated_client_dataset_matches_partition() -> None:
    data = build_mnist(partitioner="shards")

    client = data.client_dataset(3)

    assert len(client) == len(data.partitions[3])
    assert len(set(client.labels.tolist())) == 2
    with pytest.raises(ValueError, match="0..9"):
        data.client_dataset(10)


def test_federated_uses_official_test_split(tmp_path: Path) -> None:
    write_cifar10(tmp_path)

    data = build_federated_data(
        "cifar10", str(tmp_path), 0, 0.5, 0.1, 0, "iid", 3, 0, PartitionParams()
    )

    assert data.test.name == "cifar10/test"
    assert len(data.test) == 3
    assert data.public is not None
    assert len(data.public) == 2
    assert len(data.pool_indices) == 18
    assert sum(len(part) for part in data.partitions) == 18


def test_federated_without_test_split_needs_fraction() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        build_federated_data("digits", "", 0, 0.0, 0.0, 0, "iid", 2, 0, PartitionParams())


def test_federated_no_public_set() -> None:
    data = build_federated_data("digits", "", 0, 0.1, 0.0, 300, "iid", 4, 0, PartitionParams())

    assert data.public is None
    assert len(data.pool_indices) == 300
    assert data.num_partitions == 4


@pytest.mark.parametrize(
    ("partitioner", "clients", "params", "error"),
    [
        ("iid", 2, PartitionParams(min_partition_size=4), "exceeds the 5 samples"),
        ("shards", 1, PartitionParams(shards_per_client=1), "less than the 2 classes"),
        ("dirichlet", 2, PartitionParams(alpha=0.5, min_partition_size=1), None),
    ],
)
def test_partition_request_checked_from_labels(
    tmp_path: Path, partitioner: str, clients: int, params: PartitionParams, error: str | None
) -> None:
    # Five training images in two classes, and a val split.
    write_image_tree(tmp_path)
    labels = read_labels("imagefolder", str(tmp_path))
    assert labels is not None
    args = (0.0, 0.0, 0, partitioner, clients, 0, params)

    if error is None:
        check_partition_request("imagefolder", labels, *args)
        data = build_federated_data("imagefolder", str(tmp_path), 8, *args)
        assert data.num_partitions == clients
        return
    with pytest.raises(ValueError, match=error) as from_labels:
        check_partition_request("imagefolder", labels, *args)
    with pytest.raises(ValueError) as from_images:
        build_federated_data("imagefolder", str(tmp_path), 8, *args)
    assert str(from_labels.value) == str(from_images.value)


def test_partition_error_names_the_pool(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"client pool contains 300 of the 1797 training samples"):
        build_federated_data("digits", "", 0, 0.1, 0.0, 300, "iid", 4, 0, PartitionParams(min_partition_size=100))
    write_image(tmp_path / "train" / "a" / "x.png", (1, 2, 3))
    with pytest.raises(ValueError, match="raise test-fraction or add a val/ split"):
        build_federated_data("imagefolder", str(tmp_path), 4, 0.0, 0.0, 0, "iid", 1, 0, PartitionParams())
