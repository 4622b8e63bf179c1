"""Tests of the distillate privacy report and the optional latent noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor

from fedlab.autoencoder import build_autoencoder, decode_images, latent_shape
from fedlab.client_app import ClientData, distillation_reply
from fedlab.config import RunConfig
from fedlab.payload import DISTILLATES_KEY, METRICS_KEY, DistillatePayload
from fedlab.privacy import (
    NOISE_ABSOLUTE_SCALE,
    NUM_PAIRS,
    PSNR_CAP_DB,
    PSNR_MAX,
    PSNR_MEAN,
    SSIM_MAX,
    SSIM_MEAN,
    add_latent_noise,
    measure_privacy,
    nearest_same_class,
    privacy_results,
    psnr,
    ssim,
)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run this module with one intra-op thread, because the tensors are tiny."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def constant_images(values: list[float], size: int = 16, channels: int = 1) -> Tensor:
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, channels, size, size).clone()


def textured_images(count: int, size: int = 28, channels: int = 1, seed: int = 0) -> Tensor:
    """Smooth random images in [0, 1], so that SSIM has structure to compare."""
    coarse = torch.rand(count, channels, size // 4, size // 4, generator=seeded(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")


# PSNR and SSIM of single pairs


def test_identical_images_score_ssim_one_and_capped_psnr():
    image = textured_images(1)[0].numpy()

    assert ssim(image, image) == pytest.approx(1.0)
    assert psnr(image, image) == PSNR_CAP_DB


def test_psnr_of_constant_offset_by_hand():
    # A uniform offset of 0.1 on [0, 1] images is an MSE of 0.01, so PSNR = 10 log10(1 / 0.01).
    black, grey = constant_images([0.0, 0.1]).numpy()

    assert psnr(black, grey) == pytest.approx(20.0)


def test_ssim_of_rgb_images():
    image = textured_images(1, size=32, channels=3)[0].numpy()
    darker = image * 0.5

    assert ssim(image, image) == pytest.approx(1.0)
    assert ssim(image, darker) < 1.0


def test_ssim_of_small_images_uses_smaller_window():
    # 8 x 8 images are smaller than the 11 x 11 Gaussian window.
    first, second = textured_images(2, size=8).numpy()

    assert ssim(first, first) == pytest.approx(1.0)
    assert ssim(first, second) < 1.0


def test_ssim_rejects_tiny_images():
    tiny = np.zeros((1, 2, 2))

    with pytest.raises(ValueError, match="at least 3 x 3"):
        ssim(tiny, tiny)


# Nearest same-class image


def test_nearest_same_class_skips_closer_other_class():
    # The distillate (0.5) is closest to the class-1 image (0.45). It is of class 0,
    # whose images are 0.0 and 0.8, and 0.8 is the nearer of those two.
    distillate = constant_images([0.5])
    images = constant_images([0.0, 0.45, 0.8])
    labels = torch.tensor([0, 1, 0])

    nearest = nearest_same_class(distillate, torch.tensor([0]), images, labels)

    assert nearest.tolist() == [2]


def test_nearest_same_class_per_distillate():
    distillates = constant_images([0.1, 0.9, 0.5])
    images = constant_images([0.0, 1.0, 0.2, 0.6])
    labels = torch.tensor([0, 0, 1, 1])

    nearest = nearest_same_class(distillates, torch.tensor([0, 0, 1]), images, labels)

    assert nearest.tolist() == [0, 1, 3]


def test_nearest_same_class_rejects_missing_class():
    with pytest.raises(ValueError, match="class 2 have no real image"):
        nearest_same_class(constant_images([0.5]), torch.tensor([2]), constant_images([0.5]), torch.tensor([0]))


def test_nearest_same_class_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same C, H and W"):
        nearest_same_class(
            constant_images([0.5], size=8), torch.tensor([0]), constant_images([0.5]), torch.tensor([0])
        )


def test_nearest_same_class_rejects_length_mismatch():
    with pytest.raises(ValueError, match="one class id per distillate"):
        nearest_same_class(constant_images([0.5]), torch.tensor([0, 0]), constant_images([0.5]), torch.tensor([0]))


# The report over a client's distillates


def test_report_scores_copies_of_real_images_as_identical():
    images = textured_images(6)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])

    report = measure_privacy(images[[1, 4]], torch.tensor([0, 1]), images, labels)

    assert report.nearest.tolist() == [1, 4]
    assert report.psnr.tolist() == [PSNR_CAP_DB, PSNR_CAP_DB]
    np.testing.assert_allclose(report.ssim, [1.0, 1.0])


def test_noisier_distillates_score_lower():
    images = textured_images(4)
    labels = torch.tensor([0, 1, 2, 3])
    class_ids = torch.arange(4)
    noise = torch.randn(images.shape, generator=seeded(1))

    reports = [
        measure_privacy((images + level * noise).clamp(0, 1), class_ids, images, labels)
        for level in (0.02, 0.1, 0.3)
    ]

    psnr_means = [report.psnr.mean() for report in reports]
    ssim_means = [report.ssim.mean() for report in reports]
    assert psnr_means[0] > psnr_means[1] > psnr_means[2]
    assert ssim_means[0] > ssim_means[1] > ssim_means[2]


def test_report_metrics_summarise_pairs():
    images = constant_images([0.0, 0.1, 0.5])
    labels = torch.tensor([0, 0, 1])
    # Distillate 0 copies image 0 (capped PSNR); distillate 1 is 0.1 from image 2 (20 dB).
    distillates = constant_images([0.0, 0.6])

    metrics = measure_privacy(distillates, torch.tensor([0, 1]), images, labels).to_metrics()

    assert metrics[PSNR_MAX] == PSNR_CAP_DB
    assert metrics[PSNR_MEAN] == pytest.approx((PSNR_CAP_DB + 20.0) / 2)
    assert metrics[SSIM_MAX] == pytest.approx(1.0)
    assert metrics[NUM_PAIRS] == 2


def test_report_rejects_empty_distillates():
    with pytest.raises(ValueError, match="no distillates"):
        measure_privacy(constant_images([]), torch.tensor([], dtype=torch.int64), constant_images([0.5]),
                        torch.tensor([0]))


# Latent noise


def spread_latents() -> Tensor:
    return 3.0 * torch.randn(200, 4, 7, 7, generator=seeded(0)) + 1.0


def test_gaussian_noise_has_requested_std():
    latents = spread_latents()
    expected = 0.5 * float(latents.double().std(correction=0))

    noisy, absolute = add_latent_noise(latents, "gaussian", 0.5, seeded(3))
    noise = (noisy - latents).double()

    assert absolute == pytest.approx(expected)
    assert float(noise.std()) == pytest.approx(expected, rel=0.02)
    assert abs(float(noise.mean())) < 0.02 * expected


def test_laplace_noise_has_requested_scale():
    latents = spread_latents()
    expected = 0.5 * float(latents.double().std(correction=0))

    noisy, absolute = add_latent_noise(latents, "laplace", 0.5, seeded(3))
    noise = (noisy - latents).double()

    # Laplace(0, b): mean absolute deviation b and standard deviation sqrt(2) b.
    assert absolute == pytest.approx(expected)
    assert float(noise.abs().mean()) == pytest.approx(expected, rel=0.02)
    assert float(noise.std()) == pytest.approx(math.sqrt(2) * expected, rel=0.03)


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_noise_reproducible_from_seed(kind):
    latents = spread_latents()

    first, _ = add_latent_noise(latents, kind, 0.3, seeded(5))
    second, _ = add_latent_noise(latents, kind, 0.3, seeded(5))
    other, _ = add_latent_noise(latents, kind, 0.3, seeded(6))

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize(("kind", "scale"), [("none", 0.0), ("none", 2.0), ("gaussian", 0.0), ("laplace", 0.0)])
def test_no_noise_leaves_latents_untouched(kind, scale):
    latents = spread_latents()
    generator = seeded(5)
    state = generator.get_state()

    noisy, absolute = add_latent_noise(latents, kind, scale, generator)

    assert torch.equal(noisy, latents)
    assert absolute == 0.0
    assert torch.equal(generator.get_state(), state)


def test_noise_keeps_dtype_and_shape():
    latents = spread_latents().half()

    noisy, _ = add_latent_noise(latents, "gaussian", 0.1, seeded(0))

    assert noisy.dtype == torch.float16
    assert noisy.shape == latents.shape


@pytest.mark.parametrize(
    ("kind", "scale", "message"),
    [("uniform", 0.1, "must be one of none, gaussian, laplace"),
     ("gaussian", -0.1, "finite number >= 0"),
     ("laplace", math.inf, "finite number >= 0")],
)
def test_noise_rejects_invalid_settings(kind, scale, message):
    with pytest.raises(ValueError, match=message):
        add_latent_noise(spread_latents(), kind, scale, seeded(0))


# Server-side aggregation


def test_privacy_results_aggregate_clients():
    config = RunConfig(latent_noise="gaussian", latent_noise_scale=0.25)
    metrics = {
        11: {PSNR_MEAN: 14.0, PSNR_MAX: 18.0, SSIM_MEAN: 0.4, SSIM_MAX: 0.7, NUM_PAIRS: 30,
             NOISE_ABSOLUTE_SCALE: 0.8},
        12: {PSNR_MEAN: 16.0, PSNR_MAX: 17.0, SSIM_MEAN: 0.6, SSIM_MAX: 0.9, NUM_PAIRS: 10,
             NOISE_ABSOLUTE_SCALE: 0.9},
        13: {"train-loss": 0.1},  # a client without a report
    }

    privacy = privacy_results(config, metrics, {11: 0, 12: 1, 13: 2})["privacy"]

    assert privacy["latent_noise"] == "gaussian"
    assert privacy["latent_noise_scale"] == 0.25
    assert privacy["num_clients"] == 2
    assert privacy["psnr_mean"] == pytest.approx(15.0)
    assert privacy["ssim_mean"] == pytest.approx(0.5)
    assert privacy["psnr_max"] == 18.0
    assert privacy["ssim_max"] == 0.9
    assert [row["node_id"] for row in privacy["clients"]] == [11, 12]
    assert [row["partition_id"] for row in privacy["clients"]] == [0, 1]
    assert privacy["clients"][1]["latent_noise_absolute_scale"] == 0.9


def test_privacy_results_empty_without_reports():
    assert privacy_results(RunConfig(), {5: {"train-loss": 0.1}}, {5: 0}) == {}


# A real FedSD2C client reply


TINY_CLIENT = dict(
    dataset="digits", num_clients=3, alpha=1.0, max_pool_samples=120, model_width=8,
    local_epochs=1, ipc=2, mipc=4, num_crops=1, synthesis_iterations=1,
)


@pytest.fixture(scope="module")
def tiny_autoencoder():
    return build_autoencoder(1, 8, downsample_factor=4, latent_channels=4, base_channels=8, seed=0)


@pytest.fixture(scope="module")
def tiny_client() -> ClientData:
    """Partition 0 of 120 scikit-learn 8 x 8 digits split over three clients."""
    return ClientData(RunConfig(**TINY_CLIENT), partition_id=0)


def reply_for(client: ClientData, autoencoder, **changes) -> tuple[dict, DistillatePayload]:
    client.config = RunConfig(**{**TINY_CLIENT, **changes})
    reply = distillation_reply(client, autoencoder)
    metrics = dict(reply.metric_records[METRICS_KEY])
    payload = DistillatePayload.from_record(
        reply.array_records[DISTILLATES_KEY], client.num_classes, latent_shape(autoencoder, 8)
    )
    return metrics, payload


def test_distillation_reply_carries_privacy_metrics(tiny_client, tiny_autoencoder):
    metrics, payload = reply_for(tiny_client, tiny_autoencoder)

    for key in (PSNR_MEAN, PSNR_MAX, SSIM_MEAN, SSIM_MAX):
        assert math.isfinite(metrics[key]), key
    assert metrics[NUM_PAIRS] == len(payload)
    assert metrics["privacy-report-seconds"] >= 0
    assert metrics[NOISE_ABSOLUTE_SCALE] == 0.0

    # The report measures what the server decodes from the uploaded float16 latents.
    decoded = decode_images(tiny_autoencoder, torch.from_numpy(payload.latents.astype(np.float32)))
    class_ids = torch.from_numpy(payload.class_ids).long()
    expected = measure_privacy(decoded, class_ids, tiny_client.images, tiny_client.labels).to_metrics()
    assert metrics[PSNR_MEAN] == pytest.approx(expected[PSNR_MEAN])
    assert metrics[SSIM_MEAN] == pytest.approx(expected[SSIM_MEAN])


def test_distillation_reply_without_report(tiny_client, tiny_autoencoder):
    metrics, _ = reply_for(tiny_client, tiny_autoencoder, privacy_report=False)

    assert not [key for key in metrics if key.startswith("privacy-")]


def test_distillation_reply_uploads_noisy_latents(tiny_client, tiny_autoencoder):
    _, clean = reply_for(tiny_client, tiny_autoencoder)
    metrics, noisy = reply_for(tiny_client, tiny_autoencoder, latent_noise="gaussian", latent_noise_scale=0.5)
    _, again = reply_for(tiny_client, tiny_autoencoder, latent_noise="gaussian", latent_noise_scale=0.5)

    assert metrics[NOISE_ABSOLUTE_SCALE] > 0
    assert not np.array_equal(noisy.latents, clean.latents)
    np.testing.assert_array_equal(noisy.latents, again.latents)
    np.testing.assert_array_equal(noisy.soft_labels, clean.soft_labels)
