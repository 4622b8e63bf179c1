"""Finish a run whose server stopped after the clients' uploads were stored.

The run folder holds the resolved config, the partition manifest and ``uploads/`` (see
:mod:`fedlab.upload_store`). Resuming rebuilds the server test set and the public
autoencoder from the config, trains the global model on the stored distillates and writes
the model and ``results.json`` as the uninterrupted run would have, without contacting any
client.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fedlab.config import RunConfig, read_saved_run_config
from fedlab.federation import federated_data
from fedlab.results import save_model, write_json
from fedlab.server_run import ServerRun
from fedlab.training import limit_torch_threads
from fedlab.upload_store import UploadStore

logger = logging.getLogger("fedlab")

RESUMABLE_STRATEGIES = ("fedsd2c",)


def resume_run(run_dir: Path, force: bool = False) -> Path:
    """Train and evaluate from the uploads stored in `run_dir`; return the results path.

    Raises
    ------
    FileNotFoundError
        When `run_dir` lacks ``config.json`` or stored uploads.
    FileExistsError
        When the run already finished (it has ``results.json``) and `force` is false.
    ValueError
        When the run's strategy does not store its uploads.
    """
    from fedlab.server_app import build_results, log_summary
    from strategies import STRATEGIES

    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{run_dir / 'config.json'} not found; pass the folder of a fedlab run (outputs/<run-id>)"
        )
    config = RunConfig.from_run_config(read_saved_run_config(run_dir))
    if config.strategy not in RESUMABLE_STRATEGIES:
        raise ValueError(
            f"strategy={config.strategy!r} keeps no uploads to resume from; resumable strategies: "
            f"{', '.join(RESUMABLE_STRATEGIES)}"
        )
    results_path = run_dir / "results.json"
    if results_path.exists() and not force:
        raise FileExistsError(f"{results_path} exists: the run already finished; pass --force to train again")
    UploadStore(run_dir).load_state()  # raises before the data loads when the run stored no uploads

    started = time.perf_counter()
    limit_torch_threads()
    server = ServerRun(grid=None, config=config, data=federated_data(config), output_dir=run_dir)
    node_ids, outcome = STRATEGIES.get(config.strategy)(config).resume(server)
    save_model(run_dir / "model.pt", outcome.model)
    results = build_results(config, server, node_ids, outcome, time.perf_counter() - started, None)
    results["resumed"] = True
    write_json(results_path, results)
    log_summary(results, run_dir)
    return results_path
