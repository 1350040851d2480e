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

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.config import SourceConfig, StreamConfig
from monitor.events import EventTracker
from monitor.models.backend import Backend
from monitor.scoring import Scorer
from monitor.sinks.base import Sink
from monitor.sources import Source, SourceSlot
from monitor.stream.buffer import DroppedAudio
from monitor.stream.fanout import FanoutStats, SinkFanout, close_sinks
from monitor.stream.feed import Drops, DropStats, FeedStats, SourceFeed
from monitor.stream.inference import InferenceStats, WindowInference
from monitor.stream.segmenter import Segmenter, SegmenterStats
from monitor.stream.shared_encoder import SharedEncoder
from monitor.stream.supervise import SourceLost, SourceResumed
from monitor.stream.windows import Latency, adaptive_hop_s, window_s_of
from monitor.types import Scores, Window

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """The run's report, split by stage: each part is the stage's own counters (live while
    the pipeline runs), read by the service (/healthz, metrics, MQTT diagnostics) and the
    final summary."""

    source: FeedStats = field(default_factory=FeedStats)
    drops: DropStats = field(default_factory=DropStats)
    segments: SegmenterStats = field(default_factory=SegmenterStats)
    inference: InferenceStats = field(default_factory=InferenceStats)
    out: FanoutStats = field(default_factory=FanoutStats)
    latency: Latency = field(default_factory=Latency)
    reloads: int = 0
    finished: bool = False


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
        self.max_pending = max(1, max_pending_windows)
        self.window_s = window_s_of(stream_cfg, self.backend.window_s)
        self.feed = SourceFeed(self.source, source_cfg or SourceConfig(), self.stop, reopen=slot.reopen, name=self.name)
        self.out = SinkFanout(sinks, out_lock or threading.RLock())
        rate = self.backend.sample_rate_hz
        self.segmenter = Segmenter(
            self.source.sample_rate_hz, rate, self.window_s, stream_cfg.hop_s, self.out.audio_sinks
        )
        self.inference = WindowInference(encoder, scorer, stream_cfg, self.name)
        self.drops = Drops(self.name)
        self.stats = Stats(
            self.feed.stats, self.drops.stats, self.segmenter.stats, self.inference.stats, self.out.stats
        )
        self._swap = LiveSwap()

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
            if self.source.realtime:  # keep only the newest windows (the rest: dropped, counted)
                pending, dropped = self.drops.keep_newest(pending, self.max_pending, self.segmenter.source_rate_hz)
                self.stats.latency.forget(dropped)
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
            seg.lost = True
            self._close_events()
            log.warning("source lost (%s) at %.1f s of stream time: open events ended", marker.reason, seg.position_s)
            return []
        if isinstance(marker, SourceResumed):
            self.inference.forget()
            self.feed.resumed(marker, start_s=seg.resume(marker.gap_s, marker.sample_rate_hz))
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
        self.feed.counts()
        self.feed.silence(mono, self.segmenter.source_rate_hz)
        new = self.segmenter.windows(mono)
        self.stats.latency.arrived(new, t_block)
        return new

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
            ended = self.tracker.set_rules(rules, end_s=self.inference.stats.stream_s)
            for ev in ended:
                self.out.event(ev)
            self.out.labels(scorer.labels)
        if reload:  # a remote command's change of rules is counted by the service, not here
            self.stats.reloads += 1
        if on_applied is not None:
            on_applied(ended)

    # -- windows -> scores -> events ---------------------------------------------------------
    def _process(self, windows: list[Window]) -> None:
        self.inference.process(windows, self._gate_state, self._emit)

    def _gate_state(self) -> tuple[dict[str, float], bool]:
        """What the change gate decides on besides the audio: each enabled label's off
        level, and whether an event is open."""
        off = {name: r.off_level for name, r in self.tracker.rules.items() if r.enabled}
        return off, bool(self.tracker.active_labels())

    def _emit(self, sc: Scores) -> None:
        with self.out.lock:
            events = self.tracker.update(sc)
            self.out.scores(dataclasses.replace(sc, held=self.tracker.held) if self.tracker.held else sc)
            for ev in events:
                self.out.event(ev)
        if self.cfg.idle_hop_s > 0:  # adaptive hop: idle while nothing is near its threshold
            off = {name: r.off_level for name, r in self.tracker.rules.items()}
            any_open = bool(self.tracker.active_labels())
            hop_s = adaptive_hop_s(sc.labels, sc.values, off, any_open, self.cfg.hop_s, self.cfg.idle_hop_s)
            if self.segmenter.set_hop(hop_s):
                log.debug("hop now %.2f s (%s)", hop_s, "idle" if hop_s == self.cfg.idle_hop_s else "activity")
        self.stats.latency.done(sc.window_index, time.perf_counter())

    def _close_events(self) -> None:
        with self.out.lock:
            for ev in self.tracker.close_all():
                self.out.event(ev)

    def _finish(self) -> None:
        self.feed.counts()
        self._close_events()
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
            close_sinks(self.out.sinks)
