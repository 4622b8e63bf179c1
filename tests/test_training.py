"""Shared training loops: augmentation, supervised training and distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedlab.models import build_model
from fedlab.training import (
    accuracy,
    distill_classifier,
    random_shift,
    seeded_generator,
    train_classifier,
)


def test_random_shift_zero_is_identity() -> None:
    images = torch.rand(4, 1, 8, 8)
    assert torch.equal(random_shift(images, 0, seeded_generator(0)), images)


def test_random_shift_moves_a_single_pixel() -> None:
    images = torch.zeros(64, 1, 9, 9)
    images[:, :, 4, 4] = 1.0
    shifted = random_shift(images, 2, seeded_generator(1))
    for image in shifted:
        rows, cols = torch.nonzero(image[0], as_tuple=True)
        assert len(rows) == 1
        assert abs(rows.item() - 4) <= 2
        assert abs(cols.item() - 4) <= 2
    # Some image must actually move.
    assert not torch.equal(shifted, images)


def test_accuracy_counts_top1() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    assert abs(accuracy(logits, labels) - 2 / 3) < 1e-6


def separable_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    images = torch.rand(64, 1, 8, 8, generator=generator) * 0.2
    images[labels == 1, :, :4, :] += 0.8  # class 1 is bright on top
    return images, labels


def test_train_classifier_fits_separable_data() -> None:
    torch.manual_seed(0)
    images, labels = separable_data()
    model = build_model("convnet", 1, 2, 8, width=8, depth=2)
    train_classifier(model, images, labels, epochs=15, lr=0.05, batch_size=16,
                     weight_decay=0.0, generator=seeded_generator(0), max_shift=0)
    assert accuracy(model(images), labels) == 1.0


def test_distillation_lowers_kl_to_soft_labels() -> None:
    torch.manual_seed(0)
    images, labels = separable_data()
    targets = F.one_hot(labels, 2).float() * 0.8 + 0.1
    model = build_model("convnet", 1, 2, 8, width=8, depth=2).eval()

    def kl() -> float:
        with torch.no_grad():
            return F.kl_div(F.log_softmax(model(images), 1), targets, reduction="batchmean").item()

    before = kl()
    distill_classifier(model, images, targets, epochs=15, lr=0.05, batch_size=16,
                       temperature=1.0, generator=seeded_generator(0), max_shift=0)
    assert kl() < before / 2
