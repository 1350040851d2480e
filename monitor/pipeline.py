"""The streaming pipeline: capture thread -> ring buffer -> worker thread -> sinks.

The capture thread runs the source and only enqueues blocks. The worker downmixes,
sanitises, resamples (state carried), cuts windows, gates by level, embeds pending windows
in one batch, scores, tracks events and hands scores/events to the sinks in order. A
real-time source that outruns inference loses whole windows (counted), never capture.
One ``stop`` event ends everything; open events are closed before the sinks are.

The source runs under a ``SourceSupervisor`` (monitor/supervise.py): stalls and losses
arrive as markers between the audio blocks. On a loss the worker scores what it has and
ends open events; on resumption it starts a new segment whose stream time begins after
the gap (stream time stays monotonic). A source that sends only zeros for
``silence_timeout_s`` of stream time is reported ``silent``. ``swap_live()`` replaces the
scorer and event rules between two batches of windows (config hot reload).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.audio_io import downmix, sanitise
from monitor.backend import Backend
from monitor.buffer import DroppedAudio, RingBuffer
from monitor.change_gate import ChangeGate, GateParams, WindowSig
from monitor.config import SourceConfig, StreamConfig
from monitor.encode import SharedEncoder
from monitor.errors import UserError
from monitor.events import EventTracker
from monitor.logs import Throttle
from monitor.resample import StreamResampler
from monitor.scoring import Scorer
from monitor.sinks.base import Sink
from monitor.sources import Source, SourceSlot
from monitor.supervise import OK, SILENT, STARTING, SourceLost, SourceResumed, SourceStatus, SourceSupervisor
from monitor.types import Event, Scores, Window
from monitor.windows import StreamClock, Windower, adaptive_hop_s

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
        """The pipeline owns its source's capture, buffer, resampler, windower and event
        tracking; what it shares belongs to the caller (``MonitorService``, or
        ``SinglePipeline`` for one source alone): the ``encoder`` (one model, windows batched
        across sources; the pipeline's backend is the encoder's), the sinks (closed by the
        caller), and ``out_lock``, which makes assigning an event's ``seq`` and handing it to
        the sinks one step across pipelines. ``slot.name`` tells the sources apart."""
        source = slot.source
        self.source = source
        self.name: str = slot.name
        self.encoder = encoder
        self._out = out_lock or threading.RLock()
        self.backend: Backend = encoder.backend
        self.scorer = scorer
        self.tracker = tracker
        self.sinks = list(sinks)
        self.cfg = stream_cfg
        self.stop = stop or threading.Event()
        sc = source_cfg or SourceConfig()
        rate = self.backend.sample_rate_hz
        self.buffer = RingBuffer(int(sc.buffer_s * source.sample_rate_hz))
        self.resampler = StreamResampler(source.sample_rate_hz, rate)
        # the configured window, else the model's own (its manifest's window_s)
        self.window_s = float(stream_cfg.window_s or self.backend.window_s)
        if stream_cfg.hop_s > self.window_s or stream_cfg.idle_hop_s > self.window_s:
            raise UserError(
                f"stream.hop_s / idle_hop_s must not exceed the window ({self.window_s:g} s for this model)"
            )
        self.windower = Windower(rate, self.window_s, stream_cfg.hop_s)
        self.max_pending = max(1, max_pending_windows)
        self.stats = Stats()
        self._arrived: dict[int, float] = {}
        self._last_source = SourceStatus(STARTING, "", 0, 0, 0, None)
        self.supervisor = SourceSupervisor(
            source,
            put=self._buffer_put,
            signal=self.buffer.put_marker,
            stop=self.stop,
            reopen=slot.reopen,
            stall_timeout_s=sc.stall_timeout_s,
            retry_max_s=sc.retry_max_s,
            on_status=self._on_source_status,
        )
        self.silence_timeout_s = sc.silence_timeout_s
        self._silent_run_n = 0  # source samples of exact zeros in a row
        self._silent = False
        # segments: after a gap the windows are shifted by an offset (whole hops of samples)
        self.clock = StreamClock(rate)
        self._segment_lost = False
        self._swap_lock = threading.Lock()
        self._swap: tuple | None = None
        self._drop_log = Throttle(60.0)
        self._drop_windows = self._drop_frames = 0  # since the last drop warning
        self._audio_sinks = [s for s in self.sinks if s.wants_audio]
        c = stream_cfg
        self.change_gate = (
            ChangeGate(
                GateParams(
                    c.change_db,
                    c.change_max_age_s,
                    c.change_margin,
                    rise=c.change_rise,
                    novel_db=c.change_novel_db,
                    settled_s=c.change_settled_s,
                )
            )
            if c.change_gate
            else None
        )
        self._failed_score_sinks: set[str] = set()

    # -- source status ---------------------------------------------------------------------
    def _buffer_put(self, block: np.ndarray) -> object:
        # a real-time device must never wait; files and pipes may (nothing is lost)
        if self.source.never_block:
            return self.buffer.put(block)
        return self.buffer.put(block, block_when_full=True, timeout=None)

    def _on_source_status(self, st: SourceStatus) -> None:
        """The supervisor's report (a value: this pipeline never reads the supervisor back)."""
        self._last_source = st
        stats = self.stats
        stats.source_restarts, stats.source_stalls, stats.source_losses = st.restarts, st.stalls, st.losses
        stats.source_failed_reopens = st.failed_reopens
        stats.source_last_error = st.last_error
        stats.source_detail = st.detail
        stats.source_status = SILENT if (st.status == OK and self._silent) else st.status

    def _set_silent(self, silent: bool, run_s: float) -> None:
        if silent == self._silent:
            return
        self._silent = silent
        if silent:
            log.warning("source delivers only zeros (digital silence) for %.1f s: muted or disconnected input?", run_s)
        else:
            log.warning("source delivers sound again after %.1f s of digital silence", run_s)
        last = self._last_source
        self._on_source_status(dataclasses.replace(last, detail="only zeros" if silent else ""))

    # -- threads ----------------------------------------------------------------------
    def _capture(self) -> None:
        try:
            self.supervisor.run()
        except Exception as e:  # noqa: BLE001 - reported in status, pipeline shuts down
            log.error("source failed: %s", e)
            self.stats.source_error = str(e)
        finally:
            self.buffer.close()

    def run(self) -> Stats:
        """Run until the source ends or ``stop`` is set; returns the final statistics."""
        cap = threading.Thread(target=self._capture, name=f"capture {self.name}", daemon=True)
        self.encoder.register(self.name)
        cap.start()
        try:
            self._work()
        finally:
            self.encoder.unregister(self.name)
            self.stop.set()
            self.buffer.close()
            cap.join(timeout=5)
            if cap.is_alive():
                log.warning("capture thread did not stop within 5 s")
            self._finish()
        return self.stats

    def _work(self) -> None:
        pending: list[Window] = []
        t_last = time.perf_counter()
        while True:
            self._apply_swap()
            block = self.buffer.get(timeout=0.2)
            if block is None:
                if self.buffer.closed or self.stop.is_set():
                    break
                continue
            if isinstance(block, SourceLost):
                pending.extend(self._end_segment())
                if pending:
                    self._process(pending)
                    pending = []
                self._source_lost(block)
                continue
            if isinstance(block, SourceResumed):
                self._source_resumed(block)
                continue
            if isinstance(block, DroppedAudio):
                self._dropped(0, block.frames)
                pending.extend(self._end_segment())
                self._new_segment(block.frames / self.resampler.in_rate_hz, self.resampler.in_rate_hz)
                continue
            t_block = time.perf_counter()
            if self.tracker.origin_unix is None:  # stream time 0 on the wall clock
                self.tracker.origin_unix = time.time() - len(block) / self.resampler.in_rate_hz
            new = self._windows_from(block)
            for w in new:
                self._arrived[w.index] = t_block
            pending.extend(new)
            if self.source.realtime and len(pending) > self.max_pending:
                n = len(pending) - self.max_pending
                self.stats.dropped_windows += n
                self._dropped(n, 0)
                for w in pending[:n]:
                    self._arrived.pop(w.index, None)
                pending = pending[n:]
            # a real-time source: catch up with the buffer first (cheap), then score only the
            # newest windows; a file or pipe: score in batches as they come
            caught_up = self.buffer.frames == 0
            if pending and (
                caught_up
                or (not self.source.realtime and len(pending) >= self.max_pending)
                or time.perf_counter() - t_last > 2.0
            ):
                self._process(pending)
                pending = []
                t_last = time.perf_counter()
        if not self._segment_lost:
            tail = self.resampler.process(np.zeros(0, np.float32), last=True)
            pending.extend(self._push(tail))
            if self.clock.first_segment:  # only a whole stream shorter than a window gives a short one
                pending.extend(self.clock.shift(w) for w in self.windower.flush())
        self._apply_swap()
        if pending:
            self._process(pending)

    def _dropped(self, windows: int, frames: int) -> None:
        """Count a drop; warn at most once a minute, with what was dropped since the last warning."""
        self.stats.drops.append((time.monotonic(), windows, frames))
        self._drop_windows += windows
        self._drop_frames += frames
        if self._drop_log.take("drop") is None:
            return
        parts = []
        if self._drop_windows:
            parts.append(f"{self._drop_windows} window(s) dropped (inference cannot keep up)")
        if self._drop_frames:
            parts.append(
                f"{self._drop_frames} samples ({self._drop_frames / self.resampler.in_rate_hz:.1f} s) of audio dropped "
                "(the buffer was full: the source delivers faster than it is processed)"
            )
        log.warning("%s: %s; said at most once a minute", self.name, ", ".join(parts))
        self._drop_windows = self._drop_frames = 0

    def _windows_from(self, block: np.ndarray) -> list[Window]:
        mono, n_bad = sanitise(downmix(block))
        st = self.stats
        if n_bad:
            st.nonfinite_samples += n_bad
        st.dropped_frames = self.buffer.dropped_frames
        st.received_frames = self.buffer.received_frames
        if mono.size:
            was_s = self._silent_run_n / self.resampler_rate_in
            self._silent_run_n = 0 if mono.any() else self._silent_run_n + mono.size
            st.silent_s = self._silent_run_n / self.resampler_rate_in
            self._set_silent(st.silent_s >= self.silence_timeout_s, max(was_s, st.silent_s))
        return self._push(self.resampler.process(mono))

    # -- segments (source lost and resumed) -------------------------------------------------
    @property
    def resampler_rate_in(self) -> int:
        return self.resampler.in_rate_hz

    def _push(self, y: np.ndarray) -> list[Window]:
        """Model-rate samples -> windows (shifted into stream time); audio sinks see them first."""
        if self._audio_sinks and y.size:
            t0 = self.clock.position_n(self.windower.total_samples) / self.windower.sample_rate_hz
            for s in self._audio_sinks:
                try:
                    s.on_audio(t0, y, self.windower.sample_rate_hz)
                except Exception as e:  # noqa: BLE001 - a clip writer must not stop monitoring
                    log.error("sink %s failed on audio: %s", s.name, e)
        return [self.clock.shift(w) for w in self.windower.push(y)]

    def _stream_pos_n(self) -> int:
        return self.clock.position_n(self.windower.total_samples)

    def _end_segment(self) -> list[Window]:
        """The source was lost: the windows its last samples complete (a partial one is dropped)."""
        if self._segment_lost:
            return []
        tail = self.resampler.process(np.zeros(0, np.float32), last=True)
        return self._push(tail)

    def _source_lost(self, marker: SourceLost) -> None:
        self._segment_lost = True
        with self._out:
            for ev in self.tracker.close_all():
                self._publish(ev)
        log.warning(
            "source lost (%s) at %.1f s of stream time: open events ended",
            marker.reason,
            self._stream_pos_n() / self.windower.sample_rate_hz,
        )

    def _source_resumed(self, marker: SourceResumed) -> None:
        if not self._segment_lost:  # a resume without a loss (should not happen): still a new segment
            self._end_segment()
        start_s = self._new_segment(marker.gap_s, marker.sample_rate_hz)
        self._silent_run_n = 0
        st = self.stats
        st.gaps += 1
        st.gap_s += marker.gap_s
        log.warning(
            "source %s resumed: %.1f s gap, stream time continues at %.1f s", marker.description, marker.gap_s, start_s
        )

    def _new_segment(self, gap_s: float, source_rate_hz: int) -> float:
        """Start windowing afresh ``gap_s`` after the current stream position; returns its start."""
        if self.change_gate is not None:
            self.change_gate.forget()  # after a gap, the audio is not the same stream any more
        rate = self.windower.sample_rate_hz
        old = self.windower
        start_n = self.clock.start_after_gap(old.total_samples, gap_s, old.hop_n)
        self.windower = Windower(rate, self.window_s, self.cfg.hop_s)
        self.windower.hop_n = old.hop_n
        self.resampler = StreamResampler(source_rate_hz, rate)
        self._segment_lost = False
        return start_n / rate

    # -- hot reload ----------------------------------------------------------------------
    def swap_live(
        self, scorer: Scorer, rules: dict, on_applied: Callable[[list], None] | None = None, *, reload: bool = True
    ) -> None:
        """Use ``scorer`` and event ``rules`` from the next batch of windows on (thread-safe).

        Open events of labels that are gone end; sinks get ``set_labels``. ``on_applied`` is
        called on the worker thread with the events that the change ended.
        """
        with self._swap_lock:
            # a command and a reload between the same two windows: the swap counts as a reload
            was_reload = self._swap is not None and self._swap[3]
            self._swap = (scorer, rules, on_applied, reload or was_reload)

    def _apply_swap(self) -> None:
        if self._swap is None:
            return
        with self._swap_lock:
            scorer, rules, on_applied, reload = self._swap
            self._swap = None
        self.scorer = scorer
        if self.change_gate is not None:
            self.change_gate.forget()  # new labels or rules: the next window runs the model
        with self._out:
            ended = self.tracker.set_rules(rules, end_s=self.stats.stream_s)
            for ev in ended:
                self._publish(ev)
            for s in self.sinks:
                try:
                    s.set_labels(list(scorer.labels))
                except Exception as e:  # noqa: BLE001 - one failing sink must not stop a reload
                    log.error("sink %s failed to change labels: %s", s.name, e)
        if reload:  # a remote command's change of rules is counted by the service, not here
            self.stats.reloads += 1
        if on_applied is not None:
            on_applied(ended)

    def _process(self, windows: list[Window]) -> None:
        gate = self.change_gate
        if gate is not None and len(windows) > 1:
            if gate.quiet(*self._gate_state()):
                # quiet: one window at a time, each decision against the latest real run
                # (while not quiet no window can reuse scores: the batch runs as one)
                for w in windows:
                    self._process_batch([w])
                return
        self._process_batch(windows)

    def _process_batch(self, windows: list[Window]) -> None:
        gate = self.cfg.gate_dbfs
        live = [w for w in windows if w.level_dbfs >= gate]
        reuse, sigs = self._change_gate(live)
        live = [w for w in live if w.index not in reuse]
        emb: dict[int, np.ndarray] = {}
        ms = 0.0
        if live:
            t0 = time.perf_counter()
            # equal-length windows go in one batch; a short tail window on its own
            by_len: dict[int, list[Window]] = {}
            for w in live:
                by_len.setdefault(w.samples.size, []).append(w)
            for group in by_len.values():
                # the encoder stage: shared with the other sources' pipelines, batched
                vecs = self.encoder.embed(group, self.name)
                for w, v in zip(group, vecs):
                    emb[w.index] = v
            ms = (time.perf_counter() - t0) * 1000.0 / len(live)
        labels = self.scorer.labels
        for w in windows:
            if w.index in reuse:
                values = tuple(float(reuse[w.index].get(n, 0.0)) for n in labels)
                self.stats.reused += 1
                self._emit(
                    Scores(w.index, w.start_s, w.end_s, w.level_dbfs, labels, values, source=self.name, reused=True)
                )
                continue
            if w.index in emb:
                values = tuple(float(x) for x in self.scorer.score(emb[w.index][None, :])[0])
                gated = False
                if self.change_gate is not None:
                    self.change_gate.ran_on(sigs[w.index], w.start_s, labels, values)
            else:
                values = tuple(0.0 for _ in labels)
                gated = True
                self.stats.gated += 1
            sc = Scores(
                w.index,
                w.start_s,
                w.end_s,
                w.level_dbfs,
                labels,
                values,
                gated,
                ms if not gated else 0.0,
                source=self.name,
            )
            self._emit(sc)

    def _gate_state(self) -> tuple[dict[str, float], bool]:
        """What the change gate decides on besides the audio: each enabled label's off level,
        and whether an event is open."""
        off = {name: r.off_level for name, r in self.tracker.rules.items() if r.enabled}
        return off, bool(self.tracker.active_labels())

    def _change_gate(self, live: list[Window]) -> tuple[dict[int, dict], dict[int, WindowSig]]:
        """Which windows may reuse the last real scores ({index: scores}), and every live
        window's signature (the ones that run become the gate's reference)."""
        if self.change_gate is None or not live:
            return {}, {}
        off, any_open = self._gate_state()
        reuse: dict[int, dict] = {}
        sigs: dict[int, WindowSig] = {}
        for w in live:
            rate = w.sample_rate_hz
            sigs[w.index] = self.change_gate.signature_at(w.samples, rate, round(w.start_s * rate))
            got = self.change_gate.reuse(sigs[w.index], w.start_s, off, any_open)
            if got is not None:
                reuse[w.index] = got
        self.stats.gate_ran = dict(self.change_gate.why)
        return reuse, sigs

    def _emit(self, sc: Scores) -> None:
        st = self.stats
        st.windows += 1
        st.level_dbfs = sc.level_dbfs
        st.stream_s = sc.end_s
        if not sc.gated and not sc.reused:  # the model's time per window, when it ran
            st.inference_ms = sc.inference_ms
        st.last_scores = sc.as_dict()
        with self._out:
            for s in self.sinks:
                try:
                    s.on_scores(sc)
                except Exception as e:  # noqa: BLE001 - a failing sink must not stop monitoring
                    if s.name not in self._failed_score_sinks:
                        log.error("sink %s failed on scores (reported once): %s", s.name, e)
                        self._failed_score_sinks.add(s.name)
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
        if self.windower.hop_n != int(round(hop_s * self.windower.sample_rate_hz)):
            self.windower.set_hop(hop_s)
            self.stats.hop_changes += 1
            log.debug("hop now %.2f s (%s)", hop_s, "idle" if hop_s == self.cfg.idle_hop_s else "activity")

    def _publish(self, ev: Event) -> None:
        self.stats.events += 1
        if ev.type == "start":
            self.stats.events_started += 1
        publish_to(self.sinks, ev)

    def _finish(self) -> None:
        self.stats.received_frames = self.buffer.received_frames
        self.stats.dropped_frames = self.buffer.dropped_frames
        with self._out:
            for ev in self.tracker.close_all():
                self._publish(ev)
        self.stats.finished = True


