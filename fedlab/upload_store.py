"""Accepted client uploads kept on disk as they arrive, so a crashed server can resume.

Layout inside a run folder::

    uploads/
      partition-0003.npz      latents, soft labels and class ids of one accepted reply
      server_state.json       node ids, per-client bytes and metrics, failures, phase times

Every file is written to a temporary name and renamed into place, so a crash leaves either
the previous version or the new one, never half a file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedlab.payload import CLASS_IDS, LATENTS, SOFT_LABELS, DistillatePayload, PayloadError
from fedlab.results import file_mode, write_json
from fedlab.server_run import ClientFailure, ServerRun

logger = logging.getLogger(__name__)

STATE_FILE = "server_state.json"


class UploadStore:
    """The ``uploads/`` folder of one run."""

    def __init__(self, run_dir: Path) -> None:
        self.root = Path(run_dir) / "uploads"

    # Writing ------------------------------------------------------------------------------

    def distillates_path(self, partition_id: int) -> Path:
        """Return the path of one partition's stored distillates, whether or not the file exists."""
        return self.root / f"partition-{partition_id:04d}.npz"

    def save_distillates(self, partition_id: int, payload: DistillatePayload) -> Path:
        """Store one client's accepted distillates under its partition id, atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.distillates_path(partition_id)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=self.root)
        try:
            os.fchmod(fd, file_mode())
            with os.fdopen(fd, "wb") as handle:
                np.savez(
                    handle,
                    **{LATENTS: payload.latents, SOFT_LABELS: payload.soft_labels, CLASS_IDS: payload.class_ids},
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def save_state(self, server: ServerRun, node_ids: list[int], *, complete: bool, **extra: Any) -> None:
        """Store what the server knows about the clients so far (bytes, metrics, failures)."""
        write_json(
            self.root / STATE_FILE,
            {
                "collection_complete": complete,
                "node_ids": list(node_ids),
                "node_partitions": {str(k): v for k, v in server.node_partitions.items()},
                "upload_bytes": {str(k): v for k, v in server.upload_bytes.items()},
                "download_bytes": {str(k): v for k, v in server.download_bytes.items()},
                "client_metrics": {str(k): v for k, v in server.client_metrics.items()},
                "failures": [failure.to_json() for failure in server.failures],
                "phase_seconds": dict(server.phase_seconds),
                **extra,
            },
        )

    # Reading ------------------------------------------------------------------------------

    def load_state(self) -> dict[str, Any]:
        """Return the stored server state.

        Raises
        ------
        FileNotFoundError
            When the run stored no state (it crashed before any client was contacted, or it
            is not a run of a strategy that stores its uploads).
        """
        path = self.root / STATE_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: this run stored no uploads to resume from (only strategies "
                "that upload distillates store them); start a new run instead"
            )
        try:
            state = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise PayloadError(
                f"{path} is unreadable ({err}); it cannot be rebuilt from the uploads, so start a "
                "new run instead"
            ) from err
        if not isinstance(state, dict) or not {"node_ids", "node_partitions"} <= state.keys():
            raise PayloadError(f"{path} is not a fedlab server state (node_ids or node_partitions is missing)")
        return state

    def restore(self, server: ServerRun) -> tuple[list[int], dict[str, Any]]:
        """Put the stored client accounting back into `server`; return node ids and the state."""
        state = self.load_state()
        server.node_partitions.update({int(k): int(v) for k, v in state["node_partitions"].items()})
        server.upload_bytes.update({int(k): int(v) for k, v in state["upload_bytes"].items()})
        server.download_bytes.update({int(k): int(v) for k, v in state["download_bytes"].items()})
        server.client_metrics.update({int(k): dict(v) for k, v in state["client_metrics"].items()})
        server.failures.extend(ClientFailure.from_json(f) for f in state["failures"])
        server.phase_seconds.update(state.get("phase_seconds", {}))
        return [int(node) for node in state["node_ids"]], state

    def load_distillates(
        self, num_classes: int, latent_shape: tuple[int, ...]
    ) -> list[tuple[int, DistillatePayload]]:
        """Return every stored payload with its partition id, ordered by partition id.

        Raises
        ------
        PayloadError
            When a stored file is unreadable or fails the same checks as an upload.
        """
        payloads = []
        for path in sorted(self.root.glob("partition-*.npz")):
            partition_id = int(path.stem.removeprefix("partition-"))
            try:
                with np.load(path, allow_pickle=False) as stored:
                    record = ArrayRecord({name: Array(stored[name]) for name in stored.files})
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                raise PayloadError(
                    f"stored distillates {path} are unreadable: {err}; move the file away to "
                    "resume without that client, who is then listed in failed_clients"
                ) from err
            try:
                payloads.append((partition_id, DistillatePayload.from_record(record, num_classes, latent_shape)))
            except PayloadError as err:
                raise PayloadError(f"stored distillates {path}: {err}") from err
        return payloads
