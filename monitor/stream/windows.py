"""Windower: model-rate samples in, fixed-length windows out every hop, sample-exact.

Window k covers samples [k*hop_n, k*hop_n + window_n) of the model-rate stream, so its
``start_s`` is exactly ``k*hop_n / rate``. A stream shorter than one window yields one
short window at its end (CLAP repeat-pads it), so a 3 s clip is still scored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from monitor.config import StreamConfig
from monitor.errors import UserError
from monitor.types import Window

SILENCE_DBFS = -150.0


def level_dbfs(x: np.ndarray) -> float:
    if x.size == 0:
        return SILENCE_DBFS
    x = np.asarray(x, dtype=np.float32).ravel()
    energy = float(np.dot(x, x))  # float32 dot: within ~0.01 dB, a tenth of the float64 cost
    if not math.isfinite(energy):  # a float file far beyond full scale
        energy = float(np.dot(x.astype(np.float64), x.astype(np.float64)))
    rms = math.sqrt(energy / x.size)
    return max(SILENCE_DBFS, 20.0 * math.log10(rms)) if rms > 0 else SILENCE_DBFS


class Windower:
    def __init__(self, sample_rate_hz: int, window_s: float, hop_s: float):
        self.sample_rate_hz = int(sample_rate_hz)
        self.window_n = int(round(window_s * sample_rate_hz))
        self.hop_n = int(round(hop_s * sample_rate_hz))
        if self.hop_n <= 0 or self.window_n <= 0:
            raise ValueError("window and hop must be positive")
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # stream index of _buf[0]
        self._more: list[np.ndarray] = []  # blocks after _buf, joined only when a window is due
        self._more_n = 0
        self._next_start = 0  # stream index of the next window's first sample
        self._index = 0
        self.total_samples = 0

    def set_hop(self, hop_s: float) -> None:
        """Change the hop from the next window on (adaptive hop)."""
        self.hop_n = max(1, int(round(hop_s * self.sample_rate_hz)))

    def _make(self, start: int, samples: np.ndarray) -> Window:
        r = self.sample_rate_hz
        w = Window(
            index=self._index,
            samples=samples,
            sample_rate_hz=r,
            start_s=start / r,
            end_s=(start + samples.size) / r,
            level_dbfs=level_dbfs(samples),
        )
        self._index += 1
        return w

    def push(self, x: np.ndarray) -> list[Window]:
        x = np.asarray(x, dtype=np.float32)
        self.total_samples += x.size
        if x.size:
            self._more.append(x.copy())
            self._more_n += x.size
        if self._next_start + self.window_n > self._buf_start + self._buf.size + self._more_n:
            return []  # no window due yet: keep the block aside (no copy of the whole buffer)
        self._join()
        out: list[Window] = []
        while self._next_start + self.window_n <= self._buf_start + self._buf.size:
            a = self._next_start - self._buf_start
            out.append(self._make(self._next_start, self._buf[a : a + self.window_n].copy()))
            self._next_start += self.hop_n
        drop = min(self._next_start - self._buf_start, self._buf.size)
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return out

    def _join(self) -> None:
        if self._more:
            self._buf = np.concatenate([self._buf, *self._more])
            self._more = []
            self._more_n = 0

    def flush(self) -> list[Window]:
        """At stream end: a stream that never filled a window yields one short window."""
        self._join()
        if self._index == 0 and self.total_samples > 0:
            return [self._make(0, self._buf[: self.total_samples].copy())]
        return []


def window_s_of(cfg: StreamConfig, model_window_s: float) -> float:
    """The configured window, else the model's own (its manifest's ``window_s``); a hop
    longer than the window is refused."""
    window_s = float(cfg.window_s or model_window_s)
    if cfg.hop_s > window_s or cfg.idle_hop_s > window_s:
        raise UserError(f"stream.hop_s / idle_hop_s must not exceed the window ({window_s:g} s for this model)")
    return window_s


def adaptive_hop_s(
    labels: Sequence[str],
    values: Sequence[float],
    off_levels: Mapping[str, float],
    any_open: bool,
    hop_s: float,
    idle_hop_s: float,
) -> float:
    """The hop for the next windows (``stream.idle_hop_s``): the long ``idle_hop_s`` while no
    event is open and no label's score reaches its off level (threshold - hysteresis), the
    normal ``hop_s`` as soon as one does. Pure: scores and rules in, seconds out."""
    near = any(v >= off_levels[lab] for lab, v in zip(labels, values) if lab in off_levels)
    return hop_s if (near or any_open) else idle_hop_s


class Latency:
    """Seconds from the block that completed a window reaching the worker to that window's
    scores and events being handed to the sinks (the last ``keep`` windows)."""

    def __init__(self, keep: int = 1000):
        self.keep = keep
        self.samples_s: list[float] = []
        self._arrived: dict[int, float] = {}  # window index -> when its block arrived

    def arrived(self, windows: Sequence[Window], t: float) -> None:
        for w in windows:
            self._arrived[w.index] = t

    def forget(self, windows: Sequence[Window]) -> None:
        """Windows that will not reach the sinks (dropped)."""
        for w in windows:
            self._arrived.pop(w.index, None)

    def done(self, index: int, t: float) -> None:
        t0 = self._arrived.pop(index, None)
        if t0 is not None:
            self.samples_s.append(t - t0)
            del self.samples_s[: -self.keep]

    @property
    def waiting(self) -> int:
        return len(self._arrived)


class StreamClock:
    """Stream time across segments (pure bookkeeping, no audio).

    A segment is the audio of one opening of a source. Windows are cut per segment (a
    fresh ``Windower``) and shifted here into stream time, their indices continuing across
    segments. After a gap the next segment starts ``gap_s`` after the last sample, rounded up
    to a 10 ms grid that the hop also lies on, so front-end frame caches (CLAP's streaming
    STFT hops 10 ms) stay aligned; the rounding adds < 10 ms. Stream time never repeats.
    """

    def __init__(self, sample_rate_hz: int):
        self.sample_rate_hz = int(sample_rate_hz)
        self.offset_n = 0  # model-rate samples before the current segment
        self.index_base = 0  # index of the current segment's first window
        self.next_index = 0  # index the next window will get

    @property
    def first_segment(self) -> bool:
        return self.offset_n == 0

    def position_n(self, segment_samples: int) -> int:
        """Stream position (samples) after ``segment_samples`` of the current segment."""
        return self.offset_n + int(segment_samples)

    def shift(self, w: Window) -> Window:
        """A window of the current segment -> the same window in stream time."""
        self.next_index = self.index_base + w.index + 1
        if self.offset_n == 0 and self.index_base == 0:
            return w
        off_s = self.offset_n / w.sample_rate_hz
        return dataclasses.replace(w, index=self.index_base + w.index, start_s=w.start_s + off_s, end_s=w.end_s + off_s)

    def start_after_gap(self, segment_samples: int, gap_s: float, hop_n: int) -> int:
        """Begin a new segment ``gap_s`` after the current position; returns its start sample."""
        rate = self.sample_rate_hz
        align = math.gcd(int(hop_n), max(1, rate // 100))
        start_n = self.position_n(segment_samples) + int(math.ceil(gap_s * rate))
        start_n = int(math.ceil(start_n / align)) * align
        self.offset_n = start_n
        self.index_base = self.next_index
        return start_n
