"""The change gate: skip the model for a window that is not meaningfully different from the
last one the model saw, while nothing was anywhere near an event.

An always-on monitor pays for every window, and with 5 s windows every second each second
of audio is encoded five times; most hours of a home are steady background. Before the
encoder, each window gets a cheap spectral signature (log energies in 16 bands, their mean
and 95th percentile over 1024-sample frames: ~1 ms for 5 s of 48 kHz audio). A window
*reuses* the last real scores instead of running the model when all of these hold:

- the last window the model ran on is at most ``max_age_s`` older (a real run at least that
  often, whatever happens);
- no event is open;
- every label's last real score is below ``margin`` × its off level (threshold − hysteresis):
  nothing was close to starting;
- no band of the signature moved by more than ``change_db`` dB from that window's.

Anything else runs the model. The live view and ``--scores`` mark reused windows; the run's
summary counts them. Pure logic here; the pipeline asks it per window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

N_BANDS = 16
FRAME = 1024


def _band_edges(rate: int) -> np.ndarray:
    """FFT-bin edges of ``N_BANDS`` log-spaced bands from 100 Hz to min(8 kHz, Nyquist)."""
    top = min(8000.0, rate / 2.0 * 0.95)
    hz = np.geomspace(100.0, top, N_BANDS + 1)
    return np.clip(np.round(hz / rate * FRAME).astype(int), 1, FRAME // 2)


def signature(samples: np.ndarray, rate: int) -> np.ndarray:
    """A window's spectral signature [2 * N_BANDS], dB: per band the mean and the 95th
    percentile over the window's frames of its log energy."""
    x = np.asarray(samples, dtype=np.float32)
    n = x.size // FRAME
    if n == 0:
        x = np.pad(x, (0, FRAME - x.size))
        n = 1
    frames = x[: n * FRAME].reshape(n, FRAME)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [n, 513]
    edges = _band_edges(rate)
    csum = np.concatenate([np.zeros((n, 1)), np.cumsum(power, axis=1)], axis=1)
    bands = (csum[:, edges[1:]] - csum[:, edges[:-1]]) / np.maximum(edges[1:] - edges[:-1], 1)
    db = 10.0 * np.log10(np.maximum(bands, 1e-12))
    return np.concatenate([db.mean(axis=0), np.percentile(db, 95, axis=0)]).astype(np.float32)


@dataclass(frozen=True)
class GateParams:
    change_db: float = 3.0
    max_age_s: float = 5.0
    margin: float = 0.5


class ChangeGate:
    """Per stream: remembers the last window the model ran on and its scores."""

    def __init__(self, params: GateParams):
        self.p = params
        self._sig: np.ndarray | None = None
        self._t: float = -np.inf
        self._scores: dict[str, float] | None = None
        self.reused = 0
        self.ran = 0

    def quiet(self, off_levels: Mapping[str, float], any_open: bool) -> bool:
        """Could any window reuse the last real scores now (no event open, every score well
        below its off level)? If not, none can until the model runs again."""
        if self._scores is None or any_open:
            return False
        return all(self._scores.get(name, 1.0) < self.p.margin * off for name, off in off_levels.items())

    def reuse(self, sig: np.ndarray, t_s: float, off_levels: Mapping[str, float], any_open: bool) -> dict | None:
        """The last real scores if this window (signature ``sig``, stream time ``t_s``) may
        reuse them; None: the model must run."""
        if self._sig is None or not self.quiet(off_levels, any_open):
            return None
        if t_s - self._t > self.p.max_age_s:
            return None
        if float(np.max(np.abs(sig - self._sig))) > self.p.change_db:
            return None
        self.reused += 1
        return self._scores

    def ran_on(self, sig: np.ndarray, t_s: float, labels: Sequence[str], values: Sequence[float]) -> None:
        """The model ran on this window: it is the reference from now on."""
        self._sig = sig
        self._t = t_s
        self._scores = dict(zip(labels, (float(v) for v in values)))
        self.ran += 1

    def forget(self) -> None:
        """A gap in the stream or new labels: the next window runs the model."""
        self._sig = None
        self._scores = None
