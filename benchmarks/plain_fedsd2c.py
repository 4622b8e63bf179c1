"""FedSD2C in one plain process, without Flower or Ray: the same client and server code paths.

It gives the computation's own cost (to compare with a `flwr run` of the same config) and a
fast loop for tuning defaults. Clients run one after another in this process.

    .venv/bin/python benchmarks/plain_fedsd2c.py --run-config "ipc=20 model-width=64"
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from flwr.app import RecordDict

from fedlab.cli import resolve_run_config
from fedlab.client_app import ClientData, distillation_reply
from fedlab.federation import federated_data
from fedlab.payload import DISTILLATES_KEY, METRICS_KEY, DistillatePayload, record_bytes
from fedlab.public_autoencoder import prepare_autoencoder
from fedlab.training import evaluate_classifier, limit_torch_threads
from strategies.fedsd2c import train_on_distillates

PROJECT_DIR = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", action="append", default=[], help="run-config overrides")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    limit_torch_threads()

    config, _ = resolve_run_config(PROJECT_DIR, args.run_config, None)
    start = time.perf_counter()
    data = federated_data(config)
    cache = Path(config.ae_cache_dir) if config.ae_cache_dir else Path(tempfile.gettempdir()) / "fedlab-ae-cache"
    ae_start = time.perf_counter()
    autoencoder, ae_info = prepare_autoencoder(config, data, cache)
    ae_seconds = time.perf_counter() - ae_start

    payloads, uploads, client_metrics = [], [], []
    for partition_id in range(config.num_clients):
        reply: RecordDict = distillation_reply(ClientData(config, partition_id), autoencoder)
        uploads.append(record_bytes(reply))
        client_metrics.append(dict(reply.metric_records[METRICS_KEY]))
        payloads.append(
            DistillatePayload.from_record(
                reply.array_records[DISTILLATES_KEY], data.train.num_classes, ae_info.latent_shape
            )
        )
        print(f"client {partition_id}: {client_metrics[-1]}", file=sys.stderr)

    channels, height, _ = data.train.image_shape
    client = ClientData(config, 0)
    model = client.new_model()
    server_start = time.perf_counter()
    loss, class_ids = train_on_distillates(config, model, autoencoder, payloads, client.device)
    server_seconds = time.perf_counter() - server_start
    accuracy = evaluate_classifier(model, data.test.float_images(), data.test.labels)

    figures = {
        "test_accuracy": accuracy,
        "num_distillates": int(len(class_ids)),
        "upload_bytes_per_client": statistics.fmean(uploads),
        "autoencoder_psnr_db": ae_info.test_psnr_db,
        "autoencoder_seconds": ae_seconds,
        "server_training_seconds": server_seconds,
        "server_final_loss": loss,
        "client_seconds_mean": {
            key: statistics.fmean(float(m[key]) for m in client_metrics)
            for key in client_metrics[0]
            if key.endswith("-seconds")
        },
        "wall_seconds": time.perf_counter() - start,
        "run_config": {k: v for k, v in config.to_run_config().items()},
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
