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
sys.path.insert(1, str(ROOT / "scripts"))  # clap_factories: the random checkpoints tests build

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


# what makes a test an integration test (`make test-fast` leaves these out): it runs the
# CLI or another process, or needs a real broker, an HTTP server, or a full-size export
_INTEGRATION = (
    "cli(", "start(", "start_monitor(", "subprocess", "Popen", "ThreadingHTTPServer", "FileServer(", "FlakyStream(",
)  # fmt: skip
_INTEGRATION_FIXTURES = {"mosquitto", "exported"}  # a real broker; msclap's full-size exports


def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        fn = getattr(item, "function", None)
        try:
            src = inspect.getsource(fn) if fn is not None else ""
        except (OSError, TypeError):
            src = ""
        if _INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())) or any(s in src for s in _INTEGRATION):
            item.add_marker(pytest.mark.integration)
