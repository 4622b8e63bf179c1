"""Privacy of FedSD2C distillates: how close decoded distillates are to the client's own images.

A client measures every decoded distillate against its nearest real local image of the same
class (pixel-space L2 distance) with PSNR and SSIM. Higher values mean the upload reveals
more of a real image. Only the client has its real images, so the client computes the
report and sends per-client summaries as reply metrics. The server gathers them into the
``privacy`` entry of ``results.json``.

The optional latent noise (``latent-noise``, ``latent-noise-scale``) is added to the
latents before upload. Its scale is relative to the standard deviation of all the
latents one client uploads, so the same setting gives the same signal-to-noise ratio with
any autoencoder. The latent scales of an untrained and a pretrained autoencoder differ by
more than a factor of ten.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import torch
from skimage.metrics import structural_similarity
from torch import Tensor

from fedlab.config import LatentNoise, RunConfig

logger = logging.getLogger(__name__)

NOISE_KINDS: tuple[str, ...] = get_args(LatentNoise)

PSNR_CAP_DB = 100.0
"""PSNR reported for a pair whose mean squared error is 0 (or whose PSNR exceeds this value).

Identical images have infinite PSNR, which JSON and Flower metric records cannot carry.
100 dB is a mean squared error of 1e-10 on [0, 1] images, far below the float16 rounding
of an uploaded latent.
"""

SSIM_SIGMA = 1.5
"""Standard deviation in pixels of the Gaussian SSIM window (Wang et al., 2004).

skimage truncates the window at 3.5 sigma, so it is 11 x 11 pixels. Images with a side
shorter than 11 pixels use a uniform window of the largest odd size that fits instead.
"""

_GAUSSIAN_WINDOW = 2 * int(3.5 * SSIM_SIGMA + 0.5) + 1

# Reply-metric keys of the client's privacy summary.
PSNR_MEAN = "privacy-psnr-mean"
PSNR_MAX = "privacy-psnr-max"
SSIM_MEAN = "privacy-ssim-mean"
SSIM_MAX = "privacy-ssim-max"
NUM_PAIRS = "privacy-num-pairs"
NOISE_ABSOLUTE_SCALE = "latent-noise-absolute-scale"


def add_latent_noise(
    latents: Tensor, kind: LatentNoise | str, scale: float, generator: torch.Generator
) -> tuple[Tensor, float]:
    """Add zero-mean Gaussian or Laplace noise to latents before they are uploaded.

    The noise is i.i.d. per latent entry. Its absolute scale is ``scale`` times the
    standard deviation of all entries of ``latents``: the standard deviation for
    ``"gaussian"`` and the Laplace scale parameter b (mean absolute deviation b,
    standard deviation sqrt(2) b) for ``"laplace"``.

    Parameters
    ----------
    latents : Tensor
        float M x c x h x w latents of one client.
    kind : str
        One of :data:`NOISE_KINDS`; ``"none"`` returns ``latents`` unchanged.
    scale : float
        Noise scale relative to the latents' standard deviation, finite and >= 0.
    generator : torch.Generator
        CPU generator for the draws, seeded from the run seed and the partition.

    Returns
    -------
    tuple of (Tensor, float)
        The noisy latents (same shape, dtype and device) and the absolute scale used,
        0.0 when no noise was added.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"latent noise kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    if not (math.isfinite(scale) and scale >= 0.0):
        raise ValueError(f"latent noise scale must be a finite number >= 0, got {scale}")
    if kind == "none" or latents.numel() == 0:
        return latents, 0.0
    if scale == 0.0:
        logger.warning("latent-noise=%r with latent-noise-scale=0 adds no noise", kind)
        return latents, 0.0

    absolute = scale * float(latents.detach().double().std(correction=0))
    shape = latents.shape
    if kind == "gaussian":
        noise = torch.randn(shape, generator=generator, dtype=torch.float64) * absolute
    else:
        # The difference of two independent Exp(1) draws is Laplace(0, 1).
        first = torch.empty(shape, dtype=torch.float64).exponential_(1.0, generator=generator)
        second = torch.empty(shape, dtype=torch.float64).exponential_(1.0, generator=generator)
        noise = (first - second) * absolute
    return latents + noise.to(device=latents.device, dtype=latents.dtype), absolute


