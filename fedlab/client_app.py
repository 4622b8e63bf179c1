"""The fedlab ClientApp: local training for model-sharing baselines and distillation for FedSD2C.

A client finds its partition through its node config (``partition-id`` and
``num-partitions``, set by Flower's simulation engine or by ``flower-supernode
--node-config``). Data are loaded and partitioned once per process and reused.
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients import DISTILLERS
from fedlab.autoencoder import autoencoder_fingerprint
from fedlab.config import RunConfig
from fedlab.federation import federated_data
from fedlab.models import Classifier, build_model
from fedlab.payload import (
    ARRAYS_KEY,
    AUTOENCODER_CONFIG_KEY,
    AUTOENCODER_KEY,
    DISTILLATES_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    PARTITION_ID,
    DistillatePayload,
    autoencoder_from_records,
    load_model_record,
    metrics_record,
    model_to_record,
)
from fedlab.training import limit_torch_threads, seeded_generator, select_device, train_classifier

logger = logging.getLogger(__name__)

app = ClientApp()

# Purposes mixed into the client's seeds so that each random stream is independent.
_SEED_MODEL, _SEED_TRAIN, _SEED_DISTILL = 1, 2, 3


class ClientData:
    """The local data and settings of the client running in this process."""

    def __init__(self, config: RunConfig, partition_id: int) -> None:
        self.config = config
        self.partition_id = partition_id
        limit_torch_threads()
        self.device = select_device()
        data = federated_data(self.config)
        local = data.client_dataset(self.partition_id)
        self.num_classes = data.train.num_classes
        self.image_shape = data.train.image_shape
        self.images = local.float_images().to(self.device)
        self.labels = local.labels.to(self.device)

    @classmethod
    def from_context(cls, context: Context) -> ClientData:
        """Read the run config and this node's partition from a Flower context."""
        config = RunConfig.from_run_config(context.run_config)
        node_config = context.node_config
        if "partition-id" not in node_config or "num-partitions" not in node_config:
            raise ValueError(
                "node config lacks 'partition-id' and 'num-partitions'; start the SuperNode with "
                "--node-config \"partition-id=<i> num-partitions=<n>\""
            )
        num_partitions = int(node_config["num-partitions"])
        if num_partitions != config.num_clients:
            raise ValueError(
                f"node config num-partitions={num_partitions} differs from run-config "
                f"num-clients={config.num_clients}; set num-clients={num_partitions}"
            )
        return cls(config, int(node_config["partition-id"]))

    def new_model(self) -> Classifier:
        """Build the configured model with weights drawn from the run seed and partition."""
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed * 100_003 + self.partition_id * 7 + _SEED_MODEL)
            model = build_model(
                cfg.model,
                in_channels=self.image_shape[0],
                num_classes=self.num_classes,
                image_size=self.image_shape[1],
                width=cfg.model_width,
                depth=cfg.model_depth,
            )
        return model.to(self.device)

    def train_local(self, model: Classifier) -> tuple[float, float]:
        """Train `model` on the local data; return (final loss, seconds)."""
        cfg = self.config
        start = time.perf_counter()
        loss = train_classifier(
            model,
            self.images,
            self.labels,
            epochs=cfg.local_epochs,
            lr=cfg.local_lr,
            batch_size=cfg.local_batch_size,
            weight_decay=cfg.local_weight_decay,
            generator=seeded_generator(cfg.seed, self.partition_id, _SEED_TRAIN),
        )
        return loss, time.perf_counter() - start

    def base_metrics(self) -> dict[str, float | int]:
        return {
            NUM_EXAMPLES: int(len(self.labels)),
            PARTITION_ID: self.partition_id,
            "num-local-classes": int(torch.unique(self.labels).numel()),
        }


def local_training_reply(client: ClientData, initial: ArrayRecord) -> RecordDict:
    """Train the received model on local data; return its weights and metrics."""
    model = client.new_model()
    load_model_record(model, initial)
    loss, seconds = client.train_local(model)
    metrics = {**client.base_metrics(), "train-loss": loss, "local-training-seconds": seconds}
    return RecordDict({ARRAYS_KEY: model_to_record(model), METRICS_KEY: metrics_record(metrics)})


def distillation_reply(client: ClientData, autoencoder: nn.Module) -> RecordDict:
    """Train a local model, distil the local data into latents; return only those and metrics."""
    cfg = client.config
    model = client.new_model()
    loss, train_seconds = client.train_local(model)

    distiller = DISTILLERS.get(cfg.distiller).from_run_config(cfg)
    distillates = distiller.distill(
        model,
        client.images,
        client.labels,
        autoencoder,
        client.num_classes,
        seeded_generator(cfg.seed, client.partition_id, _SEED_DISTILL),
    )
    payload = DistillatePayload.from_tensors(
        distillates.latents, distillates.soft_labels, distillates.class_ids, cfg.latent_dtype
    )
    metrics = {
        **client.base_metrics(),
        "train-loss": loss,
        "local-training-seconds": train_seconds,
        "num-distillates": len(payload),
        **{f"{name}-seconds": seconds for name, seconds in distillates.timings.items()},
    }
    logger.info(
        "Partition %s: %s distillates from %s images", client.partition_id, len(payload), len(client.labels)
    )
    return RecordDict({DISTILLATES_KEY: payload.to_record(), METRICS_KEY: metrics_record(metrics)})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on local data and send back its weights."""
    client = ClientData.from_context(context)
    return Message(content=local_training_reply(client, msg.content.array_records[ARRAYS_KEY]), reply_to=msg)


@app.train("distill")
def distill(msg: Message, context: Context) -> Message:
    """Distil local data into latents with the public autoencoder sent by the server."""
    client = ClientData.from_context(context)

    # The public autoencoder arrives with the request; check it arrived intact.
    ae_config = msg.content.config_records[AUTOENCODER_CONFIG_KEY]
    autoencoder = autoencoder_from_records(msg.content.array_records[AUTOENCODER_KEY], ae_config)
    autoencoder = autoencoder.to(client.device)
    expected = str(ae_config.get("fingerprint", ""))
    if expected and autoencoder_fingerprint(autoencoder) != expected:
        raise ValueError("the received autoencoder does not match the server's fingerprint")
    return Message(content=distillation_reply(client, autoencoder), reply_to=msg)
