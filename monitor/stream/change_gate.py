"""The change gate: skip the model for a window that is not meaningfully different from the
last one the model saw, while nothing was anywhere near an event.

An always-on monitor pays for every window, and with 5 s windows every second each second
of audio is encoded five times; most hours of a home are steady background. Before the
encoder, each window gets a cheap spectral description from 1024-sample frames (log energy
in 16 bands; each stream frame computed once, overlapping windows share them): its
signature (per band the mean and 95th percentile over its frames) and, per band, the
loudest of its *settled* frames (all but the newest ``settled_s``). A window *reuses* the
last real scores instead of running the model when all of these hold:

- the last window the model ran on (the reference) is at most ``max_age_s`` older;
- no event is open;
- every label's last real score is below ``margin`` x its off level (threshold - hysteresis):
  nothing was close to starting;
- no label's score rose by more than ``rise`` x its off level between the two latest real
  runs: a sound that is fading in keeps the model running until its scores stop climbing;
- no band of the signature moved by more than ``db`` dB from the reference's;
- no frame that the reference had not settled (its newest ``settled_s``, and everything
  after it) is louder, in any band, by more than ``novel_db`` than every frame the reference
  had settled. A click or a quiet sound over room tone hardly moves a 5 s signature, but its
  frames stand out; and a sound that began in the newest seconds of the reference was barely
  heard by the model (its score can jump from 0.02 to 0.3 one window later), so the model
  keeps running until the sound's start has settled.

Anything else runs the model. The live view and ``--scores`` mark reused windows; the run's
summary counts them and why the model ran on the others. Pure logic here; the pipeline asks
it per window, in stream order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from monitor.config import ChangeGateConfig

N_BANDS = 16
FRAME = 1024


@lru_cache(maxsize=8)
def _band_edges(rate: int) -> np.ndarray:
    """FFT-bin edges of ``N_BANDS`` log-spaced bands from 100 Hz to min(8 kHz, Nyquist)."""
    top = min(8000.0, rate / 2.0 * 0.95)
    hz = np.geomspace(100.0, top, N_BANDS + 1)
    return np.clip(np.round(hz / rate * FRAME).astype(int), 1, FRAME // 2)


def _frame_db(frames: np.ndarray, rate: int) -> np.ndarray:
    """Log energy per band of each frame: [n, FRAME] -> [n, N_BANDS] dB."""
    n = frames.shape[0]
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [n, 513]
    edges = _band_edges(rate)
    csum = np.concatenate([np.zeros((n, 1)), np.cumsum(power, axis=1)], axis=1)
    bands = (csum[:, edges[1:]] - csum[:, edges[:-1]]) / np.maximum(edges[1:] - edges[:-1], 1)
    return (10.0 * np.log10(np.maximum(bands, 1e-12))).astype(np.float32)


def _summary(db: np.ndarray) -> np.ndarray:
    """Per band the mean and the 95th percentile (numpy's default linear interpolation,
    written out: np.percentile's own overhead was a third of the gate's cost)."""
    n = db.shape[0]
    srt = np.sort(db, axis=0)
    pos = 0.95 * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    p95 = srt[lo] + (srt[hi] - srt[lo]) * np.float32(pos - lo)
    return np.concatenate([db.mean(axis=0), p95]).astype(np.float32)


def signature(samples: np.ndarray, rate: int) -> np.ndarray:
    """A window's spectral signature [2 * N_BANDS], dB: per band the mean and the 95th
    percentile over the window's frames of its log energy."""
    x = np.asarray(samples, dtype=np.float32)
    n = x.size // FRAME
    if n == 0:
        x = np.pad(x, (0, FRAME - x.size))
        n = 1
    return _summary(_frame_db(x[: n * FRAME].reshape(n, FRAME), rate))


@dataclass(frozen=True)
class WindowSig:
    """What the gate knows of one window: its signature, its stream frames [k0, k1), and per
    band the loudest of its settled frames (all but the newest ``settled_s``)."""

    sig: np.ndarray  # [2 * N_BANDS] dB
    k0: int
    k1: int
    settled_end: int  # frames [k0, settled_end) are settled
    settled_max: np.ndarray  # [N_BANDS] dB


