"""The encoder stage: windows of one or several sources -> embeddings, in shared batches.

One ``SharedEncoder`` serves every pipeline of a ``run`` (one per source), so several
microphones share one model in memory and their windows go through the model together:

- a pipeline's worker calls ``embed(windows, stream)`` and blocks until its vectors are
  back. ``backend.prepare(windows, stream)`` runs on the caller's thread (so sources
  compute their features in parallel; CLAP keeps one streaming front-end per stream).
- one encoder thread takes all queued requests, stacks the prepared rows of equal shape
  and runs ``backend.embed_prepared`` once per shape, then hands each request its rows.
- so that sources whose windows complete at nearly the same moment share a batch, the
  encoder thread waits up to ``linger_s`` after the first request for the other streams
  that are *expected*: registered, and with a request in the last ``expect_s`` seconds (a
  gated or silent source drops out of the wait instead of delaying the others). With one
  stream nothing waits.

Results equal per-stream embedding (the model sees the same rows); batching changes only
how often the model is called. Heavy imports stay in the backend modules.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from monitor.models.backend import Backend
from monitor.types import Window

log = logging.getLogger(__name__)


@dataclass
class _Request:
    stream: str
    inputs: np.ndarray  # [n, ...] rows from backend.prepare
    t_s: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: BaseException | None = None


class EncoderClosed(RuntimeError):
    pass


class SharedEncoder:
    def __init__(self, backend: Backend, *, linger_s: float = 0.05, expect_s: float = 3.0):
        self.backend = backend
        self.linger_s = max(0.0, float(linger_s))
        self.expect_s = float(expect_s)
        self._members: dict[str, float] = {}  # stream -> monotonic time of its last request
        self._queue: list[_Request] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        # figures for bench and tests
        self.calls = 0  # model calls
        self.windows = 0
        self.batch_sizes: Counter = Counter()  # windows per model call -> count
        self.mixed_batches = 0  # model calls with windows of more than one stream

    # -- membership ----------------------------------------------------------------------
    def register(self, stream: str) -> None:
        with self._cv:
            if self._closed:
                raise EncoderClosed("the encoder is closed")
            self._members[stream] = time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="encoder", daemon=True)
                self._thread.start()

    def unregister(self, stream: str) -> None:
        with self._cv:
            self._members.pop(stream, None)
            self._cv.notify_all()
        self.backend.end_stream(stream)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            t = self._thread
        if t is not None:
            t.join(timeout=30)

    # -- the callers' side ---------------------------------------------------------------------
    def embed(self, windows: Sequence[Window], stream: str) -> np.ndarray:
        """Consecutive windows of ``stream`` (``monitor.types.Window``) -> [n, D]."""
        if not windows:
            return np.zeros((0, int(self.backend.embedding_dim)), np.float32)
        rate = int(self.backend.sample_rate_hz)
        for w in windows:
            if w.sample_rate_hz != rate:
                raise ValueError(f"window at {w.sample_rate_hz} Hz, model expects {rate} Hz")
        if len({w.samples.size for w in windows}) > 1:  # a short tail window: one request per length
            return np.concatenate([self.embed([w], stream) for w in windows])
        req = _Request(stream, self.backend.prepare(windows, stream))
        with self._cv:
            if self._closed:
                raise EncoderClosed("the encoder is closed")
            if self._thread is None:  # used without register(): serve anyway
                self._thread = threading.Thread(target=self._loop, name="encoder", daemon=True)
                self._thread.start()
            self._members[stream] = req.t_s
            self._queue.append(req)
            self._cv.notify_all()
        req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    # -- the encoder thread ----------------------------------------------------------------
    def _expected(self, now: float) -> set[str]:
        return {s for s, t in self._members.items() if now - t <= self.expect_s}

    def _take(self) -> list[_Request] | None:
        with self._cv:
            while not self._queue:
                if self._closed:
                    return None
                self._cv.wait(0.5)
            deadline = self._queue[0].t_s + self.linger_s
            while not self._closed:
                now = time.monotonic()
                waiting_for = self._expected(now) - {r.stream for r in self._queue}
                if not waiting_for or now >= deadline:
                    break
                self._cv.wait(deadline - now)
            batch, self._queue = self._queue, []
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            groups: dict[tuple, list[_Request]] = {}
            for r in batch:
                groups.setdefault(r.inputs.shape[1:], []).append(r)
            for reqs in groups.values():
                try:
                    x = np.concatenate([r.inputs for r in reqs])
                    out = self.backend.embed_prepared(x)
                    at = 0
                    for r in reqs:
                        r.result = out[at : at + len(r.inputs)]
                        at += len(r.inputs)
                    self.calls += 1
                    self.windows += len(x)
                    self.batch_sizes[len(x)] += 1
                    if len({r.stream for r in reqs}) > 1:
                        self.mixed_batches += 1
                except BaseException as e:  # noqa: BLE001 - handed to every caller of the batch
                    log.debug("encoder batch failed: %s", e)
                    for r in reqs:
                        r.error = e
                finally:
                    for r in reqs:
                        r.done.set()

    def summary(self) -> dict:
        return {
            "model_calls": self.calls,
            "windows": self.windows,
            "mixed_batches": self.mixed_batches,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
        }
