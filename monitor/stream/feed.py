"""The source feed: the source runs under a ``SourceSupervisor`` on its own capture thread
and only enqueues blocks into a bounded ``RingBuffer``; stalls, losses and resumptions arrive
as markers between the blocks. The feed keeps what the supervisor reports (as values, in its
own ``FeedStats``) and judges digital silence (only zeros for ``silence_timeout_s`` of
source time) from the blocks the worker takes out. ``Drops`` counts what the source's
speed cost (windows, samples) and says so once a minute."""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.config import SourceConfig
from monitor.logs import Throttle
from monitor.sources import Source
from monitor.stream.buffer import RingBuffer
from monitor.stream.supervise import OK, SILENT, STARTING, SourceResumed, SourceStatus, SourceSupervisor

log = logging.getLogger("monitor.stream.pipeline")


@dataclass
class FeedStats:
    """The source as the feed sees it (supervision, gaps, silence, capture counts)."""

    # ok | starting | stalled | lost | retrying | silent | ended | failed
    status: str = STARTING
    detail: str = ""
    restarts: int = 0
    failed_reopens: int = 0
    stalls: int = 0
    losses: int = 0
    last_error: str | None = None
    error: str | None = None  # the source raised: the run ends
    gaps: int = 0
    gap_s: float = 0.0  # wall-clock seconds without audio, summed over gaps
    silent_s: float = 0.0  # current run of digital silence, stream seconds
    received_frames: int = 0
    dropped_frames: int = 0  # the ring buffer was full


class SourceFeed:
    def __init__(
        self,
        source: Source,
        cfg: SourceConfig,
        stop: threading.Event,
        *,
        reopen: Callable[[], Source] | None = None,
        name: str = "",
    ):
        self.source = source
        self.name = name
        self.stats = FeedStats()
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
            self.stats.error = str(e)
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
        stats.restarts, stats.stalls, stats.losses = st.restarts, st.stalls, st.losses
        stats.failed_reopens = st.failed_reopens
        stats.last_error = st.last_error
        stats.detail = st.detail
        stats.status = SILENT if (st.status == OK and self._silent) else st.status

    def silence(self, mono: np.ndarray, rate_hz: int) -> None:
        """Digital silence: a run of exact zeros longer than ``silence_timeout_s``."""
        if not mono.size:
            return
        was_s = self._silent_run_n / rate_hz
        self._silent_run_n = 0 if mono.any() else self._silent_run_n + mono.size
        self.stats.silent_s = self._silent_run_n / rate_hz
        self._set_silent(self.stats.silent_s >= self.silence_timeout_s, max(was_s, self.stats.silent_s))

    def resumed(self, marker: SourceResumed, start_s: float) -> None:
        """The source is back after ``marker.gap_s`` seconds without audio; its windows go on
        at ``start_s`` of stream time."""
        self._silent_run_n = 0
        self.stats.gaps += 1
        self.stats.gap_s += marker.gap_s
        log.warning(
            "source %s resumed: %.1f s gap, stream time continues at %.1f s",
            marker.description,
            marker.gap_s,
            start_s,
        )

    def _set_silent(self, silent: bool, run_s: float) -> None:
        if silent == self._silent:
            return
        self._silent = silent
        if silent:
            log.warning("source delivers only zeros (digital silence) for %.1f s: muted or disconnected input?", run_s)
        else:
            log.warning("source delivers sound again after %.1f s of digital silence", run_s)
        self._on_status(dataclasses.replace(self._last, detail="only zeros" if silent else ""))


@dataclass
class DropStats:
    windows: int = 0  # windows not scored (inference could not keep up)
    # (monotonic time, windows, samples) of each drop: "falling behind" in /healthz
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))

    def dropped_recently(self, within_s: float = 60.0, now: float | None = None) -> tuple[int, int]:
        """(windows, samples) dropped in the last ``within_s`` seconds of wall time."""
        now = time.monotonic() if now is None else now
        recent = [(w, f) for t, w, f in list(self.recent) if now - t <= within_s]
        return sum(w for w, _ in recent), sum(f for _, f in recent)


class Drops:
    """Audio or windows lost because the source outran the monitor: counted (with when, for
    "falling behind" in /healthz) and warned at most once a minute, with what was dropped
    since the last warning."""

    def __init__(self, name: str):
        self.stats = DropStats()
        self.name = name
        self._log = Throttle(60.0)
        self._windows = self._frames = 0  # since the last warning

    def keep_newest(self, pending: list, keep: int, rate_hz: int) -> tuple[list, list]:
        """A real-time source keeps only the newest ``keep`` windows: (kept, dropped)."""
        if len(pending) <= keep:
            return pending, []
        n = len(pending) - keep
        self.add(n, 0, rate_hz)
        return pending[n:], pending[:n]

    def add(self, windows: int, frames: int, rate_hz: int) -> None:
        self.stats.recent.append((time.monotonic(), windows, frames))
        self.stats.windows += windows
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
