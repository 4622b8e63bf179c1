"""Per-device data folders: how a SuperNode on a real device finds its training data.

A device data folder contains three files:

``images.npy``
    uint8 array of shape (N, C, H, W), pixel values 0..255.
``labels.npy``
    int64 array of shape (N,), class ids in ``0..num_classes-1``.
``meta.json``
    ``format`` (``"fedlab-device-data"``), ``format_version`` (1), ``dataset`` (the
    run-config dataset name of the data), ``num_classes``, ``image_shape`` ([C, H, W]),
    ``num_samples`` and ``partition_id`` (the id the client reports, unique per device
    in a run). Optional: ``num_partitions``, ``seed`` and ``source``, the origin of the
    data. :func:`prepare_device_data` stores its command and the run-config settings
    that determined the split in ``source``.

A SuperNode points its ClientApp at a folder with ``--node-config "data-path=<folder>"``.
The arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlab.config import RunConfig
from fedlab.data import ImageDataset

logger = logging.getLogger(__name__)

FORMAT_NAME = "fedlab-device-data"
FORMAT_VERSION = 1
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
META_FILE = "meta.json"

#: Node-config key that points a ClientApp at its device data folder.
DATA_PATH_KEY = "data-path"

# Number of classes and (channels, default side) of the registered datasets, used to check
# a folder against a run without the dataset itself. None means the class count depends on
# the files (class folders), so it is not checked.
_DATASET_SPECS: dict[str, tuple[int | None, int, int]] = {
    "mnist": (10, 1, 28),
    "digits": (10, 1, 8),
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
    "imagefolder": (None, 3, 64),
    "imagenette": (None, 3, 128),
    "tinyimagenet": (None, 3, 64),
}

# Run-config keys that determine the split and partitions written by prepare_device_data.
_SPLIT_KEYS = ("dataset", "image-size", "test-fraction", "public-fraction", "max-pool-samples",
               "partitioner", "num-clients", "seed", "min-partition-size", "feature-skew",
               "feature-skew-strength", "feature-skew-levels")
_PARTITIONER_KEYS = {"dirichlet": ("alpha",), "shards": ("shards-per-client",)}


@dataclass(frozen=True)
class DeviceDataMeta:
    """Contents of a folder's ``meta.json``."""

    dataset: str
    num_classes: int
    image_shape: tuple[int, int, int]
    num_samples: int
    partition_id: int
    num_partitions: int | None = None
    seed: int | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "image_shape": list(self.image_shape),
            "num_samples": self.num_samples,
            "partition_id": self.partition_id,
            "num_partitions": self.num_partitions,
            "seed": self.seed,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, values: object, path: Path) -> DeviceDataMeta:
        """Parse and check a ``meta.json`` object; `path` names the file in errors."""
        if not isinstance(values, dict):
            raise ValueError(f"{path} must contain a JSON object, got {type(values).__name__}")

        if values.get("format") != FORMAT_NAME:
            raise ValueError(
                f"{path} has format={values.get('format')!r}, expected {FORMAT_NAME!r}; "
                "write the folder with `fedlab prepare-device-data` or in the documented format"
            )
        if values.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format_version={values.get('format_version')!r}, but this fedlab "
                f"reads version {FORMAT_VERSION}; prepare the folder again with this version"
            )

        dataset = values.get("dataset")
        if not isinstance(dataset, str) or not dataset:
            raise ValueError(f"{path}: 'dataset' must be a non-empty string, got {dataset!r}")
        shape = values.get("image_shape")
        if (
            not isinstance(shape, list)
            or len(shape) != 3
            or not all(_is_int(side) and side >= 1 for side in shape)
        ):
            raise ValueError(f"{path}: 'image_shape' must be [C, H, W] of ints >= 1, got {shape!r}")

        source = values.get("source", {})
        if source is None:
            source = {}
        if not isinstance(source, dict):
            raise ValueError(f"{path}: 'source' must be a JSON object, got {source!r}")

        return cls(
            dataset=dataset,
            num_classes=_require_int(values, "num_classes", path, minimum=1),
            image_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            num_samples=_require_int(values, "num_samples", path, minimum=1),
            partition_id=_require_int(values, "partition_id", path, minimum=0),
            num_partitions=_optional_int(values, "num_partitions", path, minimum=1),
            seed=_optional_int(values, "seed", path, minimum=0),
            source=source,
        )


