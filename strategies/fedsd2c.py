"""FedSD2C server: pool the clients' distillates, decode them and distil a global model.

One-shot federated learning by sharing synthetic distillates (Zhang et al., "One-shot
Federated Learning via Synthetic Distiller-Distillate Communication", NeurIPS 2024,
https://arxiv.org/abs/2412.05186). Clients upload autoencoder latents with soft labels,
never model weights or raw images; the client half is ``clients/fedsd2c.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict
from torch import nn

from fedlab.autoencoder import decode_images
from fedlab.payload import (
    AUTOENCODER_CONFIG_KEY,
    AUTOENCODER_KEY,
    CONFIG_KEY,
    DISTILL,
    DISTILLATES_KEY,
    DistillatePayload,
    PayloadError,
    autoencoder_to_records,
)
from fedlab.config import RunConfig
from fedlab.public_autoencoder import prepare_autoencoder
from fedlab.server_run import NotEnoughRepliesError, ServerRun
from fedlab.training import distill_classifier, seeded_generator
from strategies.base import STRATEGIES, FedLabStrategy, StrategyResult

logger = logging.getLogger(__name__)


@STRATEGIES.register("fedsd2c")
class FedSD2CStrategy(FedLabStrategy):
    """One round: clients distil, the server trains the global model on the distillates."""

    def run(self, server: ServerRun, node_ids: list[int]) -> StrategyResult:
        cfg = self.config

        # 1. The public autoencoder, shared with every client in the request.
        # NOTE: every request carries the full autoencoder weights, so download volume grows
        # with the client count; clients do not cache it by fingerprint yet.
        cache_root = Path(cfg.ae_cache_dir) if cfg.ae_cache_dir else server.output_dir.parent / "cache"
        with server.phase("autoencoder"):
            autoencoder, ae_info = prepare_autoencoder(cfg, server.data, cache_root)
        ae_arrays, ae_config = autoencoder_to_records(autoencoder)
        ae_config["fingerprint"] = ae_info.fingerprint
        content = RecordDict(
            {
                AUTOENCODER_KEY: ae_arrays,
                AUTOENCODER_CONFIG_KEY: ae_config,
                CONFIG_KEY: ConfigRecord({"server-round": 1}),
            }
        )

        # 2. Clients train their local model, select core-sets and synthesise distillates.
        with server.phase("client_round"):
            replies = server.send_and_collect(node_ids, DISTILL, lambda _node: content)

        # 3. Validate every payload; a malformed one is rejected, the others are kept.
        num_classes = server.data.train.num_classes
        payloads: list[DistillatePayload] = []
        for reply in replies:
            node_id = reply.metadata.src_node_id
            try:
                if DISTILLATES_KEY not in reply.content.array_records:
                    raise PayloadError(f"reply lacks the '{DISTILLATES_KEY}' ArrayRecord")
                payload = DistillatePayload.from_record(
                    reply.content.array_records[DISTILLATES_KEY], num_classes, ae_info.latent_shape
                )
            except PayloadError as err:
                server.record_failure(node_id, f"rejected distillates: {err}", DISTILL)
                continue
            payloads.append(payload)
        if len(payloads) < cfg.min_replies:
            raise NotEnoughRepliesError(
                f"only {len(payloads)} clients sent valid distillates, fewer than "
                f"min-replies={cfg.min_replies}"
            )

        # 4-5. Decode and pool the latents, then distil the soft labels into the global model.
        model = server.build_model()
        with server.phase("server_training"):
            loss, class_ids = train_on_distillates(cfg, model, autoencoder, payloads, server.device)

        # 6. Evaluate on the held-out server test set.
        accuracy = server.evaluate(model)
        logger.info("FedSD2C global model: test accuracy %.4f (final distillation loss %.4f)", accuracy, loss)
        counts = np.bincount(class_ids, minlength=num_classes)
        return StrategyResult(
            model=model,
            test_accuracy=accuracy,
            extra={
                "autoencoder": ae_info.to_json(),
                "num_distillates": int(len(class_ids)),
                "distillates_per_class": counts.tolist(),
                "server_final_loss": loss,
            },
        )


def train_on_distillates(
    config: RunConfig,
    model: nn.Module,
    autoencoder: nn.Module,
    payloads: list[DistillatePayload],
    device: torch.device,
) -> tuple[float, np.ndarray]:
    """Decode all clients' latents with the public decoder and distil their soft labels.

    Returns
    -------
    tuple of (float, numpy.ndarray)
        The final distillation loss and the class id of every pooled distillate.
    """
    # Decode all latents with the same public decoder and pool them.
    latents = torch.from_numpy(np.concatenate([p.latents for p in payloads]).astype(np.float32))
    soft_labels = torch.from_numpy(np.concatenate([p.soft_labels for p in payloads]).astype(np.float32))
    soft_labels = soft_labels / soft_labels.sum(dim=1, keepdim=True)  # undo float16 rounding
    class_ids = np.concatenate([p.class_ids for p in payloads])
    images = decode_images(autoencoder, latents.to(next(autoencoder.parameters()).device)).to(device)
    logger.info(
        "Pooled %s distillates from %s clients (%s classes)",
        len(images),
        len(payloads),
        len(np.unique(class_ids)),
    )

    # Train the global model by knowledge distillation on the soft labels.
    loss = distill_classifier(
        model,
        images,
        soft_labels.to(device),
        epochs=config.server_epochs,
        lr=config.server_lr,
        batch_size=config.server_batch_size,
        temperature=config.distill_temperature,
        generator=seeded_generator(config.seed, 7_919),
    )
    return loss, class_ids
