"""One source's pipeline: the wiring of its stages (monitor/stream/), in one direction:

    SourceFeed (capture thread, ring buffer, supervision, silence)
      -> Segmenter (mono, resampler, windows in stream time, gaps, audio tap)
      -> WindowInference (level gate, change gate, shared encoder, scores)
      -> EventTracker (monitor/events.py: the rules in force)
      -> SinkFanout (scores and events to every sink)

The worker thread takes blocks and markers from the feed: audio becomes windows; a loss
scores what it has and ends open events; a resumption starts a new segment after the gap;
dropped audio (a full buffer) ends the segment too. A real-time source that outruns
inference loses whole windows (counted), never capture. ``swap_live()`` replaces the
scorer and event rules between two batches of windows (a reload, a remote command). One
``stop`` event ends everything; open events are closed before the sinks are.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.config import SourceConfig, StreamConfig
from monitor.errors import UserError
from monitor.events import EventTracker
from monitor.models.backend import Backend
from monitor.scoring import Scorer
from monitor.sinks.base import Sink
from monitor.sources import Source, SourceSlot
from monitor.stream.buffer import DroppedAudio
from monitor.stream.fanout import SinkFanout, close_sinks
from monitor.stream.feed import Drops, SourceFeed
from monitor.stream.inference import WindowInference
from monitor.stream.segmenter import Segmenter
from monitor.stream.shared_encoder import SharedEncoder
from monitor.stream.supervise import SourceLost, SourceResumed
from monitor.stream.windows import adaptive_hop_s
from monitor.types import Event, Scores, Window

log = logging.getLogger(__name__)


@dataclass
class Stats:
    windows: int = 0
    gated: int = 0
    dropped_windows: int = 0
    dropped_frames: int = 0
    nonfinite_samples: int = 0
    events: int = 0  # start and end messages
    events_started: int = 0
    inference_ms: float | None = None  # the model's time for the latest batch (None: not run yet)
    level_dbfs: float = -150.0
    stream_s: float = 0.0
    source_error: str | None = None
    # seconds from the block that completed a window reaching the worker to that window's
    # scores and events being handed to the sinks (last 1000 windows)
    latency_s: list = field(default_factory=list)
    finished: bool = False
    hop_changes: int = 0  # adaptive hop switches (stream.idle_hop_s)
    last_scores: dict = field(default_factory=dict)
    # source supervision: ok | starting | stalled | lost | retrying | silent | ended | failed
    source_status: str = "starting"
    source_detail: str = ""
    source_restarts: int = 0
    source_failed_reopens: int = 0
    source_stalls: int = 0
    source_losses: int = 0
    source_last_error: str | None = None
    gaps: int = 0
    gap_s: float = 0.0  # wall-clock seconds without audio, summed over gaps
    silent_s: float = 0.0  # current run of digital silence, stream seconds
    reloads: int = 0
    received_frames: int = 0
    reused: int = 0  # windows whose scores the change gate reused (no model run)
    gate_ran: dict[str, int] = field(default_factory=dict)  # why the change gate let windows through
    # (monotonic time, windows, samples) of each drop: "falling behind" in /healthz
    drops: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1000))

    def dropped_recently(self, within_s: float = 60.0, now: float | None = None) -> tuple[int, int]:
        """(windows, samples) dropped in the last ``within_s`` seconds of wall time."""
        now = time.monotonic() if now is None else now
        recent = [(w, f) for t, w, f in list(self.drops) if now - t <= within_s]
        return sum(w for w, _ in recent), sum(f for _, f in recent)


class LiveSwap:
    """A new scorer and rules, offered from any thread (reload, remote command) and taken by
    the worker between two batches of windows. Offers in between: the last one wins, and it
    counts as a reload when any of them was one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: tuple | None = None

    def offer(self, scorer: Scorer, rules: dict, on_applied: Callable[[list], None] | None, reload: bool) -> None:
        with self._lock:
            was_reload = self._next is not None and self._next[3]
            self._next = (scorer, rules, on_applied, reload or was_reload)

    def take(self) -> tuple | None:
        if self._next is None:  # the common case: no lock taken
            return None
        with self._lock:
            taken, self._next = self._next, None
        return taken


