"""Typed payloads between the ServerApp and the ClientApp, and their Flower records.

Record keys are module constants; each payload is a small dataclass with ``to_*`` and
``from_*`` converters, so no component builds or reads ad hoc dictionaries.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from torch import nn

logger = logging.getLogger(__name__)

# Message types. Local training uses Flower's plain "train"; distillation is a named action.
TRAIN = "train"
DISTILL = "train.distill"

# Record keys.
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
DISTILLATES_KEY = "distillates"
AUTOENCODER_KEY = "autoencoder"
AUTOENCODER_CONFIG_KEY = "autoencoder-config"

# Array names inside the distillates record.
LATENTS = "latents"
SOFT_LABELS = "soft-labels"
CLASS_IDS = "class-ids"

# Metric names every client reply carries.
NUM_EXAMPLES = "num-examples"
PARTITION_ID = "partition-id"


class PayloadError(ValueError):
    """A reply from a client does not have the expected records, shapes or values."""


@dataclass(frozen=True)
class DistillatePayload:
    """Distillates of one client as they travel: latents, soft labels and class ids."""

    latents: np.ndarray  # M x c x h x w, float16 or float32
    soft_labels: np.ndarray  # M x num_classes, same float dtype as the latents
    class_ids: np.ndarray  # M, int32

    def to_record(self) -> ArrayRecord:
        """Return the payload as an ArrayRecord with one array per field."""
        return ArrayRecord(
            {
                LATENTS: Array(np.ascontiguousarray(self.latents)),
                SOFT_LABELS: Array(np.ascontiguousarray(self.soft_labels)),
                CLASS_IDS: Array(np.ascontiguousarray(self.class_ids)),
            }
        )

    @classmethod
    def from_tensors(
        cls, latents: torch.Tensor, soft_labels: torch.Tensor, class_ids: torch.Tensor, dtype: str
    ) -> DistillatePayload:
        """Convert tensors to the wire dtype (`dtype` is "float16" or "float32")."""
        np_dtype = np.float16 if dtype == "float16" else np.float32
        return cls(
            latents=latents.detach().cpu().numpy().astype(np_dtype),
            soft_labels=soft_labels.detach().cpu().numpy().astype(np_dtype),
            class_ids=class_ids.detach().cpu().numpy().astype(np.int32),
        )

    @classmethod
    def from_record(
        cls, record: ArrayRecord, num_classes: int, latent_shape: tuple[int, ...]
    ) -> DistillatePayload:
        """Read and validate a distillates record.

        Raises
        ------
        PayloadError
            When an array is missing or has the wrong shape or dtype, when values are
            non-finite, when a class id is out of range, or when soft labels are not
            probability distributions.
        """
        missing = [name for name in (LATENTS, SOFT_LABELS, CLASS_IDS) if name not in record]
        if missing:
            raise PayloadError(f"distillates record lacks arrays {missing}")
        unexpected = sorted(set(record) - {LATENTS, SOFT_LABELS, CLASS_IDS})
        if unexpected:
            raise PayloadError(f"distillates record has unexpected arrays {unexpected}")
        latents = record[LATENTS].numpy()
        soft_labels = record[SOFT_LABELS].numpy()
        class_ids = record[CLASS_IDS].numpy()

        if latents.dtype not in (np.float16, np.float32):
            raise PayloadError(f"latents have dtype {latents.dtype}, expected float16 or float32")
        if tuple(latents.shape[1:]) != tuple(latent_shape):
            raise PayloadError(
                f"latents have shape {latents.shape}, expected (M, {', '.join(map(str, latent_shape))})"
            )
        count = latents.shape[0]
        if soft_labels.shape != (count, num_classes):
            raise PayloadError(
                f"soft labels have shape {soft_labels.shape}, expected ({count}, {num_classes})"
            )
        if class_ids.shape != (count,) or not np.issubdtype(class_ids.dtype, np.integer):
            raise PayloadError(
                f"class ids have shape {class_ids.shape} and dtype {class_ids.dtype}, "
                f"expected ({count},) integers"
            )
        if not (np.isfinite(latents).all() and np.isfinite(soft_labels).all()):
            raise PayloadError("latents or soft labels contain NaN or infinite values")
        if count and (class_ids.min() < 0 or class_ids.max() >= num_classes):
            raise PayloadError(
                f"class ids span [{class_ids.min()}, {class_ids.max()}], expected [0, {num_classes - 1}]"
            )
        sums = soft_labels.astype(np.float32).sum(axis=1)
        if count and ((soft_labels < 0).any() or np.abs(sums - 1).max() > 1e-2):
            raise PayloadError("soft labels are not probability distributions (rows must sum to 1)")
        return cls(latents=latents, soft_labels=soft_labels, class_ids=class_ids)

    def __len__(self) -> int:
        return int(self.latents.shape[0])


def model_to_record(model: nn.Module) -> ArrayRecord:
    """Return the model's state dict (parameters and buffers) as an ArrayRecord."""
    return ArrayRecord(model.state_dict())


