"""Windower: model-rate samples in, fixed-length windows out every hop, sample-exact.

Window k covers samples [k*hop_n, k*hop_n + window_n) of the model-rate stream, so its
``start_s`` is exactly ``k*hop_n / rate``. A stream shorter than one window yields one
short window at its end (CLAP repeat-pads it), so a 3 s clip is still scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from monitor.types import Window

SILENCE_DBFS = -150.0


def level_dbfs(x: np.ndarray) -> float:
    if x.size == 0:
        return SILENCE_DBFS
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
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
        self._buf = np.concatenate([self._buf, x]) if self._buf.size else x.copy()
        self.total_samples += x.size
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

    def flush(self) -> list[Window]:
        """At stream end: a stream that never filled a window yields one short window."""
        if self._index == 0 and self.total_samples > 0:
            return [self._make(0, self._buf[: self.total_samples].copy())]
        return []


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
