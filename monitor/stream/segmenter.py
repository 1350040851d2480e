"""The segmenter: source blocks -> windows in stream time.

Downmix and sanitise (NaN/Inf zeroed and counted), the streaming resampler (its state
carried across blocks), the windower (a window every hop, timestamps exact to the sample),
and the stream clock across gaps: after a loss, the next segment's windows start after the
gap on a whole hop, so stream time stays monotonic. Sinks that want audio (clips) get the
model-rate samples as they are windowed (the audio tap)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitor.audio_io import downmix, sanitise
from monitor.sinks.base import Sink
from monitor.stream.resample import StreamResampler
from monitor.stream.windows import StreamClock, Windower
from monitor.types import Window

log = logging.getLogger("monitor.stream.pipeline")


@dataclass
class SegmenterStats:
    nonfinite_samples: int = 0  # NaN/Inf samples zeroed
    hop_changes: int = 0  # adaptive hop switches (stream.idle_hop_s)


class Segmenter:
    def __init__(self, source_rate_hz: int, rate_hz: int, window_s: float, hop_s: float, audio_sinks: Sequence[Sink]):
        self.rate_hz = rate_hz
        self.window_s = window_s
        self.hop_s = hop_s
        self.resampler = StreamResampler(source_rate_hz, rate_hz)
        self.windower = Windower(rate_hz, window_s, hop_s)
        self.clock = StreamClock(rate_hz)
        self.lost = False  # the current segment ended with a loss (no tail to flush)
        self.stats = SegmenterStats()
        self._audio_sinks = list(audio_sinks)

    @property
    def source_rate_hz(self) -> int:
        return self.resampler.in_rate_hz

    def mono(self, block: np.ndarray) -> np.ndarray:
        """A source block as finite mono samples (what the silence check and the resampler see)."""
        mono, n_bad = sanitise(downmix(block))
        self.stats.nonfinite_samples += n_bad
        return mono

    def windows(self, mono: np.ndarray) -> list[Window]:
        return self._push(self.resampler.process(mono))

    def _push(self, y: np.ndarray) -> list[Window]:
        """Model-rate samples -> windows (shifted into stream time); audio sinks see them first."""
        if self._audio_sinks and y.size:
            t0 = self.clock.position_n(self.windower.total_samples) / self.rate_hz
            for s in self._audio_sinks:
                try:
                    s.on_audio(t0, y, self.rate_hz)
                except Exception as e:  # noqa: BLE001 - a clip writer must not stop monitoring
                    log.error("sink %s failed on audio: %s", s.name, e)
        return [self.clock.shift(w) for w in self.windower.push(y)]

    @property
    def position_s(self) -> float:
        return self.clock.position_n(self.windower.total_samples) / self.rate_hz

    def end_segment(self) -> list[Window]:
        """The source was lost (or audio dropped): the windows its last samples complete (a
        partial one is dropped); nothing more comes from this segment."""
        if self.lost:
            return []
        tail = self.resampler.process(np.zeros(0, np.float32), last=True)
        return self._push(tail)

    def end_stream(self) -> list[Window]:
        """The stream ended: the last windows, and a short one only for a whole stream
        shorter than a window."""
        if self.lost:
            return []
        out = self._push(self.resampler.process(np.zeros(0, np.float32), last=True))
        if self.clock.first_segment:
            out.extend(self.clock.shift(w) for w in self.windower.flush())
        return out

    def new_segment(self, gap_s: float, source_rate_hz: int) -> float:
        """Start windowing afresh ``gap_s`` after the current stream position; returns its start."""
        old = self.windower
        start_n = self.clock.start_after_gap(old.total_samples, gap_s, old.hop_n)
        self.windower = Windower(self.rate_hz, self.window_s, self.hop_s)
        self.windower.hop_n = old.hop_n
        self.resampler = StreamResampler(source_rate_hz, self.rate_hz)
        self.lost = False
        return start_n / self.rate_hz

    def resume(self, gap_s: float, source_rate_hz: int) -> float:
        """The source is back after a loss: a new segment ``gap_s`` on; returns its start."""
        if not self.lost:  # a resume without a loss (should not happen): still a new segment
            self.end_segment()
        return self.new_segment(gap_s, source_rate_hz)

    def set_hop(self, hop_s: float) -> bool:
        """The adaptive hop; True when it changed."""
        if self.windower.hop_n == int(round(hop_s * self.rate_hz)):
            return False
        self.windower.set_hop(hop_s)
        self.stats.hop_changes += 1
        return True
