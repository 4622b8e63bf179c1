"""Feature skew: a per-client transform of the input images, applied on top of any partitioner.

Client ``i`` gets a transform level ``levels[i]`` in ``[0, strength]``:

- ``rotation`` rotates every image of the client counterclockwise by ``levels[i]``
  degrees about the image centre (bilinear interpolation, corners filled with 0);
- ``noise`` adds Gaussian noise with standard deviation ``levels[i]`` to pixel values
  scaled to [0, 1], clips to [0, 1] and rounds back to uint8.

Levels are spread evenly (``np.linspace(0, strength, num_clients)``, so client 0 keeps
its data unchanged) or drawn uniformly from ``[0, strength]`` with the seed. The
transform is a fixed shift of each client's data. Noise is drawn once per sample when
the client's dataset is built, not again every epoch. Only client data is transformed.
The server test set and the public set stay as loaded.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch

from fedlab.data.datasets import ImageDataset

FEATURE_SKEWS = ("none", "rotation", "noise")
FEATURE_SKEW_LEVELS = ("even", "random")
FEATURE_SKEW_UNITS = {
    "none": "",
    "rotation": "degrees",
    "noise": "noise std on pixel values scaled to [0, 1]",
}
MAX_ROTATION_DEGREES = 360.0

# Purposes mixed into the run seed so that the level draw and the noise draw are
# independent of the partitioner's random stream and of each other.
_SEED_LEVELS, _SEED_NOISE = 101, 102


def check_feature_skew(kind: str, strength: float, levels: str) -> None:
    """Raise if the feature-skew settings are invalid.

    Raises
    ------
    TypeError
        If `strength` is not a number.
    ValueError
        If `kind` or `levels` is not a known choice, or `strength` is out of range.
    """
    if kind not in FEATURE_SKEWS:
        raise ValueError(
            f"feature_skew must be one of {', '.join(FEATURE_SKEWS)}, got {kind!r}"
        )
    if levels not in FEATURE_SKEW_LEVELS:
        raise ValueError(
            f"feature_skew_levels must be one of {', '.join(FEATURE_SKEW_LEVELS)}, "
            f"got {levels!r}"
        )
    if isinstance(strength, bool) or not isinstance(strength, Real):
        raise TypeError(f"feature_skew_strength must be a number >= 0, got {strength!r}")
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(
            f"feature_skew_strength must be a finite number >= 0, got {strength}"
        )
    if kind == "rotation" and strength > MAX_ROTATION_DEGREES:
        raise ValueError(
            f"feature_skew_strength is the maximum rotation in degrees for feature_skew="
            f"'rotation', so it must be <= {MAX_ROTATION_DEGREES:g}, got {strength}"
        )


def feature_skew_levels(
    kind: str, strength: float, levels: str, num_clients: int, seed: int
) -> np.ndarray:
    """Compute the transform level of every client.

    Parameters
    ----------
    kind : str
        One of `FEATURE_SKEWS`. ``"none"`` gives all-zero levels.
    strength : float
        Maximum level: degrees for ``rotation``, noise std for ``noise``.
    levels : str
        ``"even"`` for ``np.linspace(0, strength, num_clients)``, ``"random"`` for
        uniform draws from ``[0, strength]`` seeded by `seed`.
    num_clients : int
        Number of clients, >= 0.
    seed : int
        Non-negative run seed.

    Returns
    -------
    numpy.ndarray
        float64 array of shape (num_clients,).
    """
    check_feature_skew(kind, strength, levels)
    if kind == "none":
        return np.zeros(num_clients)
    if levels == "even":
        return np.linspace(0.0, float(strength), num_clients)
    rng = np.random.default_rng([seed, _SEED_LEVELS])
    return rng.uniform(0.0, float(strength), num_clients)


def feature_skew_record(
    kind: str, strength: float, levels: str, num_clients: int, seed: int
) -> dict[str, Any]:
    """Describe the feature skew of a run as JSON: settings, unit and per-client levels."""
    return {
        "kind": kind,
        "strength": float(strength),
        "levels_from": levels,
        "unit": FEATURE_SKEW_UNITS[kind],
        "levels": feature_skew_levels(kind, strength, levels, num_clients, seed).tolist(),
    }


def apply_feature_skew(
    dataset: ImageDataset, kind: str, level: float, seed: int, client: int
) -> ImageDataset:
    """Transform the images of one client's dataset.

    Parameters
    ----------
    dataset : ImageDataset
        The client's samples.
    kind : str
        One of `FEATURE_SKEWS`.
    level : float
        The client's level from `feature_skew_levels`. Level 0 returns `dataset` itself.
    seed : int
        Non-negative run seed, which with `client` seeds the noise.
    client : int
        Partition id, so that clients with the same level still get different noise.

    Returns
    -------
    ImageDataset
        A dataset with the same labels and transformed uint8 images.
    """
    if kind not in FEATURE_SKEWS:
        raise ValueError(f"feature skew must be one of {', '.join(FEATURE_SKEWS)}, got {kind!r}")
    if kind == "none" or level == 0 or len(dataset) == 0:
        return dataset
    if kind == "rotation":
        images = rotate_images(dataset.images, level)
    else:
        generator = torch.Generator().manual_seed(_noise_seed(seed, client))
        images = add_gaussian_noise(dataset.images, level, generator)
    return ImageDataset(
        name=dataset.name,
        images=images,
        labels=dataset.labels,
        num_classes=dataset.num_classes,
    )


def rotate_images(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate uint8 images of shape (N, C, H, W) counterclockwise by `degrees`.

    The output keeps the input size, so corners rotated in from outside the image
    are 0. For square images, 90 degrees gives exactly ``torch.rot90(images, 1,
    dims=(-2, -1))``.
    """
    # Imported here because torchvision loads torch._dynamo, which adds over a second to start-up.
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    return tvf.rotate(images, float(degrees), interpolation=InterpolationMode.BILINEAR, fill=0)


def add_gaussian_noise(
    images: torch.Tensor, std: float, generator: torch.Generator
) -> torch.Tensor:
    """Add N(0, std^2) noise to uint8 images on the [0, 1] scale and round back to uint8."""
    pixels = images.to(torch.float32).div_(255.0)
    noise = torch.randn(pixels.shape, generator=generator, dtype=torch.float32)
    noisy = pixels.add_(noise.mul_(float(std))).clamp_(0.0, 1.0)
    return noisy.mul_(255.0).round_().to(torch.uint8)


def _noise_seed(seed: int, client: int) -> int:
    state = np.random.SeedSequence([seed, _SEED_NOISE, client]).generate_state(1, dtype=np.uint64)
    return int(state[0])


__all__ = [
    "FEATURE_SKEWS",
    "FEATURE_SKEW_LEVELS",
    "FEATURE_SKEW_UNITS",
    "MAX_ROTATION_DEGREES",
    "add_gaussian_noise",
    "apply_feature_skew",
    "check_feature_skew",
    "feature_skew_levels",
    "feature_skew_record",
    "rotate_images",
]
