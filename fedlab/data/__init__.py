"""Datasets, stratified splits and client partitioners for federated simulations."""

from fedlab.data.datasets import (
    DATASETS,
    IMAGE_EXTENSIONS,
    DatasetBundle,
    DatasetLabels,
    DatasetLoader,
    ImageDataset,
    load_dataset,
    read_labels,
)
from fedlab.data.feature_skew import (
    FEATURE_SKEW_LEVELS,
    FEATURE_SKEWS,
    apply_feature_skew,
    feature_skew_levels,
    feature_skew_record,
)
from fedlab.data.federated import FederatedData, build_federated_data, check_partition_request
from fedlab.data.partition import (
    MANIFEST_FORMAT_VERSION,
    PARTITIONERS,
    PartitionManifest,
    PartitionParams,
    Partitioner,
    heterogeneity_scalars,
    load_manifest,
    partition_summary,
    save_manifest,
)
from fedlab.data.splits import Splits, split_indices, stratified_subsample

__all__ = [
    "DATASETS",
    "FEATURE_SKEWS",
    "FEATURE_SKEW_LEVELS",
    "IMAGE_EXTENSIONS",
    "MANIFEST_FORMAT_VERSION",
    "PARTITIONERS",
    "DatasetBundle",
    "DatasetLabels",
    "DatasetLoader",
    "FederatedData",
    "ImageDataset",
    "PartitionManifest",
    "PartitionParams",
    "Partitioner",
    "Splits",
    "apply_feature_skew",
    "build_federated_data",
    "check_partition_request",
    "feature_skew_levels",
    "feature_skew_record",
    "heterogeneity_scalars",
    "load_dataset",
    "load_manifest",
    "partition_summary",
    "read_labels",
    "save_manifest",
    "split_indices",
    "stratified_subsample",
]
