"""Running the CLI as a real subprocess in tests: one runner (`cli`) and one starter (`start`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def monitor_env(state: Path, env_extra: dict | None = None, base: dict | None = None) -> dict:
    env = {**(os.environ if base is None else base), "SOUND_MONITOR_STATE": str(state), "NO_COLOR": "1"}
    env.update(env_extra or {})
    return env


def cli(*args, state: Path, env_extra: dict | None = None, timeout: float = 300, **kw):
    """`sound-monitor ARGS...` to completion; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "monitor", *map(str, args)],
        capture_output=True,
        text=True,
        env=monitor_env(state, env_extra),
        timeout=timeout,
        cwd=kw.pop("cwd", ROOT),
        **kw,
    )


def start(*args, state: Path, env_extra: dict | None = None, base_env: dict | None = None, **popen_kw):
    """`sound-monitor ARGS...` started in the background (a Popen; the caller stops it)."""
    popen_kw.setdefault("cwd", ROOT)
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", *map(str, args)], env=monitor_env(state, env_extra, base_env), **popen_kw
    )
