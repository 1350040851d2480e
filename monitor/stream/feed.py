"""The source feed: the source runs under a ``SourceSupervisor`` on its own capture thread
and only enqueues blocks into a bounded ``RingBuffer``; stalls, losses and resumptions arrive
as markers between the blocks. The feed keeps what the supervisor reports (as values, into
the run's ``Stats``) and judges digital silence (only zeros for ``silence_timeout_s`` of
source time) from the blocks the worker takes out."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from monitor.config import SourceConfig
from monitor.logs import Throttle
from monitor.sources import Source
from monitor.stream.buffer import RingBuffer
from monitor.stream.supervise import OK, SILENT, STARTING, SourceStatus, SourceSupervisor

log = logging.getLogger("monitor.stream.pipeline")


class SourceFeed:
    def __init__(
        self,
        source: Source,
        cfg: SourceConfig,
        stop: threading.Event,
        stats: Any,
        *,
        reopen: Callable[[], Source] | None = None,
        name: str = "",
    ):
        self.source = source
        self.name = name
        self.stats = stats
        self.buffer = RingBuffer(int(cfg.buffer_s * source.sample_rate_hz))
        self.silence_timeout_s = cfg.silence_timeout_s
        self._silent_run_n = 0  # source samples of exact zeros in a row
        self._silent = False
        self._last = SourceStatus(STARTING, "", 0, 0, 0, None)
        self.supervisor = SourceSupervisor(
            source,
            put=self._put,
            signal=self.buffer.put_marker,
            stop=stop,
            reopen=reopen,
            stall_timeout_s=cfg.stall_timeout_s,
            retry_max_s=cfg.retry_max_s,
            on_status=self._on_status,
        )
        self._thread: threading.Thread | None = None

    # -- the capture thread ------------------------------------------------------------------
    def _put(self, block: np.ndarray) -> object:
        # a real-time device must never wait; files and pipes may (nothing is lost)
        if self.source.never_block:
            return self.buffer.put(block)
        return self.buffer.put(block, block_when_full=True, timeout=None)

    def _capture(self) -> None:
        try:
            self.supervisor.run()
        except Exception as e:  # noqa: BLE001 - reported in status, pipeline shuts down
            log.error("source failed: %s", e)
            self.stats.source_error = str(e)
        finally:
            self.buffer.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._capture, name=f"capture {self.name}", daemon=True)
        self._thread.start()

    def join(self) -> None:
        self.buffer.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                log.warning("capture thread did not stop within 5 s")
        self.counts()

    def get(self, timeout: float) -> Any:
        """The next block or marker, or None after ``timeout``."""
        return self.buffer.get(timeout=timeout)

    @property
    def ended(self) -> bool:
        return self.buffer.closed

    @property
    def caught_up(self) -> bool:
        return self.buffer.frames == 0

    def counts(self) -> None:
        self.stats.dropped_frames = self.buffer.dropped_frames
        self.stats.received_frames = self.buffer.received_frames

    # -- status -------------------------------------------------------------------------------
    def _on_status(self, st: SourceStatus) -> None:
        """The supervisor's report (a value: the feed never reads the supervisor back)."""
        self._last = st
        stats = self.stats
        stats.source_restarts, stats.source_stalls, stats.source_losses = st.restarts, st.stalls, st.losses
        stats.source_failed_reopens = st.failed_reopens
        stats.source_last_error = st.last_error
        stats.source_detail = st.detail
        stats.source_status = SILENT if (st.status == OK and self._silent) else st.status

    def silence(self, mono: np.ndarray, rate_hz: int) -> None:
        """Digital silence: a run of exact zeros longer than ``silence_timeout_s``."""
        if not mono.size:
            return
        was_s = self._silent_run_n / rate_hz
        self._silent_run_n = 0 if mono.any() else self._silent_run_n + mono.size
        self.stats.silent_s = self._silent_run_n / rate_hz
        self._set_silent(self.stats.silent_s >= self.silence_timeout_s, max(was_s, self.stats.silent_s))

    def resumed(self) -> None:
        self._silent_run_n = 0

    def _set_silent(self, silent: bool, run_s: float) -> None:
        if silent == self._silent:
            return
        self._silent = silent
        if silent:
            log.warning("source delivers only zeros (digital silence) for %.1f s: muted or disconnected input?", run_s)
        else:
            log.warning("source delivers sound again after %.1f s of digital silence", run_s)
        self._on_status(dataclasses.replace(self._last, detail="only zeros" if silent else ""))


class Drops:
    """Audio or windows lost because the source outran the monitor: counted into the run's
    stats (with when, for "falling behind" in /healthz) and warned at most once a minute,
    with what was dropped since the last warning."""

    def __init__(self, stats: Any, name: str):
        self.stats = stats
        self.name = name
        self._log = Throttle(60.0)
        self._windows = self._frames = 0  # since the last warning

    def add(self, windows: int, frames: int, rate_hz: int) -> None:
        self.stats.drops.append((time.monotonic(), windows, frames))
        self.stats.dropped_windows += windows
        self._windows += windows
        self._frames += frames
        if self._log.take("drop") is None:
            return
        parts = []
        if self._windows:
            parts.append(f"{self._windows} window(s) dropped (inference cannot keep up)")
        if self._frames:
            parts.append(
                f"{self._frames} samples ({self._frames / rate_hz:.1f} s) of audio dropped "
                "(the buffer was full: the source delivers faster than it is processed)"
            )
        log.warning("%s: %s; said at most once a minute", self.name, ", ".join(parts))
        self._windows = self._frames = 0