class Pipeline:
    def __init__(
        self,
        slot: SourceSlot,
        scorer: Scorer,
        tracker: EventTracker,
        sinks: Sequence[Sink],
        stream_cfg: StreamConfig,
        source_cfg: SourceConfig | None = None,
        *,
        encoder: SharedEncoder,
        out_lock: threading.RLock | None = None,
        stop: threading.Event | None = None,
        max_pending_windows: int = 4,
    ):
        """The pipeline owns its source's stages and event tracking; what it shares belongs
        to the caller (``MonitorService``, or ``SinglePipeline`` for one source alone): the
        ``encoder`` (one model, windows batched across sources; the pipeline's backend is
        the encoder's), the sinks (closed by the caller), and ``out_lock``, which makes
        assigning an event's ``seq`` and handing it to the sinks one step across pipelines.
        ``slot.name`` tells the sources apart."""
        self.source = slot.source
        self.name: str = slot.name
        self.encoder = encoder
        self.backend: Backend = encoder.backend
        self.tracker = tracker
        self.cfg = stream_cfg
        self.stop = stop or threading.Event()
        self.stats = Stats()
        self.max_pending = max(1, max_pending_windows)
        # the configured window, else the model's own (its manifest's window_s)
        self.window_s = float(stream_cfg.window_s or self.backend.window_s)
        if stream_cfg.hop_s > self.window_s or stream_cfg.idle_hop_s > self.window_s:
            raise UserError(
                f"stream.hop_s / idle_hop_s must not exceed the window ({self.window_s:g} s for this model)"
            )
        sc = source_cfg or SourceConfig()
        self.feed = SourceFeed(self.source, sc, self.stop, self.stats, reopen=slot.reopen, name=self.name)
        self.out = SinkFanout(sinks, out_lock or threading.RLock())
        rate = self.backend.sample_rate_hz
        self.segmenter = Segmenter(
            self.source.sample_rate_hz, rate, self.window_s, stream_cfg.hop_s, self.out.audio_sinks
        )
        self.inference = WindowInference(encoder, scorer, stream_cfg, self.name)
        self._arrived: dict[int, float] = {}  # window index -> when the block that completed it arrived
        self._swap = LiveSwap()
        self.drops = Drops(self.stats, self.name)

    @property
    def sinks(self) -> list[Sink]:
        return self.out.sinks

    @property
    def scorer(self) -> Scorer:
        return self.inference.scorer

    # -- threads ----------------------------------------------------------------------
    def run(self) -> Stats:
        """Run until the source ends or ``stop`` is set; returns the final statistics."""
        self.encoder.register(self.name)
        self.feed.start()
        try:
            self._work()
        finally:
            self.encoder.unregister(self.name)
            self.stop.set()
            self.feed.join()
            self._finish()
        return self.stats

    def _work(self) -> None:
        pending: list[Window] = []
        t_last = time.perf_counter()
        while True:
            self._apply_swap()
            block = self.feed.get(timeout=0.2)
            if block is None:
                if self.feed.ended or self.stop.is_set():
                    break
                continue
            if not isinstance(block, np.ndarray):
                pending = self._marker(block, pending)
                continue
            pending.extend(self._windows_from(block))
            pending = self._keep_up(pending)
            # a real-time source: catch up with the buffer first (cheap), then score only the
            # newest windows; a file or pipe: score in batches as they come
            if pending and (
                self.feed.caught_up
                or (not self.source.realtime and len(pending) >= self.max_pending)
                or time.perf_counter() - t_last > 2.0
            ):
                self._process(pending)
                pending = []
                t_last = time.perf_counter()
        pending.extend(self.segmenter.end_stream())
        self._apply_swap()
        if pending:
            self._process(pending)

    def _marker(self, marker: object, pending: list[Window]) -> list[Window]:
        """A marker between the audio blocks: the source lost or back, or audio dropped."""
        seg = self.segmenter
        if isinstance(marker, SourceLost):
            pending = pending + seg.end_segment()
            if pending:
                self._process(pending)
            self._source_lost(marker)
            return []
        if isinstance(marker, SourceResumed):
            self._source_resumed(marker)
        elif isinstance(marker, DroppedAudio):
            self.drops.add(0, marker.frames, seg.source_rate_hz)
            pending = pending + seg.end_segment()
            self.inference.forget()  # after a gap, the audio is not the same stream any more
            seg.new_segment(marker.frames / seg.source_rate_hz, seg.source_rate_hz)
        return pending

    def _windows_from(self, block: np.ndarray) -> list[Window]:
        t_block = time.perf_counter()
        if self.tracker.origin_unix is None:  # stream time 0 on the wall clock
            self.tracker.origin_unix = time.time() - len(block) / self.segmenter.source_rate_hz
        mono = self.segmenter.mono(block)
        self.stats.nonfinite_samples = self.segmenter.nonfinite_samples
        self.feed.counts()
        self.feed.silence(mono, self.segmenter.source_rate_hz)
        new = self.segmenter.windows(mono)
        for w in new:
            self._arrived[w.index] = t_block
        return new

    def _keep_up(self, pending: list[Window]) -> list[Window]:
        """A real-time source keeps only the newest ``max_pending`` windows (the rest: dropped)."""
        if not self.source.realtime or len(pending) <= self.max_pending:
            return pending
        n = len(pending) - self.max_pending
        self.drops.add(n, 0, self.segmenter.source_rate_hz)
        for w in pending[:n]:
            self._arrived.pop(w.index, None)
        return pending[n:]

    # -- segments (source lost and resumed) -------------------------------------------------
    def _source_lost(self, marker: SourceLost) -> None:
        self.segmenter.lost = True
        with self.out.lock:
            for ev in self.tracker.close_all():
                self._publish(ev)
        log.warning(
            "source lost (%s) at %.1f s of stream time: open events ended", marker.reason, self.segmenter.position_s
        )

    def _source_resumed(self, marker: SourceResumed) -> None:
        seg = self.segmenter
        if not seg.lost:  # a resume without a loss (should not happen): still a new segment
            seg.end_segment()
        self.inference.forget()
        start_s = seg.new_segment(marker.gap_s, marker.sample_rate_hz)
        self.feed.resumed()
        st = self.stats
        st.gaps += 1
        st.gap_s += marker.gap_s
        log.warning(
            "source %s resumed: %.1f s gap, stream time continues at %.1f s", marker.description, marker.gap_s, start_s
        )

    # -- hot reload ----------------------------------------------------------------------
    def swap_live(
        self, scorer: Scorer, rules: dict, on_applied: Callable[[list], None] | None = None, *, reload: bool = True
    ) -> None:
        """Use ``scorer`` and event ``rules`` from the next batch of windows on (thread-safe).

        Open events of labels that are gone end; sinks get ``set_labels``. ``on_applied`` is
        called on the worker thread with the events that the change ended.
        """
        self._swap.offer(scorer, rules, on_applied, reload)

    def _apply_swap(self) -> None:
        taken = self._swap.take()
        if taken is None:
            return
        scorer, rules, on_applied, reload = taken
        self.inference.scorer = scorer
        self.inference.forget()  # new labels or rules: the next window runs the model
        with self.out.lock:
            ended = self.tracker.set_rules(rules, end_s=self.stats.stream_s)
            for ev in ended:
                self._publish(ev)
            self.out.labels(scorer.labels)
        if reload:  # a remote command's change of rules is counted by the service, not here
            self.stats.reloads += 1
        if on_applied is not None:
            on_applied(ended)

    # -- windows -> scores -> events ---------------------------------------------------------
    def _process(self, windows: list[Window]) -> None:
        self.inference.process(windows, self._gate_state, self._emit)
        inf = self.inference
        self.stats.gated, self.stats.reused, self.stats.gate_ran = inf.gated, inf.reused, dict(inf.gate_ran)

    def _gate_state(self) -> tuple[dict[str, float], bool]:
        """What the change gate decides on besides the audio: each enabled label's off level,
        and whether an event is open."""
        off = {name: r.off_level for name, r in self.tracker.rules.items() if r.enabled}
        return off, bool(self.tracker.active_labels())

    def _emit(self, sc: Scores) -> None:
        st = self.stats
        st.windows += 1
        st.level_dbfs = sc.level_dbfs
        st.stream_s = sc.end_s
        if not sc.gated and not sc.reused:  # the model's time per window, when it ran
            st.inference_ms = sc.inference_ms
        st.last_scores = sc.as_dict()
        with self.out.lock:
            self.out.scores(sc)
            for ev in self.tracker.update(sc):
                self._publish(ev)
        if self.cfg.idle_hop_s > 0:
            self._adapt_hop(sc)
        t = self._arrived.pop(sc.window_index, None)
        if t is not None:
            st.latency_s.append(time.perf_counter() - t)
            del st.latency_s[:-1000]

    def _adapt_hop(self, sc: Scores) -> None:
        """Adaptive hop: ``idle_hop_s`` while no event is open and no score is within reach of
        its label's threshold (above its off level); ``hop_s`` again as soon as one is."""
        off = {name: r.off_level for name, r in self.tracker.rules.items()}
        any_open = bool(self.tracker.active_labels())
        hop_s = adaptive_hop_s(sc.labels, sc.values, off, any_open, self.cfg.hop_s, self.cfg.idle_hop_s)
        if self.segmenter.set_hop(hop_s):
            self.stats.hop_changes += 1
            log.debug("hop now %.2f s (%s)", hop_s, "idle" if hop_s == self.cfg.idle_hop_s else "activity")

    def _publish(self, ev: Event) -> None:
        self.out.event(ev)
        self.stats.events, self.stats.events_started = self.out.events, self.out.started

    def _finish(self) -> None:
        self.feed.counts()
        with self.out.lock:
            for ev in self.tracker.close_all():
                self._publish(ev)
        self.stats.finished = True


__all__ = ["Pipeline", "SinglePipeline", "Stats"]


class SinglePipeline(Pipeline):
    """One source by itself (tests, scripts, one-off runs): it has its own encoder and closes
    its sinks when it ends. The monitor's runtime (monitor/runtime/service.py) uses ``Pipeline``."""

    def __init__(
        self,
        source: Source,
        backend: Backend,
        scorer: Scorer,
        tracker: EventTracker,
        sinks: Sequence[Sink],
        stream_cfg: StreamConfig,
        source_cfg: SourceConfig | None = None,
        *,
        reopen: Callable[[], Source] | None = None,
        **kw: Any,
    ):
        super().__init__(
            SourceSlot(source, source.description, reopen),
            scorer,
            tracker,
            sinks,
            stream_cfg,
            source_cfg,
            encoder=SharedEncoder(backend, linger_s=0.0),
            **kw,
        )

    def run(self) -> Stats:
        try:
            return super().run()
        finally:
            self.encoder.close()
            close_sinks(self.sinks)
