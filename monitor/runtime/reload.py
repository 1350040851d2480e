"""Config hot reload: on SIGHUP (or when the file changes) labels, scoring and event
settings change without dropping audio; everything else needs a restart.

The reloader thread loads and validates the new config, builds the new scorer (label
embeddings may take a moment, so not on the worker) and hands it to the pipeline, which
swaps it in between two batches of windows. Files taught outside the config (the veto
clips of ``enroll --veto``: ``extra_paths``) are watched too: a change to them is a live
change like one to the labels. An invalid config is rejected with a logged
message and the running one stays. Sections that cannot change live (source, model,
stream, output, mqtt, clips, device_id, state_dir) are reported as needing a restart.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from monitor.config import Config
from monitor.errors import UserError

log = logging.getLogger(__name__)

LIVE_SECTIONS = ("labels", "scoring", "events")


def restart_needed(old: Config, new: Config) -> list[str]:
    """Top-level sections that differ and cannot be changed while running."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    return [k for k in a if k not in LIVE_SECTIONS and a[k] != b.get(k)]


def live_changes(old: Config, new: Config) -> list[str]:
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    return [k for k in LIVE_SECTIONS if a[k] != b[k]]


class ConfigReloader:
    """``load()`` -> Config (may raise UserError); ``apply(cfg)`` builds and swaps (may raise)."""

    def __init__(
        self,
        load: Callable[[], Config],
        apply: Callable[[Config], None],
        running: Config,
        stop: threading.Event,
        *,
        watch_path: str | None = None,
        extra_paths: Sequence[Path] = (),
        poll_s: float = 2.0,
        say: Callable[[str], None] | None = None,
    ):
        self._load = load
        self._apply = apply
        self.running = running
        self.stop = stop
        self.watch_path = watch_path
        self.extra_paths = list(extra_paths)
        self.poll_s = poll_s
        self._say = say or (lambda m: log.warning("%s", m))
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._mtime = self._stat()
        self._extra_applied = self._extra_stat()
        self.applied = 0
        self.rejected = 0
        self.last_message = ""

    @staticmethod
    def _stat_of(path: str | os.PathLike) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
            return (st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def _extra_stat(self) -> tuple:
        return tuple(self._stat_of(p) for p in self.extra_paths)

    def _stat(self) -> tuple | None:
        if not self.watch_path and not self.extra_paths:
            return None
        return (self._stat_of(self.watch_path) if self.watch_path else None, self._extra_stat())

    def request(self) -> None:
        """Ask for a reload (safe from a signal handler: only sets an event)."""
        self._wake.set()

    def reload_once(self) -> str:
        """Load, validate, compare and apply; returns the message that was reported."""
        try:
            new = self._load()
        except UserError as e:
            self.rejected += 1
            return self._report(f"config reload rejected, the running config stays: {e}")
        changed = live_changes(self.running, new)
        extra = self._extra_stat()
        if extra != self._extra_applied:
            changed.append("taught clips")
        frozen = restart_needed(self.running, new)
        parts = []
        if changed:
            try:
                self._apply(new)
            except (UserError, ValueError, OSError) as e:
                self.rejected += 1
                return self._report(f"config reload rejected, the running config stays: {e}")
            data = self.running.model_dump(mode="python")
            fresh = new.model_dump(mode="python")
            for k in LIVE_SECTIONS:
                data[k] = fresh[k]
            self.running = Config.model_validate(data)
            self._extra_applied = extra
            self.applied += 1
            parts.append("config reloaded: " + ", ".join(changed) + " changed")
        else:
            parts.append("config reloaded: no live change")
        if frozen:
            parts.append("changes to " + ", ".join(frozen) + " need a restart (still running with the old values)")
        return self._report("; ".join(parts))

    def _report(self, msg: str) -> str:
        self.last_message = msg
        self._say(msg)
        return msg

    def _loop(self) -> None:
        while not self.stop.is_set():
            watching = bool(self.watch_path or self.extra_paths)
            woke = self._wake.wait(self.poll_s if watching else 1.0)
            if self.stop.is_set():
                return
            if not woke and watching:
                m = self._stat()
                if m is None or m == self._mtime:
                    continue
                self._mtime = m
            elif not woke:
                continue
            self._wake.clear()
            self._mtime = self._stat()
            try:
                self.reload_once()
            except Exception as e:  # noqa: BLE001 - a reload must never take the monitor down
                self.rejected += 1
                self._report(f"config reload failed, the running config stays: {type(e).__name__}: {e}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="config-reload", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 5.0) -> None:
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("config reload thread did not stop within %.0f s", timeout)
