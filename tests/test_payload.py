"""Payloads between server and clients: round trips, validation and byte counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, RecordDict

from fedlab.autoencoder import autoencoder_fingerprint, build_autoencoder
from fedlab.models import build_model
from fedlab.payload import (
    CLASS_IDS,
    LATENTS,
    SOFT_LABELS,
    DistillatePayload,
    PayloadError,
    autoencoder_from_records,
    autoencoder_to_records,
    load_model_record,
    model_to_record,
    model_upload_bytes,
    record_bytes,
)

LATENT_SHAPE = (4, 7, 7)
NUM_CLASSES = 10


def make_payload(count: int = 6, dtype: str = "float16") -> DistillatePayload:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(count, *LATENT_SHAPE, generator=generator)
    soft = torch.softmax(torch.randn(count, NUM_CLASSES, generator=generator), dim=1)
    class_ids = torch.arange(count) % NUM_CLASSES
    return DistillatePayload.from_tensors(latents, soft, class_ids, dtype)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_distillates_round_trip(dtype: str) -> None:
    payload = make_payload(dtype=dtype)
    restored = DistillatePayload.from_record(payload.to_record(), NUM_CLASSES, LATENT_SHAPE)
    np.testing.assert_array_equal(restored.latents, payload.latents)
    np.testing.assert_array_equal(restored.soft_labels, payload.soft_labels)
    np.testing.assert_array_equal(restored.class_ids, payload.class_ids)
    assert restored.latents.dtype == np.dtype(dtype)


def test_float16_halves_the_upload() -> None:
    half = record_bytes(RecordDict({"d": make_payload(50, "float16").to_record()}))
    full = record_bytes(RecordDict({"d": make_payload(50, "float32").to_record()}))
    assert half < 0.6 * full


def test_record_bytes_grow_with_content() -> None:
    small = record_bytes(RecordDict({"d": make_payload(5).to_record()}))
    large = record_bytes(RecordDict({"d": make_payload(50).to_record()}))
    # Each float16 latent of 4 x 7 x 7 is 392 bytes.
    assert large - small >= 45 * 392


def replace_array(payload: DistillatePayload, name: str, value: np.ndarray) -> ArrayRecord:
    record = payload.to_record()
    record[name] = Array(value)
    return record


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        (LATENTS, np.zeros((6, 4, 8, 8), np.float16), "latents have shape"),
        (LATENTS, np.zeros((6, 4, 7, 7), np.int8), "dtype"),
        (LATENTS, np.full((6, 4, 7, 7), np.nan, np.float16), "NaN"),
        (SOFT_LABELS, np.full((6, NUM_CLASSES), 0.5, np.float16), "probability distributions"),
        (SOFT_LABELS, np.zeros((5, NUM_CLASSES), np.float16), "soft labels have shape"),
        (CLASS_IDS, np.full(6, NUM_CLASSES, np.int32), "class ids span"),
        (CLASS_IDS, np.zeros(6, np.float32), "integers"),
    ],
)
def test_malformed_distillates_are_rejected(name: str, value: np.ndarray, reason: str) -> None:
    record = replace_array(make_payload(), name, value)
    with pytest.raises(PayloadError, match=reason):
        DistillatePayload.from_record(record, NUM_CLASSES, LATENT_SHAPE)


def test_missing_array_is_rejected() -> None:
    record = make_payload().to_record()
    del record[CLASS_IDS]
    with pytest.raises(PayloadError, match="lacks arrays"):
        DistillatePayload.from_record(record, NUM_CLASSES, LATENT_SHAPE)


def test_model_record_round_trip() -> None:
    source = build_model("convnet", 1, NUM_CLASSES, 28, width=16, depth=2)
    target = build_model("convnet", 1, NUM_CLASSES, 28, width=16, depth=2)
    load_model_record(target, model_to_record(source))
    x = torch.rand(3, 1, 28, 28)
    source.eval(), target.eval()
    torch.testing.assert_close(source(x), target(x))
    assert model_upload_bytes(source) > 4 * sum(p.numel() for p in source.parameters())


def test_autoencoder_records_round_trip() -> None:
    autoencoder = build_autoencoder(1, 28, downsample_factor=4, latent_channels=4, seed=3)
    arrays, config = autoencoder_to_records(autoencoder)
    rebuilt = autoencoder_from_records(arrays, config)
    assert autoencoder_fingerprint(rebuilt) == autoencoder_fingerprint(autoencoder)
    assert not any(p.requires_grad for p in rebuilt.parameters())
