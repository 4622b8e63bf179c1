"""The fedlab ServerApp: validate the config, run the chosen strategy, save everything."""

from __future__ import annotations

import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import flwr
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlab.config import RunConfig
from fedlab.data import save_manifest
from fedlab.faults import assigned_faults
from fedlab.federation import federated_data, partition_params
from fedlab.launch import RESULTS_MARKER
from fedlab.payload import model_upload_bytes
from fedlab.placement import placement_results
from fedlab.privacy import privacy_results
from fedlab.results import cpu_model, make_run_dir, save_model, summarize_client_seconds, write_json
from fedlab.server_run import REJECTED, ServerRun
from fedlab.training import limit_torch_threads
from strategies import STRATEGIES
from strategies.base import StrategyResult

logger = logging.getLogger("fedlab")

app = ServerApp()


#: Packages whose INFO lines the ServerApp prints: the platform and the strategies.
LOGGED_PACKAGES = ("fedlab", "strategies")


def _configure_logging() -> None:
    for name in LOGGED_PACKAGES:
        package_logger = logging.getLogger(name)
        if package_logger.handlers:
            continue
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(f"%(levelname)s {name}: %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)
        package_logger.propagate = False


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one fedlab experiment and write ``<output-dir>/<run-id>/results.json``."""
    _configure_logging()
    started = time.perf_counter()
    config = RunConfig.from_run_config(context.run_config)
    limit_torch_threads()
    logger.info("Run %s: strategy=%s dataset=%s clients=%s partitioner=%s alpha=%s seed=%s",
                context.run_id, config.strategy, config.dataset, config.num_clients,
                config.partitioner, config.alpha, config.seed)

    # 1. Data, split and partitions, saved before any client work.
    run_dir = make_run_dir(config.output_dir, config.strategy, context.run_id, config.run_name)
    write_json(run_dir / "config.json", {"run_config": config.to_run_config(), "seed": config.seed})
    data = federated_data(config)
    summary = data.partition_summary()
    save_manifest(
        run_dir / "partition_manifest.json",
        data.partitions,
        seed=config.seed,
        partitioner=config.partitioner,
        params=partition_params(config),
        extra={"dataset": config.dataset, "test_size": len(data.test),
               "public_size": 0 if data.public is None else len(data.public),
               "pool_size": int(len(data.pool_indices)), "summary": summary},
    )

    # 2. The strategy drives the clients and trains the global model.
    server = ServerRun(grid=grid, config=config, data=data, output_dir=run_dir)
    node_ids = server.wait_for_nodes()
    strategy = STRATEGIES.get(config.strategy)(config)
    outcome = strategy.run(server, node_ids)

    # 3. Save the global model and the results.
    save_model(run_dir / "model.pt", outcome.model)
    results = build_results(config, server, node_ids, outcome, time.perf_counter() - started, context.run_id)
    write_json(run_dir / "results.json", results)
    log_summary(results, run_dir)


def build_results(
    config: RunConfig,
    server: ServerRun,
    node_ids: list[int],
    outcome: StrategyResult,
    wall_seconds: float,
    flower_run_id: int | None,
) -> dict[str, Any]:
    """Return the content of ``results.json`` for a finished run."""
    uploads = [server.upload_bytes[node] for node in node_ids if node in server.upload_bytes]
    downloads = [server.download_bytes[node] for node in node_ids if node in server.download_bytes]
    return {
        "strategy": config.strategy,
        "dataset": config.dataset,
        "model": config.model,
        "num_clients": config.num_clients,
        "partitioner": config.partitioner,
        "alpha": config.alpha,
        "seed": config.seed,
        "heterogeneity": server.data.heterogeneity(),
        "test_accuracy": outcome.test_accuracy,
        "upload_bytes_per_client": sum(uploads) / len(uploads) if uploads else 0.0,
        "upload_bytes_per_client_max": max(uploads, default=0),
        "download_bytes_per_client": sum(downloads) / len(downloads) if downloads else 0.0,
        "model_bytes": model_upload_bytes(server.build_model()),
        "failed_clients": server.failed_clients(),
        "rejected_clients": server.failed_clients(REJECTED),
        "injected_faults": {str(k): v for k, v in sorted(assigned_faults(config).items())},
        "wall_seconds": wall_seconds,
        "phase_seconds": {
            **summarize_client_seconds(server.client_metrics),
            **dict(server.phase_seconds),
        },
        **outcome.extra,
        **privacy_results(config, server.client_metrics, server.node_partitions),
        **placement_results(server.client_metrics, server.node_partitions),
        "clients": [
            {
                "node_id": node,
                "partition_id": server.node_partitions.get(node),
                "upload_bytes": server.upload_bytes.get(node, 0),
                "download_bytes": server.download_bytes.get(node, 0),
                **{key.replace("-", "_"): value for key, value in server.client_metrics.get(node, {}).items()},
            }
            for node in node_ids
        ],
        "flower_run_id": flower_run_id,
        "run_dir": str(server.output_dir),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "flwr": flwr.__version__, "cpu": cpu_model()},
    }


def log_summary(results: dict[str, Any], run_dir: Path) -> None:
    """Log the headline figures and, last, the marker line with the path of results.json."""
    logger.info("Test accuracy %.4f | upload %.0f and download %.0f bytes per client | model %s bytes | "
                "%s failed clients", results["test_accuracy"], results["upload_bytes_per_client"],
                results["download_bytes_per_client"], results["model_bytes"], len(results["failed_clients"]))
    logger.info("%s %s", RESULTS_MARKER, run_dir / "results.json")
