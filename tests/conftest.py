"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ae_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One autoencoder cache for the whole session.

    Runs with the same dataset, seed, split and autoencoder settings pretrain the same
    autoencoder, so every module that passes this folder as ``ae-cache-dir`` pretrains it once.
    """
    return tmp_path_factory.mktemp("ae-cache")
