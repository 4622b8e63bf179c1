"""One-shot FedAvg in one plain process, without Flower or Ray: the same client and server code.

Every client trains the same initial global model on its partition, one after another in
this process. The weighted average of the local models (weights: local sample counts, as
in Flower's FedAvg) is evaluated on the server test set. It gives the computation's own
cost, to compare with ``fedlab run`` of the same config with ``strategy='fedavg'
num-server-rounds=1``.

    .venv/bin/python benchmarks/plain_fedavg.py --run-config "num-clients=100 model-width=16"
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedlab.cli import resolve_run_config
from fedlab.client_app import ClientData, local_training_reply
from fedlab.federation import federated_data
from fedlab.payload import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES, model_to_record, record_bytes
from fedlab.server_run import ServerRun
from fedlab.training import average_state_dicts, limit_torch_threads

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
    with tempfile.TemporaryDirectory(prefix="fedlab-plain-fedavg-") as scratch:
        server = ServerRun(grid=None, config=config, data=data, output_dir=Path(scratch))
        global_model = server.build_model()
        initial = model_to_record(global_model)

        # 1. Clients, one after another: local training from the same initial model.
        client_start = time.perf_counter()
        states, weights, uploads, train_seconds = [], [], [], []
        for partition_id in range(config.num_clients):
            reply = local_training_reply(ClientData(config, partition_id), initial)
            uploads.append(record_bytes(reply))
            metrics = dict(reply.metric_records[METRICS_KEY])
            weights.append(float(metrics[NUM_EXAMPLES]))
            train_seconds.append(float(metrics["local-training-seconds"]))
            states.append(reply.array_records[ARRAYS_KEY].to_torch_state_dict())
        client_seconds = time.perf_counter() - client_start

        # 2. Server: weighted average and evaluation.
        server_start = time.perf_counter()
        global_model.load_state_dict(average_state_dicts(states, weights))
        accuracy = server.evaluate(global_model)
        server_seconds = time.perf_counter() - server_start

    figures = {
        "test_accuracy": accuracy,
        "num_clients": config.num_clients,
        "upload_bytes_per_client": statistics.fmean(uploads),
        "client_seconds": client_seconds,
        "local_training_seconds_mean": statistics.fmean(train_seconds),
        "server_seconds": server_seconds,
        "wall_seconds": time.perf_counter() - start,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "run_config": config.to_run_config(),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