def publish_to(sinks: Sequence[Sink], ev: Event) -> None:
    """Hand an event to every sink; one sink's failure is logged and does not stop the rest.
    Sinks that add to an event (the clips sink names the clip it will write) do so first,
    so that every sink gets the same event."""
    for s in sinks:
        try:
            ev = s.annotate(ev)
        except Exception as e:  # noqa: BLE001 - one sink's failure must not stop the rest
            log.error("sink %s failed to annotate event %s: %s", s.name, ev.seq, e)
    for s in sinks:
        try:
            s.publish(ev)
        except Exception as e:  # noqa: BLE001 - one sink's failure must not stop the rest
            log.error("sink %s failed to publish event %s: %s", s.name, ev.seq, e)


def close_sinks(sinks: Sequence[Sink]) -> None:
    """Close every sink once (after the last event); one failing sink does not stop the rest."""
    for s in sinks:
        try:
            s.close()
        except Exception as e:  # noqa: BLE001 - one failing sink must not keep the rest open
            log.error("sink %s failed to close: %s", s.name, e)


class SinglePipeline(Pipeline):
    """One source by itself (tests, scripts, one-off runs): it has its own encoder and closes
    its sinks when it ends. The monitor's runtime (monitor/service.py) uses ``Pipeline``."""

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
