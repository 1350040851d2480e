"""Source supervision: a watchdog on samples received, reconnects with backoff, gaps noted.

``SourceSupervisor.run()`` runs on the capture thread in place of ``source.run``:

- a **watchdog** thread notices when no samples arrived for ``stall_timeout_s`` (a stalled
  pipe, a microphone whose callbacks stopped) and reports the source ``stalled``;
- a source that raises (PortAudio error, device gone) or whose stream stops is ``lost``;
- a *restartable* source (one with a ``reopen`` factory: the microphone) is closed and
  reopened with exponential backoff (``retrying``) up to ``retry_max_s`` between attempts;
  a non-restartable one (stdin, a file) keeps its blocking read and resumes by itself;
- a file or pipe that ends normally ends the run, as before (a restartable source ends
  the run only when it sets ``finished = True``); a non-restartable source that raises
  ends it with an error.

Loss and recovery travel to the worker as markers in the ring buffer, in order with the
audio: ``SourceLost`` (the worker closes open events) and ``SourceResumed`` (the worker
starts a new segment; stream time jumps forward by the gap, so it stays monotonic).
Silence (only zeros) is judged by the worker in stream time, not here.

The put wrapper runs inside the audio callback for a microphone: it takes one
uncontended lock, reads the clock and enqueues, nothing more.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from monitor.sources import Source

log = logging.getLogger(__name__)

# source states shown in Stats, the live view and logs
OK, STARTING, STALLED, LOST, RETRYING, SILENT, ENDED, FAILED = (
    "ok",
    "starting",
    "stalled",
    "lost",
    "retrying",
    "silent",
    "ended",
    "failed",
)


@dataclass(frozen=True)
class SourceStatus:
    """What the supervisor reports on every change: the state and its counters, as a value."""

    status: str
    detail: str
    restarts: int
    stalls: int
    losses: int
    last_error: str | None
    failed_reopens: int = 0  # attempts to reopen that failed (logged once per reason, counted here)


@dataclass(frozen=True)
class SourceLost:
    reason: str


@dataclass(frozen=True)
class SourceResumed:
    gap_s: float  # wall-clock seconds without audio
    sample_rate_hz: int  # of the (possibly reopened) source
    description: str


def backoff_delays(first_s: float, max_s: float) -> Iterator[float]:
    """first, 2*first, 4*first, ... capped at max_s (an endless generator)."""
    d = min(first_s, max_s)
    while True:
        yield d
        d = min(d * 2.0, max_s)


class SourceSupervisor:
    def __init__(
        self,
        source: Source,
        *,
        put: Callable[[np.ndarray], object],
        signal: Callable[[object], None],
        stop: threading.Event,
        reopen: Callable[[], Source] | None = None,
        stall_timeout_s: float = 5.0,
        retry_max_s: float = 30.0,
        retry_first_s: float = 0.5,
        on_status: Callable[[SourceStatus], None] | None = None,
    ):
        self.source = source
        self._down_put = put
        self._signal = signal
        self.stop = stop
        self.reopen = reopen
        self.stall_timeout_s = float(stall_timeout_s)
        self.retry_max_s = float(retry_max_s)
        self.retry_first_s = float(retry_first_s)
        self._on_status = on_status
        self._lock = threading.Lock()
        self._lost = False
        self._lost_at = 0.0
        self._in_put = False
        self._last_rx = time.monotonic()
        self._rx_this_attempt = 0
        self._attempt_stop = threading.Event()
        self._attempt_started = time.monotonic()
        self._done = threading.Event()
        self.status = STARTING
        self.restarts = 0
        self.failed_reopens = 0
        self.stalls = 0
        self.losses = 0
        self.last_error: str | None = None
        self.history: collections.deque = collections.deque(maxlen=200)  # (monotonic, status, detail)
        # a source that keeps failing logs once per change of its reason, not once per retry
        self._logged_failure: str | None = None
        self._episode_retries = 0  # reopen attempts since audio last flowed

    @property
    def restartable(self) -> bool:
        return self.reopen is not None

    # -- status --------------------------------------------------------------------------
    def _set_status(self, status: str, detail: str = "") -> None:
        if status == self.status and not detail:
            return
        self.status = status
        self.history.append((time.monotonic(), status, detail))
        if self._on_status is not None:
            self._on_status(self.snapshot(detail))

    def snapshot(self, detail: str = "") -> SourceStatus:
        return SourceStatus(
            self.status, detail, self.restarts, self.stalls, self.losses, self.last_error, self.failed_reopens
        )

    # -- capture side (may run inside the audio callback) ----------------------------------
    def put(self, block: np.ndarray) -> object:
        with self._lock:
            self._in_put = True
            if self._lost:
                self._resume_locked()
        try:
            return self._down_put(block)
        finally:
            self._rx_this_attempt += 1
            self._last_rx = time.monotonic()
            self._in_put = False

    def _resume_locked(self) -> None:
        self._lost = False
        gap = time.monotonic() - self._lost_at
        src = self.source
        self._signal(SourceResumed(gap, int(src.sample_rate_hz), src.description))
        self._set_status(OK, f"resumed after {gap:.1f} s")
        self._logged_failure = None
        self._episode_retries = 0
        log.warning("source %s resumed after a %.1f s gap", src.description, gap)

    def _mark_lost(self, status: str, reason: str) -> None:
        with self._lock:
            if not self._lost:
                self._lost = True
                self._lost_at = self._last_rx
                self.losses += 1
                self._signal(SourceLost(reason))
            self._set_status(status, reason)

    # -- watchdog ------------------------------------------------------------------------
    def _watch(self) -> None:
        period = max(0.02, min(0.25, self.stall_timeout_s / 4))
        while not self._done.wait(period):
            if self.stop.is_set():
                break
            with self._lock:
                now = time.monotonic()
                idle = now - max(self._last_rx, self._attempt_started)
                stalled = not self._in_put and idle > self.stall_timeout_s
                already_lost = self._lost
            if not stalled or self._attempt_stop.is_set():
                continue
            if not already_lost:
                self.stalls += 1
                log.warning("source %s stalled: no audio for %.1f s", self.source.description, idle)
                self._mark_lost(STALLED, f"no audio for {idle:.1f} s")
            elif self.restartable:
                self._set_status(STALLED, f"reopened source delivers no audio ({idle:.1f} s)")
            if self.restartable:
                self._attempt_stop.set()  # close the stream; run() reopens it
        self._attempt_stop.set()  # propagate the one stop event to the current attempt

    # -- capture thread ------------------------------------------------------------------
    def run(self) -> None:
        """Run the source until it ends or ``stop`` is set; reopen a lost restartable source."""
        watchdog = threading.Thread(target=self._watch, name="source-watchdog", daemon=True)
        watchdog.start()
        try:
            self._loop()
        finally:
            self._done.set()
            self._attempt_stop.set()
            watchdog.join(timeout=2.0)
            if watchdog.is_alive():
                log.warning("source watchdog did not stop within 2 s")

    def _loop(self) -> None:
        delays = backoff_delays(self.retry_first_s, self.retry_max_s)
        while not self.stop.is_set():
            self._rx_this_attempt = 0
            with self._lock:
                self._attempt_started = time.monotonic()
            if not self._lost:
                self._set_status(OK)
            run_stop = self._attempt_stop if self.restartable else self.stop
            try:
                self.source.run(self.put, run_stop)
                failure = None
            except Exception as e:  # noqa: BLE001 - any source failure is reported and retried
                failure = str(e) or type(e).__name__
            if self.stop.is_set():
                return
            if failure is None and (not self.restartable or self.source.finished):
                self._set_status(ENDED)
                return  # a file or pipe that ends normally (or a source that says so) ends the run
            if failure is not None:
                self.last_error = failure
                if failure != self._logged_failure:
                    self._logged_failure = failure
                    retry = " (retrying with backoff; said again only when the reason changes)"
                    log.error(
                        "source %s failed: %s%s", self.source.description, failure, retry if self.restartable else ""
                    )
                if not self.restartable:
                    self._set_status(FAILED, failure)
                    raise _SourceFailed(failure)
                self._mark_lost(LOST, failure)
            elif not self._attempt_stop.is_set():
                self._mark_lost(LOST, "the stream ended unexpectedly")
            if self._rx_this_attempt:
                delays = backoff_delays(self.retry_first_s, self.retry_max_s)  # it worked for a while
            if not self._reopen(delays):
                return

    def _reopen(self, delays: Iterator[float]) -> bool:
        """Reopen with backoff until it works (True) or stop is set (False)."""
        while True:
            delay = next(delays)
            self._set_status(RETRYING, f"reopening in {delay:.1f} s")
            log.log(
                logging.WARNING if self._episode_retries == 0 else logging.DEBUG,
                "source lost; reopening in %.1f s",
                delay,
            )
            if self.stop.wait(delay):
                return False
            assert self.reopen is not None  # only a restartable source gets here
            try:
                self.source = self.reopen()
            except Exception as e:  # noqa: BLE001 - the device may still be gone
                self.last_error = str(e) or type(e).__name__
                self.failed_reopens += 1
                self._set_status(LOST, self.last_error)
                if self.last_error != self._logged_failure:
                    self._logged_failure = self.last_error
                    log.warning(
                        "cannot reopen the source: %s (said again only when the reason changes)", self.last_error
                    )
                continue
            self.restarts += 1
            self._attempt_stop = threading.Event()
            self._episode_retries += 1
            if self.stop.is_set():
                self._attempt_stop.set()
            # once per episode; a stream that fails again at once says nothing new
            log.log(
                logging.WARNING if self._episode_retries == 1 else logging.DEBUG,
                "source reopened: %s",
                self.source.description,
            )
            return True


class _SourceFailed(Exception):
    """A non-restartable source raised: the run ends with this error."""
