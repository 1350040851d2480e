"""Running the CLI as a real subprocess in tests: one runner (`cli`), one starter (`start`),
one poll (`wait_until`).

``clean=True`` gives the child only ``PATH=/usr/bin:/bin`` (plus the state dir): what a
fresh user's shell has, so nothing from the test runner's environment (HF_*, proxies,
a model folder) leaks into the run under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}


def monitor_env(state: Path, env_extra: dict | None = None, base: dict | None = None) -> dict:
    env = {**(os.environ if base is None else base), "SOUND_MONITOR_STATE": str(state), "NO_COLOR": "1"}
    env.update(env_extra or {})
    return env


def _argv(args) -> list[str]:
    return [sys.executable, "-m", "monitor", *map(str, args)]


def cli(
    *args,
    state: Path,
    env_extra: dict | None = None,
    clean: bool = False,
    timeout: float = 300,
    **kw,
) -> subprocess.CompletedProcess:
    """`sound-monitor ARGS...` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        _argv(args),
        capture_output=True,
        text=True,
        env=monitor_env(state, env_extra, CLEAN_ENV if clean else None),
        timeout=timeout,
        cwd=kw.pop("cwd", ROOT),
        **kw,
    )


def start(
    *args,
    state: Path,
    env_extra: dict | None = None,
    base_env: dict | None = None,
    clean: bool = False,
    **popen_kw,
) -> subprocess.Popen:
    """`sound-monitor ARGS...` started in the background (a Popen; the caller stops it)."""
    popen_kw.setdefault("cwd", ROOT)
    base = CLEAN_ENV if clean else base_env
    return subprocess.Popen(_argv(args), env=monitor_env(state, env_extra, base), **popen_kw)


def wait_until(pred: Callable[[], object], timeout: float = 30.0, every_s: float = 0.05) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` passed; its last value, as a bool."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every_s)
    return bool(pred())