def nearest_same_class(
    distillates: Tensor, class_ids: Tensor, images: Tensor, labels: Tensor
) -> Tensor:
    """Find for every distillate the nearest real image of its class by pixel-space L2 distance.

    Parameters
    ----------
    distillates : Tensor
        M x C x H x W decoded distillates.
    class_ids : Tensor
        int64, length M, the class of every distillate.
    images : Tensor
        N x C x H x W real local images.
    labels : Tensor
        int64, length N, the class of every real image.

    Returns
    -------
    Tensor
        int64, length M, the index into ``images`` of each distillate's nearest image.

    Raises
    ------
    ValueError
        If the shapes do not match, or a distillate's class has no real image.
    """
    if distillates.dim() != 4 or distillates.shape[1:] != images.shape[1:]:
        raise ValueError(
            f"distillates have shape {tuple(distillates.shape)} but real images have shape "
            f"{tuple(images.shape)}; both must be N x C x H x W with the same C, H and W"
        )
    if len(class_ids) != len(distillates) or len(labels) != len(images):
        raise ValueError(
            f"expected one class id per distillate ({len(distillates)}) and one label per image "
            f"({len(images)}), got {len(class_ids)} and {len(labels)}"
        )
    # The search runs in float32 on the images' device, one class at a time, so that no
    # float64 copy of a client's images is made.
    device = images.device
    distillates = distillates.detach().to(device)
    class_ids, labels = class_ids.to(device), labels.to(device)
    nearest = torch.empty(len(distillates), dtype=torch.int64, device=device)
    for cls in torch.unique(class_ids).tolist():
        rows = torch.nonzero(class_ids == cls).squeeze(1)
        candidates = torch.nonzero(labels == cls).squeeze(1)
        if len(candidates) == 0:
            raise ValueError(
                f"distillates of class {cls} have no real image of that class to compare with; "
                "pass the client's own images and labels"
            )
        distances = torch.cdist(
            distillates[rows].flatten(1).float(), images.detach()[candidates].flatten(1).float()
        )
        nearest[rows] = candidates[distances.argmin(dim=1)]
    return nearest.cpu()


def psnr(first: np.ndarray, second: np.ndarray, data_range: float = 1.0) -> float:
    """Compute the PSNR in dB of two images, capped at :data:`PSNR_CAP_DB`."""
    mse = float(np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(data_range**2 / mse))


def ssim(first: np.ndarray, second: np.ndarray, data_range: float = 1.0) -> float:
    """Compute the SSIM of two C x H x W images with skimage's ``structural_similarity``.

    The window is Gaussian with sigma :data:`SSIM_SIGMA` and the covariances are not
    sample-corrected, the settings of Wang et al. (2004). Channels are compared
    separately and averaged.
    """
    channels, height, width = first.shape
    first = np.moveaxis(first.astype(np.float64), 0, -1)
    second = np.moveaxis(second.astype(np.float64), 0, -1)
    channel_axis = -1 if channels > 1 else None
    if channel_axis is None:
        first, second = first[..., 0], second[..., 0]

    side = min(height, width)
    if side >= _GAUSSIAN_WINDOW:
        return float(
            structural_similarity(
                first, second, data_range=data_range, channel_axis=channel_axis,
                gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False,
            )
        )
    window = side if side % 2 == 1 else side - 1
    if window < 3:
        raise ValueError(
            f"SSIM needs images of at least 3 x 3 pixels, got {height} x {width}"
        )
    return float(
        structural_similarity(
            first, second, data_range=data_range, channel_axis=channel_axis, win_size=window,
            use_sample_covariance=False,
        )
    )