class ChangeGate:
    """Per stream: remembers the last window the model ran on and its scores."""

    def __init__(self, params: ChangeGateConfig):
        self.p = params
        self._ref: WindowSig | None = None
        self._t: float = -np.inf
        self._scores: dict[str, float] | None = None
        self._before: dict[str, float] = {}  # the real run's scores before the latest one
        # why the model ran on a window the gate was asked about: "first" (no reference yet),
        # "near" (an event open or a score near its off level), "age", "change" (signature),
        # "novel" (a frame louder than anything the reference had settled)
        self.why: dict[str, int] = {"first": 0, "near": 0, "age": 0, "change": 0, "novel": 0}
        # band energies of the stream's frames [k_first, k_last) (frame k: samples
        # [k*FRAME, (k+1)*FRAME)), kept while a window may still cover them: overlapping
        # windows share their frames, so each hop computes only its new ones
        self._fdb = np.zeros((0, N_BANDS), np.float32)
        self._k_first = self._k_last = 0
        self._frames_rate = 0

    def signature_at(self, samples: np.ndarray, rate: int, start_n: int) -> WindowSig:
        """The window whose first sample is stream sample ``start_n``: its ``signature`` over
        the stream-aligned frames inside it (each frame computed once per stream) and the
        loudest of its settled frames."""
        x = np.asarray(samples, dtype=np.float32)
        k0 = -(-start_n // FRAME)
        k1 = (start_n + x.size) // FRAME
        if k1 <= k0:  # shorter than a frame: no stream frames, nothing settled
            return WindowSig(signature(x, rate), k0, k0, k0, np.full(N_BANDS, np.inf, np.float32))
        if rate != self._frames_rate or not self._k_first <= k0 <= self._k_last:
            self._fdb = np.zeros((0, N_BANDS), np.float32)  # not the stream we have frames of
            self._k_first = self._k_last = k0
            self._frames_rate = rate
        self._fdb = self._fdb[k0 - self._k_first :]
        self._k_first = k0
        if k1 > self._k_last:
            at = np.arange(self._k_last, k1) * FRAME - start_n
            new = _frame_db(x[at[:, None] + np.arange(FRAME)[None, :]], rate)
            self._fdb = np.concatenate([self._fdb, new])
            self._k_last = k1
        db = self._fdb[: k1 - k0]
        settled = max(1, (k1 - k0) - round(self.p.settled_s * rate / FRAME))
        return WindowSig(_summary(db), k0, k1, k0 + settled, db[:settled].max(axis=0))

    def quiet(self, off_levels: Mapping[str, float], any_open: bool) -> bool:
        """Could any window reuse the last real scores now (no event open, every score well
        below its off level)? If not, none can until the model runs again."""
        if self._scores is None or any_open:
            return False
        last, before, p = self._scores, self._before, self.p
        for name, off in off_levels.items():
            now = last.get(name, 1.0)
            if now >= p.margin * off or now - before.get(name, now) > p.rise * off:
                return False
        return True

    def _novel(self, ws: WindowSig) -> bool:
        """Does a frame of this window that the reference had not settled (its newest part, or
        after it) stand out, in any band, by more than ``novel_db`` over the loudest frame the
        reference had settled? Such a frame is a sound the model has not heard yet, however
        little it moves the window's signature (a click, a quiet sound over room tone)."""
        ref = self._ref
        if ref is None or self.p.novel_db <= 0:
            return False
        a = max(ref.settled_end, ws.k0)
        if a >= ws.k1 or not self._k_first <= a:
            return False
        new = self._fdb[a - self._k_first : ws.k1 - self._k_first]
        return bool(np.any(new > ref.settled_max + np.float32(self.p.novel_db)))

    def reuse(self, ws: WindowSig, t_s: float, off_levels: Mapping[str, float], any_open: bool) -> dict | None:
        """The last real scores if this window (``signature_at``'s ``ws``, stream time ``t_s``)
        may reuse them; None: the model must run. Ask for each window in stream order, right
        after its ``signature_at``."""
        if self._ref is None:
            self.why["first"] += 1
            return None
        if not self.quiet(off_levels, any_open):
            self.why["near"] += 1
            return None
        if t_s - self._t > self.p.max_age_s:
            self.why["age"] += 1
            return None
        if float(np.max(np.abs(ws.sig - self._ref.sig))) > self.p.db:
            self.why["change"] += 1
            return None
        if self._novel(ws):
            self.why["novel"] += 1
            return None
        return self._scores

    def ran_on(self, ws: WindowSig, t_s: float, labels: Sequence[str], values: Sequence[float]) -> None:
        """The model ran on this window: it is the reference from now on."""
        self._ref = ws
        self._t = t_s
        self._before = self._scores or {}
        self._scores = dict(zip(labels, (float(v) for v in values)))

    def forget(self) -> None:
        """A gap in the stream or new labels: the next window runs the model."""
        self._ref = None
        self._scores = None
        self._before = {}
        self._frames_rate = 0
