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
from flwr.app import ConfigRecord, Message, RecordDict
from torch import nn

from fedlab.autoencoder import decode_images
from fedlab.payload import (
    AUTOENCODER_CONFIG_KEY,
    AUTOENCODER_KEY,
    CONFIG_KEY,
    DISTILL,
    DISTILLATES_KEY,
    PARTITION_ID,
    DistillatePayload,
    PayloadError,
    autoencoder_to_records,
    reply_metrics,
)
from fedlab.config import RunConfig
from fedlab.public_autoencoder import AutoencoderInfo, prepare_autoencoder
from fedlab.server_run import NotEnoughRepliesError, ServerRun
from fedlab.training import distill_classifier, seeded_generator
from fedlab.upload_store import UploadStore
from strategies.base import STRATEGIES, FedLabStrategy, StrategyResult

logger = logging.getLogger(__name__)


@STRATEGIES.register("fedsd2c")
class FedSD2CStrategy(FedLabStrategy):
    """One round: clients distil, the server trains the global model on the distillates.

    Accepted distillates are stored in the run folder as they arrive
    (:class:`fedlab.upload_store.UploadStore`); :meth:`resume` trains from them after a crash
    without contacting any client.
    """

    def run(self, server: ServerRun, node_ids: list[int]) -> StrategyResult:
        cfg = self.config
        store = UploadStore(server.output_dir)

        # 1. The public autoencoder: its weights go with every request, or with
        # autoencoder-delivery='local' only its fingerprint and folder, and each client
        # loads its own copy.
        autoencoder, ae_info = self._autoencoder(server)
        content = RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 1})})
        if cfg.autoencoder_delivery == "local":
            content[AUTOENCODER_CONFIG_KEY] = ConfigRecord(
                {"fingerprint": ae_info.fingerprint, "path": ae_info.path}
            )
        else:
            ae_arrays, ae_config = autoencoder_to_records(autoencoder)
            ae_config["fingerprint"] = ae_info.fingerprint
            content[AUTOENCODER_KEY] = ae_arrays
            content[AUTOENCODER_CONFIG_KEY] = ae_config

        # 2-3. Clients train, select core-sets and synthesise; every reply is validated and
        # stored as it arrives, and a malformed one is rejected while the others are kept.
        num_classes = server.data.train.num_classes
        checked: dict[int, tuple[int, DistillatePayload]] = {}  # by id() of the reply
        payloads: dict[int, DistillatePayload] = {}

        def check(reply: Message) -> None:
            metrics = reply_metrics(reply)
            if PARTITION_ID not in metrics:
                raise PayloadError(f"reply lacks the '{PARTITION_ID}' metric")
            partition_id = int(metrics[PARTITION_ID])
            if partition_id in payloads:
                raise PayloadError(f"partition {partition_id} already sent distillates from another node")
            if DISTILLATES_KEY not in reply.content.array_records:
                raise PayloadError(f"reply lacks the '{DISTILLATES_KEY}' ArrayRecord")
            payload = DistillatePayload.from_record(
                reply.content.array_records[DISTILLATES_KEY], num_classes, ae_info.latent_shape
            )
            checked[id(reply)] = (partition_id, payload)

        def on_accept(reply: Message) -> None:
            partition_id, payload = checked.pop(id(reply))
            payloads[partition_id] = payload
            store.save_distillates(partition_id, payload)
            store.save_state(server, node_ids, complete=False, autoencoder=ae_info.to_json())

        try:
            with server.phase("client_round"):
                server.send_and_collect(node_ids, DISTILL, lambda _node: content, check=check, on_accept=on_accept)
        finally:
            store.save_state(server, node_ids, complete=True, autoencoder=ae_info.to_json())

        # 4-6. Decode, distil into the global model, evaluate.
        ordered = [payloads[partition] for partition in sorted(payloads)]
        return self._train(server, autoencoder, ae_info, ordered)

    def resume(self, server: ServerRun) -> tuple[list[int], StrategyResult]:
        """Train the global model from the uploads a previous attempt of this run stored.

        Returns
        -------
        tuple of (list of int, StrategyResult)
            The node ids of the original run and the result.

        Raises
        ------
        FileNotFoundError
            When the run folder holds no stored uploads.
        ValueError
            When the autoencoder rebuilt from the config differs from the one the clients used.
        """
        store = UploadStore(server.output_dir)
        node_ids, state = store.restore(server)
        autoencoder, ae_info = self._autoencoder(server)
        used = state.get("autoencoder", {}).get("fingerprint")
        if used and used != ae_info.fingerprint:
            raise ValueError(
                f"the autoencoder prepared now (fingerprint {ae_info.fingerprint}) differs from the one "
                f"the clients encoded with ({used}); point ae-cache-dir or autoencoder at the original one"
            )
        stored = store.load_distillates(server.data.train.num_classes, ae_info.latent_shape)
        if not state.get("collection_complete", False):
            logger.warning(
                "The run stopped while collecting replies; resuming with the %s clients stored so far",
                len(stored),
            )
        else:
            self._record_missing_uploads(server, store, {partition for partition, _ in stored})
        if len(stored) < self.config.min_replies:
            raise NotEnoughRepliesError(
                f"only {len(stored)} clients' distillates are stored, fewer than "
                f"min-replies={self.config.min_replies}"
            )
        logger.info("Resuming from %s stored distillate uploads in %s", len(stored), store.root)
        return node_ids, self._train(server, autoencoder, ae_info, [payload for _, payload in stored])

    @staticmethod
    def _record_missing_uploads(server: ServerRun, store: UploadStore, stored: set[int]) -> None:
        """Record every accepted client whose stored upload is missing as a failed client.

        The results then list the clients that the resumed model was trained without.
        """
        failed_nodes = {failure.node_id for failure in server.failures}
        for node_id, partition_id in sorted(server.node_partitions.items(), key=lambda item: item[1]):
            if node_id in failed_nodes or partition_id in stored:
                continue
            path = store.distillates_path(partition_id)
            server.record_failure(
                node_id, f"its accepted upload {path} is missing, so the resumed run trains without it", DISTILL
            )

    def _autoencoder(self, server: ServerRun) -> tuple[nn.Module, AutoencoderInfo]:
        cache_root = autoencoder_cache_root(self.config, server.output_dir)
        with server.phase("autoencoder"):
            return prepare_autoencoder(self.config, server.data, cache_root)

    def _train(
        self,
        server: ServerRun,
        autoencoder: nn.Module,
        ae_info: AutoencoderInfo,
        payloads: list[DistillatePayload],
    ) -> StrategyResult:
        cfg = self.config
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
        counts = np.bincount(class_ids, minlength=server.data.train.num_classes)
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


def autoencoder_cache_root(config: RunConfig, run_dir: Path) -> Path:
    """Return the folder that caches the public autoencoder for the run in `run_dir`.

    That is ``ae-cache-dir`` when set, otherwise ``cache/`` beside the run folder. A run
    folder moved elsewhere and resumed there uses the cache of its original ``output-dir``
    while no cache sits beside it.
    """
    if config.ae_cache_dir:
        return Path(config.ae_cache_dir)
    beside = run_dir.parent / "cache"
    original = Path(config.output_dir).expanduser() / "cache"
    if not beside.is_dir() and original.is_dir():
        return original
    return beside


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
