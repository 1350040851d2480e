"""The level stage: per-window gain normalisation, for backends that are not level-invariant.

YAMNet (the offline backend) scores the same sound differently at different levels, and
real microphones (and calibrated recordings such as uiowa-dev, median RMS about -47 dBFS)
are quiet. Each window (or clip) handed to such a backend is scaled so that its RMS level is
``target_dbfs``, with the gain bounded to ±``max_gain_db``: room tone is lifted by at most
that much, a loud window is turned down. The level gate and the reported ``level_dbfs``
run before this stage, on the raw audio, so gating and the live view are unchanged.

CLAP's reference pipeline does not normalise (``classify`` must equal it), so CLAP backends
declare no level stage; ``model.level.normalise: auto`` gives each backend its default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TINY = 1e-12


def rms_dbfs(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """RMS level in dB relative to full scale (a 1.0-amplitude square wave is 0 dBFS)."""
    x = np.asarray(x, dtype=np.float64)
    return 10.0 * np.log10(np.maximum(np.mean(x * x, axis=axis), _TINY))


@dataclass(frozen=True)
class LevelNorm:
    """Scale each row to ``target_dbfs`` RMS, the gain clipped to [-max_gain_db, +max_gain_db]."""

    target_dbfs: float = -20.0
    max_gain_db: float = 30.0

    def gain_db(self, x: np.ndarray) -> np.ndarray:
        """The gain applied to each row of ``x`` ([n] -> scalar array, [B, n] -> [B])."""
        return np.clip(self.target_dbfs - rms_dbfs(x), -self.max_gain_db, self.max_gain_db)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """[n] or [B, n] float audio -> the same shape, each row at the target level (float32)."""
        x = np.asarray(x, dtype=np.float32)
        g = np.power(10.0, self.gain_db(x) / 20.0).astype(np.float32)
        return x * (g[..., None] if x.ndim > 1 else g)

    @property
    def key(self) -> str:
        """Part of a backend's cache key: embeddings change when these values do."""
        return f"level{self.target_dbfs:g}/{self.max_gain_db:g}"

    def describe(self) -> str:
        return f"windows normalised to {self.target_dbfs:g} dBFS RMS (gain at most ±{self.max_gain_db:g} dB)"
