"""One format for everything the monitor writes to stderr: UTC time, level, who, message.

``2026-12-01T18:49:09.123Z INFO sound-monitor: model clap-htsat-unfused: ...`` -- banner
lines (``say``), events and status lines in plain mode, and every library warning share
it. Under the live view the same lines are printed above the view by rich (they never
break it).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TextIO

if TYPE_CHECKING:
    from rich.console import Console

NAME = "sound-monitor"  # the logger of what the monitor says to its user (banner, events)
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # logging's name
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def setup(verbosity: int = 0, stream: TextIO | None = None) -> None:
    """stderr handler with the UTC format; the user's lines at INFO, the modules' at WARNING
    (-v: INFO, -vv: DEBUG); SOUND_MONITOR_LOG_LEVEL (a number) overrides the modules' level."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(UTCFormatter(FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    level = logging.WARNING - 10 * min(verbosity, 2)
    env = os.environ.get("SOUND_MONITOR_LOG_LEVEL", "")
    if env.isdigit():
        level = int(env)
    root.setLevel(level)
    logging.getLogger(NAME).setLevel(min(level, logging.INFO))


def say(msg: str) -> None:
    """A line for the user (banner, progress): INFO of the ``sound-monitor`` logger; printed
    in the common format when logging is not set up (library use)."""
    logger = logging.getLogger(NAME)
    if logging.getLogger().handlers:
        logger.info("%s", msg)
    else:
        print(f"{UTCFormatter().formatTime(logging.makeLogRecord({}))} INFO {NAME}: {msg}", file=sys.stderr, flush=True)


class ConsoleHandler(logging.Handler):
    """Log records printed through a rich Console (above a Live view, not through it)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(UTCFormatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class under_live:
    """Context: while a Live view draws on ``console``, log lines go through it."""

    def __init__(self, console: Console) -> None:
        self.handler = ConsoleHandler(console)
        self._saved: list[logging.Handler] = []

    def __enter__(self) -> under_live:
        root = logging.getLogger()
        self._saved = list(root.handlers)
        for h in self._saved:
            root.removeHandler(h)
        root.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        for h in self._saved:
            root.addHandler(h)
        return False


class Throttle:
    """At most one log line per key per ``interval_s``; the lines held back in between are
    counted, and the next line that goes out says how many. Keys are few and fixed (a kind
    of message, never a payload), so a flood costs a counter, not memory or log lines."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def take(self, key: str) -> int | None:
        """None: hold this line back (counted); else the number held back since the last one."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)


def held_note(n: int, interval_s: float) -> str:
    """The tail a throttled line carries: `` (+N more like it in the last S s)``."""
    return f" (+{n} more like it in the last {interval_s:.0f} s)" if n else ""
