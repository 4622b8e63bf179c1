"""The fedlab ClientApp: local training for model-sharing baselines and distillation for FedSD2C.

A client finds its data through its node config, in one of two ways:

- ``partition-id`` and ``num-partitions`` (set by Flower's simulation engine, or by
  ``flower-supernode --node-config``): the client loads the run's dataset and takes its
  partition. Data are loaded and partitioned once per process and reused.
- ``data-path``: a device data folder (see :mod:`fedlab.device_data`), for real devices
  that hold only their own data.

With ``autoencoder-delivery='local'`` the node config key ``autoencoder-path`` names the
device's copy of the public autoencoder.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from clients import DISTILLERS
from fedlab import faults
from fedlab.autoencoder import autoencoder_fingerprint, decode_images, load_autoencoder
from fedlab.config import RunConfig
from fedlab.data import ImageDataset
from fedlab.device_data import DATA_PATH_KEY, check_matches_run, load_device_data
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
from fedlab.placement import placement_mod
from fedlab.privacy import NOISE_ABSOLUTE_SCALE, add_latent_noise, measure_privacy
from fedlab.training import limit_torch_threads, seeded_generator, select_device, train_classifier

logger = logging.getLogger(__name__)

# The placement mod pins every handler to its share of the GPU and reports where it ran.
app = ClientApp(mods=[placement_mod])

# Node config key of the device's copy of the public autoencoder (autoencoder-delivery='local').
AUTOENCODER_PATH_KEY = "autoencoder-path"

# Purposes mixed into the client's seeds so that each random stream is independent.
_SEED_MODEL, _SEED_TRAIN, _SEED_DISTILL, _SEED_LATENT_NOISE = 1, 2, 3, 4


class ClientData:
    """The local data and settings of the client running in this process."""

    def __init__(self, config: RunConfig, partition_id: int, local: ImageDataset | None = None) -> None:
        """Hold `local` as this client's data, or partition `partition_id` of the run when None."""
        self.config = config
        self.partition_id = partition_id
        limit_torch_threads()
        self.device = select_device()
        if local is None:
            data = federated_data(self.config)
            local = data.client_dataset(self.partition_id)
        self.num_classes = local.num_classes
        self.image_shape = local.image_shape
        self.images = local.float_images().to(self.device)
        self.labels = local.labels.to(self.device)

    @classmethod
    def from_folder(cls, config: RunConfig, data_path: str) -> ClientData:
        """Load a device data folder, check it against the run, and report its partition id."""
        folder = Path(data_path).expanduser()
        if not folder.is_absolute():
            raise ValueError(
                f"node config {DATA_PATH_KEY}={data_path!r} is a relative path; start the SuperNode "
                f"with an absolute one, e.g. --node-config \"{DATA_PATH_KEY}='/home/me/fedlab-data/client-0'\""
            )
        meta, local = load_device_data(folder)
        check_matches_run(meta, config, folder)
        logger.info("Loaded %s samples of partition %s from %s", len(local), meta.partition_id, folder)
        return cls(config, meta.partition_id, local)

    @classmethod
    def from_context(cls, context: Context) -> ClientData:
        """Read the run config and this node's data (folder or partition) from a Flower context."""
        config = RunConfig.from_run_config(context.run_config)
        node_config = context.node_config
        if DATA_PATH_KEY in node_config:
            if "partition-id" in node_config or "num-partitions" in node_config:
                raise ValueError(
                    f"node config sets both '{DATA_PATH_KEY}' and 'partition-id'/'num-partitions'; "
                    f"start the SuperNode with only --node-config \"{DATA_PATH_KEY}=<folder>\""
                )
            return cls.from_folder(config, str(node_config[DATA_PATH_KEY]))
        if "partition-id" not in node_config or "num-partitions" not in node_config:
            raise ValueError(
                f"node config lacks '{DATA_PATH_KEY}' or 'partition-id' and 'num-partitions'; "
                f"start the SuperNode with --node-config \"{DATA_PATH_KEY}=<folder>\" or "
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

    # Optional noise on the latents; the soft labels stay those of the latents before noise.
    latents, noise_scale = add_latent_noise(
        distillates.latents,
        cfg.latent_noise,
        cfg.latent_noise_scale,
        seeded_generator(cfg.seed, client.partition_id, _SEED_LATENT_NOISE),
    )
    payload = DistillatePayload.from_tensors(
        latents, distillates.soft_labels, distillates.class_ids, cfg.latent_dtype
    )
    metrics = {
        **client.base_metrics(),
        "train-loss": loss,
        "local-training-seconds": train_seconds,
        "num-distillates": len(payload),
        NOISE_ABSOLUTE_SCALE: noise_scale,
        **{f"{name}-seconds": seconds for name, seconds in distillates.timings.items()},
    }

    # Privacy report on exactly what the server decodes: the noisy latents in the wire dtype.
    if cfg.privacy_report:
        start = time.perf_counter()
        wire_latents = torch.from_numpy(payload.latents.astype("float32"))
        decoded = decode_images(autoencoder, wire_latents.to(next(autoencoder.parameters()).device))
        class_ids = torch.from_numpy(payload.class_ids).long()
        report = measure_privacy(decoded, class_ids, client.images, client.labels)
        metrics.update(report.to_metrics())
        metrics["privacy-report-seconds"] = time.perf_counter() - start
    logger.info(
        "Partition %s: %s distillates from %s images", client.partition_id, len(payload), len(client.labels)
    )
    return RecordDict({DISTILLATES_KEY: payload.to_record(), METRICS_KEY: metrics_record(metrics)})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received model on local data and send back its weights."""
    client = ClientData.from_context(context)
    fault = faults.before_reply(client.config, client.partition_id)
    content = local_training_reply(client, msg.content.array_records[ARRAYS_KEY])
    return Message(content=_apply_fault(content, fault, ARRAYS_KEY, client.config), reply_to=msg)


@app.train("distill")
def distill(msg: Message, context: Context) -> Message:
    """Distil local data into latents with the public autoencoder sent by the server."""
    client = ClientData.from_context(context)
    autoencoder = request_autoencoder(msg.content, context.node_config).to(client.device)
    fault = faults.before_reply(client.config, client.partition_id)
    content = distillation_reply(client, autoencoder)
    return Message(content=_apply_fault(content, fault, DISTILLATES_KEY, client.config), reply_to=msg)


def request_autoencoder(content: RecordDict, node_config: Mapping[str, object]) -> nn.Module:
    """Return the public autoencoder of a distillation request, on the CPU.

    The request carries the autoencoder's weights, or with ``autoencoder-delivery='local'``
    only its fingerprint and the server's folder. In that case the client loads its own copy
    from the node config's ``autoencoder-path``, or else from the server's folder. Either way
    the autoencoder must match the server's fingerprint.

    Raises
    ------
    ValueError
        When no copy is found or the autoencoder differs from the server's.
    """
    ae_config = content.config_records[AUTOENCODER_CONFIG_KEY]
    expected = str(ae_config.get("fingerprint", ""))
    if AUTOENCODER_KEY in content.array_records:
        autoencoder = autoencoder_from_records(content.array_records[AUTOENCODER_KEY], ae_config)
        fingerprint = autoencoder_fingerprint(autoencoder)
        source = "the received autoencoder"
    else:
        folder = str(node_config.get(AUTOENCODER_PATH_KEY) or ae_config.get("path", ""))
        autoencoder, fingerprint = _local_autoencoder(folder)
        source = f"the autoencoder at {folder}"
    if expected and fingerprint != expected:
        raise ValueError(
            f"{source} (fingerprint {fingerprint[:16]}) differs from the server's ({expected[:16]}); "
            "give this client a copy of the server's autoencoder folder"
        )
    return autoencoder


def _local_autoencoder(folder: str) -> tuple[nn.Module, str]:
    """Load this client's copy of the public autoencoder and return it with its fingerprint."""
    hint = (
        f"copy the server's autoencoder folder to this device and start the SuperNode with "
        f"--node-config \"{AUTOENCODER_PATH_KEY}='/absolute/path/to/autoencoder'\""
    )
    path = Path(folder).expanduser()
    if not folder:
        raise ValueError(f"the request carries no autoencoder and no folder to load it from; {hint}")
    if not path.is_absolute():
        raise ValueError(f"{AUTOENCODER_PATH_KEY}={folder!r} is a relative path; {hint}")
    if not (path / "config.json").is_file():
        raise ValueError(f"no saved autoencoder at {folder} (config.json is missing); {hint}")
    # The files' sizes and modification times are part of the cache key, so a replaced copy is reloaded.
    stamp = tuple(
        (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
        for entry in sorted(path.iterdir())
        if entry.is_file()
    )
    autoencoder, fingerprint = _load_autoencoder_cached(str(path.resolve()), stamp)
    # A copy, so that moving it to a device never changes the cached one.
    return copy.deepcopy(autoencoder), fingerprint


@functools.lru_cache(maxsize=2)
def _load_autoencoder_cached(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> tuple[nn.Module, str]:
    del stamp  # only part of the cache key
    autoencoder = load_autoencoder(folder)
    return autoencoder, autoencoder_fingerprint(autoencoder)


def _apply_fault(content: RecordDict, fault: str | None, record_key: str, config: RunConfig) -> RecordDict:
    """Corrupt the reply when the config assigns this client a malformed-reply fault."""
    if fault not in faults.MALFORMED_KINDS:
        return content
    logger.info("Sending a malformed reply on purpose: %s", faults.MALFORMED_KINDS[fault])
    return faults.corrupt_reply(content, fault, record_key, config.max_payload_bytes)
