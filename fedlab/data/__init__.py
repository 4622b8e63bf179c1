"""Datasets, stratified splits and client partitioners for federated simulations."""

from fedlab.data.datasets import (
    DATASETS,
    IMAGE_EXTENSIONS,
    DatasetBundle,
    DatasetLoader,
    ImageDataset,
    load_dataset,
)
from fedlab.data.federated import FederatedData, build_federated_data
from fedlab.data.partition import (
    MANIFEST_FORMAT_VERSION,
    PARTITIONERS,
    PartitionManifest,
    PartitionParams,
    Partitioner,
    load_manifest,
    partition_summary,
    save_manifest,
)
from fedlab.data.splits import Splits, split_indices, stratified_subsample

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "MANIFEST_FORMAT_VERSION",
    "PARTITIONERS",
    "DatasetBundle",
    "DatasetLoader",
    "FederatedData",
    "ImageDataset",
    "PartitionManifest",
    "PartitionParams",
    "Partitioner",
    "Splits",
    "build_federated_data",
    "load_dataset",
    "load_manifest",
    "partition_summary",
    "save_manifest",
    "split_indices",
    "stratified_subsample",
]