def model_upload_bytes(model: nn.Module) -> int:
    """Return the serialized size of one model upload (its state dict as an ArrayRecord)."""
    return record_bytes(RecordDict({ARRAYS_KEY: model_to_record(model)}))


def check_model_record(record: ArrayRecord, reference: dict[str, torch.Tensor]) -> None:
    """Check an uploaded model against the global model's state dict.

    Raises
    ------
    PayloadError
        When arrays are missing or unexpected, or an array's shape or dtype differs from
        the reference, or a floating-point array holds NaN or infinite values.
    """
    missing = sorted(set(reference) - set(record))
    unexpected = sorted(set(record) - set(reference))
    if missing or unexpected:
        raise PayloadError(
            f"model record does not match the global model: missing arrays {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected arrays {unexpected[:5]}"
        )
    for name, expected in reference.items():
        array = record[name]
        if tuple(array.shape) != tuple(expected.shape):
            raise PayloadError(
                f"model array {name!r} has shape {tuple(array.shape)}, expected {tuple(expected.shape)}"
            )
        values = array.numpy()
        expected_dtype = str(expected.dtype).removeprefix("torch.")
        if values.dtype.name != expected_dtype:
            raise PayloadError(f"model array {name!r} has dtype {values.dtype}, expected {expected_dtype}")
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise PayloadError(f"model array {name!r} contains NaN or infinite values")


def load_model_record(model: nn.Module, record: ArrayRecord) -> nn.Module:
    """Load an ArrayRecord produced by :func:`model_to_record` into `model`."""
    model.load_state_dict(record.to_torch_state_dict(), strict=True)
    return model


def autoencoder_to_records(autoencoder: nn.Module) -> tuple[ArrayRecord, ConfigRecord]:
    """Return the autoencoder's weights and its diffusers config (as JSON) as records."""
    config = json.dumps(dict(autoencoder.config), sort_keys=True, default=str)
    return ArrayRecord(autoencoder.state_dict()), ConfigRecord({"json": config})


def autoencoder_from_records(arrays: ArrayRecord, config: ConfigRecord) -> nn.Module:
    """Rebuild a frozen `AutoencoderKL` from :func:`autoencoder_to_records` records."""
    from diffusers import AutoencoderKL

    settings = {k: v for k, v in json.loads(str(config["json"])).items() if not k.startswith("_")}
    autoencoder = AutoencoderKL.from_config(settings)
    autoencoder.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    autoencoder.eval().requires_grad_(False)
    return autoencoder


def record_bytes(content: RecordDict) -> int:
    """Return the serialized size in bytes of a message's RecordDict (what crosses the wire)."""
    return int(recorddict_to_proto(content).ByteSize())


def error_reason(message: Message) -> str:
    """Return a one-line reason for a reply that carries an error instead of content."""
    reason = str(message.error.reason)
    # Ray wraps the client's exception in long tracebacks; keep the original message.
    found = re.findall(r"Message: (.+?)(?:'>|\n|$)", reason)
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    return lines[-1] if lines else f"error code {message.error.code}"


def reply_metrics(message: Message) -> dict[str, float | int]:
    """Return the metrics record of a reply as a plain dict (empty when absent)."""
    if METRICS_KEY in message.content.metric_records:
        return dict(message.content.metric_records[METRICS_KEY])
    return {}


def metrics_record(values: dict[str, float | int]) -> MetricRecord:
    """Build a MetricRecord, converting numpy scalars to Python numbers."""
    return MetricRecord({key: (value.item() if hasattr(value, "item") else value) for key, value in values.items()})
