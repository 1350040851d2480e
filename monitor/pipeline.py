"""The streaming pipeline: capture thread -> ring buffer -> worker thread -> sinks.

The capture thread runs the source and only enqueues blocks. The worker downmixes,
sanitises, resamples (state carried), cuts windows, gates by level, embeds pending windows
in one batch, scores, tracks events and hands scores/events to the sinks in order. A
real-time source that outruns inference loses whole windows (counted), never capture.
One ``stop`` event ends everything; open events are closed before the sinks are.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from monitor.audio_io import downmix, sanitise
from monitor.backend import Backend
from monitor.buffer import RingBuffer
from monitor.config import StreamConfig
from monitor.events import EventTracker
from monitor.resample import StreamResampler
from monitor.scoring import Scorer
from monitor.sinks.base import Sink
from monitor.types import Scores, Window
from monitor.windows import Windower

log = logging.getLogger(__name__)


@dataclass
class Stats:
    windows: int = 0
    gated: int = 0
    dropped_windows: int = 0
    dropped_frames: int = 0
    nonfinite_samples: int = 0
    events: int = 0
    inference_ms: float = 0.0
    level_dbfs: float = -150.0
    stream_s: float = 0.0
    source_error: str | None = None
    # seconds from the block that completed a window reaching the worker to that window's
    # scores and events being handed to the sinks (last 1000 windows)
    latency_s: list = field(default_factory=list)
    finished: bool = False
    last_scores: dict = field(default_factory=dict)


class Pipeline:
    def __init__(
        self,
        source,
        backend: Backend,
        scorer: Scorer,
        tracker: EventTracker,
        sinks: Sequence[Sink],
        stream_cfg: StreamConfig,
        *,
        buffer_s: float = 10.0,
        max_pending_windows: int = 4,
        stop: threading.Event | None = None,
    ):
        self.source = source
        self.backend = backend
        self.scorer = scorer
        self.tracker = tracker
        self.sinks = list(sinks)
        self.cfg = stream_cfg
        self.stop = stop or threading.Event()
        self.buffer = RingBuffer(int(buffer_s * source.sample_rate_hz))
        self.resampler = StreamResampler(source.sample_rate_hz, backend.sample_rate_hz)
        self.windower = Windower(backend.sample_rate_hz, stream_cfg.window_s, stream_cfg.hop_s)
        self.max_pending = max(1, max_pending_windows)
        # a real-time device must never wait; files and pipes may (nothing is lost)
        self._never_block = bool(getattr(source, "never_block", False))
        self._drop_late = bool(getattr(source, "realtime", False))
        self.stats = Stats()
        self._arrived: dict[int, float] = {}

    # -- threads ----------------------------------------------------------------------
    def _capture(self) -> None:
        try:
            put = (lambda b: self.buffer.put(b)) if self._never_block else (
                lambda b: self.buffer.put(b, block_when_full=True, timeout=None)
            )
            self.source.run(put, self.stop)
        except Exception as e:  # noqa: BLE001 - reported in status, pipeline shuts down
            log.error("source failed: %s", e)
            self.stats.source_error = str(e)
        finally:
            self.buffer.close()

    def run(self) -> Stats:
        """Run until the source ends or ``stop`` is set; returns the final statistics."""
        cap = threading.Thread(target=self._capture, name="capture", daemon=True)
        cap.start()
        try:
            self._work()
        finally:
            self.stop.set()
            self.buffer.close()
            cap.join(timeout=5)
            if cap.is_alive():
                log.warning("capture thread did not stop within 5 s")
            self._finish()
        return self.stats

    def _work(self) -> None:
        pending: list[Window] = []
        while True:
            block = self.buffer.get(timeout=0.2)
            if block is None:
                if self.buffer.closed or self.stop.is_set():
                    break
                continue
            t_block = time.perf_counter()
            new = self._windows_from(block)
            for w in new:
                self._arrived[w.index] = t_block
            pending.extend(new)
            if self._drop_late and len(pending) > self.max_pending:
                n = len(pending) - self.max_pending
                self.stats.dropped_windows += n
                log.warning("inference cannot keep up: dropped %d window(s)", n)
                for w in pending[:n]:
                    self._arrived.pop(w.index, None)
                pending = pending[n:]
            if pending and (self.buffer.frames == 0 or len(pending) >= self.max_pending):
                self._process(pending)
                pending = []
        tail = self.resampler.process(np.zeros(0, np.float32), last=True)
        pending.extend(self.windower.push(tail))
        pending.extend(self.windower.flush())
        if pending:
            self._process(pending)

    def _windows_from(self, block: np.ndarray) -> list[Window]:
        mono, n_bad = sanitise(downmix(block))
        if n_bad:
            self.stats.nonfinite_samples += n_bad
        self.stats.dropped_frames = self.buffer.dropped_frames
        return self.windower.push(self.resampler.process(mono))

    def _process(self, windows: list[Window]) -> None:
        gate = self.cfg.gate_dbfs
        live = [w for w in windows if w.level_dbfs >= gate]
        emb: dict[int, np.ndarray] = {}
        ms = 0.0
        if live:
            t0 = time.perf_counter()
            # equal-length windows go in one batch; a short tail window on its own
            by_len: dict[int, list[Window]] = {}
            for w in live:
                by_len.setdefault(w.samples.size, []).append(w)
            # a backend with a streaming front-end reuses the frames consecutive windows share
            embed_windows = getattr(self.backend, "embed_windows", None)
            for group in by_len.values():
                if embed_windows is not None:
                    vecs = embed_windows(group)
                else:
                    vecs = self.backend.embed_audio(np.stack([w.samples for w in group]))
                for w, v in zip(group, vecs):
                    emb[w.index] = v
            ms = (time.perf_counter() - t0) * 1000.0 / len(live)
        labels = self.scorer.labels
        for w in windows:
            if w.index in emb:
                values = tuple(float(x) for x in self.scorer.score(emb[w.index][None, :])[0])
                gated = False
            else:
                values = tuple(0.0 for _ in labels)
                gated = True
                self.stats.gated += 1
            sc = Scores(w.index, w.start_s, w.end_s, w.level_dbfs, labels, values, gated, ms if not gated else 0.0)
            self._emit(sc)

    def _emit(self, sc: Scores) -> None:
        st = self.stats
        st.windows += 1
        st.level_dbfs = sc.level_dbfs
        st.stream_s = sc.end_s
        if not sc.gated:
            st.inference_ms = sc.inference_ms
        st.last_scores = sc.as_dict()
        for s in self.sinks:
            s.on_scores(sc)
        for ev in self.tracker.update(sc):
            self._publish(ev)
        t = self._arrived.pop(sc.window_index, None)
        if t is not None:
            st.latency_s.append(time.perf_counter() - t)
            del st.latency_s[:-1000]

    def _publish(self, ev) -> None:
        self.stats.events += 1
        for s in self.sinks:
            try:
                s.publish(ev)
            except Exception as e:  # noqa: BLE001 - one sink's failure must not stop the rest
                log.error("sink %s failed to publish event %s: %s", s.name, ev.seq, e)

    def _finish(self) -> None:
        for ev in self.tracker.close_all():
            self._publish(ev)
        self.stats.finished = True
        for s in self.sinks:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001
                log.error("sink %s failed to close: %s", s.name, e)
