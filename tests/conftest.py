"""Shared test fixtures. Area-specific fixtures live in tests/fixtures_<area>.py (plugins)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SOUND_MONITOR_SHARED_DATA", ROOT.parent / "shared" / "data"))
DEMO_DIR = ROOT / "monitor" / "demo"

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = [
    "fixtures_clap",
    "fixtures_mqtt",
    "fixtures_offline",
]


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO_DIR


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared recordings not found at {SHARED_DATA} (set SOUND_MONITOR_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def uiowa_dir(shared_data: Path) -> Path:
    p = shared_data / "uiowa-dev"
    if not (p / "labels.csv").is_file():
        pytest.skip(f"uiowa-dev recordings not found at {p}")
    return p