@dataclass(frozen=True)
class PrivacyReport:
    """PSNR and SSIM of every distillate against its nearest real image of the same class.

    Parameters
    ----------
    psnr : numpy.ndarray
        float64, length M, PSNR in dB, capped at :data:`PSNR_CAP_DB`.
    ssim : numpy.ndarray
        float64, length M, SSIM in [-1, 1].
    nearest : numpy.ndarray
        int64, length M, index of the nearest real image of each distillate.
    """

    psnr: np.ndarray
    ssim: np.ndarray
    nearest: np.ndarray

    def to_metrics(self) -> dict[str, float | int]:
        """Return the per-client summary sent in the reply metrics."""
        return {
            PSNR_MEAN: float(self.psnr.mean()),
            PSNR_MAX: float(self.psnr.max()),
            SSIM_MEAN: float(self.ssim.mean()),
            SSIM_MAX: float(self.ssim.max()),
            NUM_PAIRS: int(len(self.psnr)),
        }


def measure_privacy(
    distillates: Tensor, class_ids: Tensor, images: Tensor, labels: Tensor
) -> PrivacyReport:
    """Pair every decoded distillate with its nearest same-class real image; score each pair.

    Parameters
    ----------
    distillates : Tensor
        M x C x H x W decoded distillates in [0, 1], exactly as the server decodes them.
    class_ids : Tensor
        int64, length M, the class of every distillate.
    images : Tensor
        N x C x H x W real local images in [0, 1].
    labels : Tensor
        int64, length N, the class of every real image.

    Raises
    ------
    ValueError
        If there are no distillates, the shapes do not match, or a distillate's class
        has no real image.
    """
    if len(distillates) == 0:
        raise ValueError("no distillates to measure; the client must upload at least one")
    nearest = nearest_same_class(distillates, class_ids, images, labels)
    fakes = distillates.detach().cpu().numpy()
    reals = images.detach()[nearest.to(images.device)].cpu().numpy()
    psnrs = np.array([psnr(fake, real) for fake, real in zip(fakes, reals)])
    ssims = np.array([ssim(fake, real) for fake, real in zip(fakes, reals)])
    return PrivacyReport(psnr=psnrs, ssim=ssims, nearest=nearest.numpy())


def privacy_results(
    config: RunConfig,
    client_metrics: Mapping[int, Mapping[str, float | int]],
    node_partitions: Mapping[int, int],
) -> dict[str, Any]:
    """Gather the clients' privacy summaries into the ``privacy`` entry of ``results.json``.

    Returns
    -------
    dict
        ``{"privacy": {...}}`` with the noise settings and one row per client. Its
        ``psnr_mean`` and ``ssim_mean`` are unweighted means over clients of each client's
        mean, and ``psnr_max`` and ``ssim_max`` the maxima over all distillates. The
        result is ``{}`` when no client sent a privacy summary.
    """
    reporting = sorted(node for node, metrics in client_metrics.items() if PSNR_MEAN in metrics)
    if not reporting:
        return {}
    clients = [
        {
            "node_id": node,
            "partition_id": node_partitions.get(node),
            "psnr_mean": float(client_metrics[node][PSNR_MEAN]),
            "psnr_max": float(client_metrics[node][PSNR_MAX]),
            "ssim_mean": float(client_metrics[node][SSIM_MEAN]),
            "ssim_max": float(client_metrics[node][SSIM_MAX]),
            "num_pairs": int(client_metrics[node][NUM_PAIRS]),
            "latent_noise_absolute_scale": float(client_metrics[node].get(NOISE_ABSOLUTE_SCALE, 0.0)),
        }
        for node in reporting
    ]
    return {
        "privacy": {
            "latent_noise": config.latent_noise,
            "latent_noise_scale": config.latent_noise_scale,
            "latent_noise_scale_unit": "standard deviation of each client's uploaded latents",
            "amplitude_mix": config.amplitude_mix,
            "latent_dtype": config.latent_dtype,
            "psnr_cap_db": PSNR_CAP_DB,
            "ssim_window": f"Gaussian, sigma {SSIM_SIGMA} px (uniform below {_GAUSSIAN_WINDOW} px)",
            "num_clients": len(clients),
            "psnr_mean": statistics.fmean(row["psnr_mean"] for row in clients),
            "ssim_mean": statistics.fmean(row["ssim_mean"] for row in clients),
            "psnr_max": max(row["psnr_max"] for row in clients),
            "ssim_max": max(row["ssim_max"] for row in clients),
            "clients": clients,
        }
    }
