"""Prepare the public autoencoder of a run: load it, pretrain it on the public split, or draw it.

The autoencoder must be public in the federated sense, so it is never trained on any
client's data or on the server test split. Pretraining therefore uses only ``FederatedData.public``; the test
split is used afterwards to report its reconstruction PSNR.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedlab.autoencoder import (
    autoencoder_cache_path,
    autoencoder_fingerprint,
    build_autoencoder,
    latent_shape,
    load_autoencoder,
    pretrain_autoencoder,
    reconstruction_psnr,
    save_autoencoder,
)
from fedlab.config import ConfigError, RunConfig
from fedlab.data import FederatedData

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoencoderInfo:
    """Provenance of the run's autoencoder and its reconstruction PSNR on the test set."""

    source: str  # "pretrain", "pretrain-cached", "random" or a path
    path: str
    fingerprint: str
    latent_shape: tuple[int, int, int]
    test_psnr_db: float
    pretrain_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "path": self.path,
            "fingerprint": self.fingerprint,
            "latent_shape": list(self.latent_shape),
            "test_psnr_db": self.test_psnr_db,
            "pretrain_seconds": self.pretrain_seconds,
        }


def pretrain_key(config: RunConfig, data: FederatedData) -> dict[str, Any]:
    """Everything that determines a pretrained autoencoder (the cache key)."""
    channels, height, _ = data.train.image_shape
    return {
        "dataset": config.dataset,
        "image_size": height,
        "channels": channels,
        "seed": config.seed,
        "test_fraction": config.test_fraction,
        "public_fraction": config.public_fraction,
        "public_size": 0 if data.public is None else len(data.public),
        "downsample": config.ae_downsample,
        "latent_channels": config.ae_latent_channels,
        "base_channels": config.ae_base_channels,
        "epochs": config.ae_pretrain_epochs,
    }


def _new_autoencoder(config: RunConfig, channels: int, image_size: int) -> AutoencoderKL:
    return build_autoencoder(
        channels,
        image_size,
        downsample_factor=config.ae_downsample,
        latent_channels=config.ae_latent_channels,
        base_channels=config.ae_base_channels,
        seed=config.seed,
    )


def prepare_autoencoder(
    config: RunConfig, data: FederatedData, cache_root: Path
) -> tuple[AutoencoderKL, AutoencoderInfo]:
    """Return the run's frozen autoencoder and a description of it.

    ``autoencoder="pretrain"`` trains on the public split and caches the result under
    `cache_root`, keyed by everything that determines it. ``"random"`` draws one from the
    run seed. Any other value is the path of a saved ``AutoencoderKL`` folder.

    Raises
    ------
    ConfigError
        When pretraining is requested but the run has no public split.
    """
    channels, height, _ = data.train.image_shape
    source = config.autoencoder
    path = ""
    pretrain_seconds = 0.0
    if source == "pretrain":
        if data.public is None or len(data.public) == 0:
            raise ConfigError(
                f"autoencoder='pretrain' needs a public split, but public-fraction="
                f"{config.public_fraction} leaves none; raise public-fraction, or set "
                "autoencoder='random' or the path of a saved AutoencoderKL"
            )
        cache = autoencoder_cache_path(cache_root, pretrain_key(config, data))
        if (cache / "config.json").exists():
            autoencoder = load_autoencoder(cache)
            source = "pretrain-cached"
            logger.info("Loaded the pretrained public autoencoder from %s", cache)
        else:
            autoencoder = _new_autoencoder(config, channels, height)
            logger.info(
                "Pretraining the public autoencoder on %s public images for %s epochs",
                len(data.public),
                config.ae_pretrain_epochs,
            )
            start = time.perf_counter()
            pretrain_autoencoder(
                autoencoder, data.public.float_images(), epochs=config.ae_pretrain_epochs, seed=config.seed
            )
            pretrain_seconds = time.perf_counter() - start
            save_autoencoder(autoencoder, cache)
        path = str(cache)
    elif source == "random":
        logger.warning(
            "autoencoder='random': latents of an untrained autoencoder reconstruct poorly, "
            "and synthesis needs many more iterations"
        )
        autoencoder = _new_autoencoder(config, channels, height)
    else:
        path = str(Path(source).expanduser().resolve())
        autoencoder = load_autoencoder(path)
        if autoencoder.config.in_channels != channels:
            raise ConfigError(
                f"the autoencoder at {path} takes {autoencoder.config.in_channels} channels, but "
                f"dataset {config.dataset!r} has {channels}; use an autoencoder made for it"
            )

    autoencoder.eval().requires_grad_(False)
    psnr = reconstruction_psnr(autoencoder, data.test.float_images())
    info = AutoencoderInfo(
        source=source,
        path=path,
        fingerprint=autoencoder_fingerprint(autoencoder),
        latent_shape=tuple(latent_shape(autoencoder, height)),
        test_psnr_db=psnr,
        pretrain_seconds=pretrain_seconds,
    )
    logger.info("Autoencoder (%s): test PSNR %.2f dB, latent shape %s", source, psnr, info.latent_shape)
    return autoencoder, info