def save_device_data(folder: Path, data: ImageDataset, meta: DeviceDataMeta) -> Path:
    """Write `data` and `meta` as a device data folder and return the folder.

    Raises
    ------
    FileExistsError
        If `folder` already exists, so that prepared data are never overwritten.
    ValueError
        If `meta` does not describe `data`.
    """
    folder = Path(folder)
    if data.num_classes != meta.num_classes or data.image_shape != meta.image_shape:
        raise ValueError(
            f"meta describes {meta.num_classes} classes of shape {meta.image_shape}, but the "
            f"data have {data.num_classes} classes of shape {data.image_shape}"
        )
    if len(data) != meta.num_samples:
        raise ValueError(f"meta has num_samples={meta.num_samples}, but the data contain {len(data)}")
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; choose another output folder or remove it")

    folder.mkdir(parents=True)
    np.save(folder / IMAGES_FILE, data.images.numpy(), allow_pickle=False)
    np.save(folder / LABELS_FILE, data.labels.numpy(), allow_pickle=False)
    (folder / META_FILE).write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    return folder


def load_device_data(folder: Path | str) -> tuple[DeviceDataMeta, ImageDataset]:
    """Read and check a device data folder.

    Raises
    ------
    FileNotFoundError
        If the folder or one of its three files is missing.
    ValueError
        If ``meta.json`` is malformed or the arrays do not match it.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"device data folder {folder} not found; create it with `fedlab prepare-device-data` "
            f"or point node config {DATA_PATH_KEY} at an existing folder"
        )
    for name in (META_FILE, IMAGES_FILE, LABELS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} not found; a device data folder contains {META_FILE}, "
                f"{IMAGES_FILE} and {LABELS_FILE}"
            )

    meta_path = folder / META_FILE
    try:
        meta = DeviceDataMeta.from_json(json.loads(meta_path.read_text()), meta_path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
    images = _load_array(folder / IMAGES_FILE)
    labels = _load_array(folder / LABELS_FILE)

    # The arrays must match meta.json before ImageDataset checks them against each other.
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"{folder / IMAGES_FILE} must be a uint8 array of shape (N, C, H, W), got "
            f"{images.dtype} of shape {images.shape}"
        )
    if tuple(images.shape[1:]) != meta.image_shape:
        raise ValueError(
            f"{folder / IMAGES_FILE} contains images of shape {tuple(images.shape[1:])}, but "
            f"{META_FILE} has image_shape={list(meta.image_shape)}"
        )
    if labels.dtype != np.int64 or labels.shape != (len(images),):
        raise ValueError(
            f"{folder / LABELS_FILE} must be an int64 array of shape ({len(images)},), got "
            f"{labels.dtype} of shape {labels.shape}"
        )
    if len(images) != meta.num_samples:
        raise ValueError(
            f"{folder} contains {len(images)} samples, but {META_FILE} has num_samples={meta.num_samples}"
        )
    if labels.min() < 0 or labels.max() >= meta.num_classes:
        raise ValueError(
            f"{folder / LABELS_FILE} has labels {int(labels.min())}..{int(labels.max())}, "
            f"outside 0..{meta.num_classes - 1} for num_classes={meta.num_classes}"
        )
    dataset = ImageDataset(
        name=f"{meta.dataset}/device",
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(np.ascontiguousarray(labels)),
        num_classes=meta.num_classes,
    )
    return meta, dataset


def check_matches_run(meta: DeviceDataMeta, config: RunConfig, folder: Path | str) -> None:
    """Check that a device data folder contains data of the run's dataset.

    The dataset name, the number of classes and the image shape must match, because
    the client's model and the server's model are built from them. Other split
    settings recorded in ``source`` only log a warning when they differ, since a
    device may hold data that no partitioner produced.

    Raises
    ------
    ValueError
        On a mismatch; the message names both values and how to fix it.
    """
    fix = (
        "prepare the folder for this run with `fedlab prepare-device-data` and the same "
        "--run-config, or change the run config"
    )
    if meta.dataset != config.dataset:
        raise ValueError(
            f"device data folder {folder} contains dataset {meta.dataset!r}, but the run has "
            f"dataset={config.dataset!r}; {fix}"
        )

    spec = _DATASET_SPECS.get(config.dataset)
    if spec is not None:
        num_classes, channels, default_side = spec
        side = config.image_size or default_side
        expected_shape = (channels, side, side)
        if num_classes is not None and meta.num_classes != num_classes:
            raise ValueError(
                f"device data folder {folder} has num_classes={meta.num_classes}, but dataset "
                f"{config.dataset!r} has {num_classes} classes; {fix}"
            )
        if meta.image_shape != expected_shape:
            raise ValueError(
                f"device data folder {folder} has image_shape={list(meta.image_shape)}, but the "
                f"run (dataset={config.dataset!r} image-size={config.image_size}) expects "
                f"{list(expected_shape)}; {fix}"
            )
    elif config.image_size and meta.image_shape[1:] != (config.image_size, config.image_size):
        raise ValueError(
            f"device data folder {folder} has image_shape={list(meta.image_shape)}, but the run "
            f"has image-size={config.image_size}; {fix}"
        )
    # NOTE: datasets read from class folders (imagefolder, imagenette, tinyimagenet) have a
    # class count that depends on the files, so a wrong num_classes is only caught when the
    # server checks the reply's shapes.

    prepared = meta.source.get("run_config")
    if isinstance(prepared, dict):
        expected = split_settings(config)
        differing = [
            f"{key}={prepared[key]!r} (run: {value!r})"
            for key, value in expected.items()
            if key in prepared and prepared[key] != value
        ]
        if differing:
            logger.warning(
                "Device data folder %s was prepared with other split settings than this run: %s. "
                "The server's partition manifest will not describe this device's data",
                folder, ", ".join(differing),
            )


def split_settings(config: RunConfig) -> dict[str, Any]:
    """Return the run-config values that determine the split and the partitions."""
    values = config.to_run_config()
    keys = _SPLIT_KEYS + _PARTITIONER_KEYS.get(config.partitioner, ())
    return {key: values[key] for key in keys if key in values}


def prepare_device_data(config: RunConfig, out_dir: Path) -> list[Path]:
    """Write ``out_dir/client-<i>/`` for every partition of the run's clients' pool.

    The split and partitions are those of a simulation with the same config, read
    from :func:`fedlab.federation.federated_data`. Only the clients' partitions are
    written: never the server test set or the public set.

    Raises
    ------
    FileExistsError
        If a ``client-<i>`` folder already exists in `out_dir`.
    """
    from fedlab.federation import federated_data  # loads the dataset registry

    out_dir = Path(out_dir)
    folders = [out_dir / f"client-{i}" for i in range(config.num_clients)]
    existing = [str(folder) for folder in folders if folder.exists()]
    if existing:
        raise FileExistsError(
            f"{', '.join(existing[:3])}{' ...' if len(existing) > 3 else ''} already exist; "
            "choose another --out or remove them"
        )

    data = federated_data(config)
    source = {"command": "fedlab prepare-device-data", "run_config": split_settings(config)}
    for partition_id, folder in enumerate(folders):
        local = data.client_dataset(partition_id)
        meta = DeviceDataMeta(
            dataset=config.dataset,
            num_classes=local.num_classes,
            image_shape=local.image_shape,
            num_samples=len(local),
            partition_id=partition_id,
            num_partitions=config.num_clients,
            seed=config.seed,
            source=source,
        )
        save_device_data(folder, local, meta)
        logger.info("Wrote %s samples of partition %s to %s", len(local), partition_id, folder)
    return folders


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path} is not a plain .npy array (object arrays are not read): {err}") from err


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(values: dict[str, Any], key: str, path: Path, minimum: int) -> int:
    value = values.get(key)
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{path}: {key!r} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _optional_int(values: dict[str, Any], key: str, path: Path, minimum: int) -> int | None:
    if values.get(key) is None:
        return None
    return _require_int(values, key, path, minimum)
