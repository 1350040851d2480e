"""Small numeric helpers shared by scoring, evaluation and training (numpy only)."""

from __future__ import annotations

import numpy as np


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 (the max is subtracted first)."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def true_ranks(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1-based rank of the true class per row; ties with the true class count against it."""
    s = np.asarray(scores, dtype=np.float64)
    true = s[np.arange(len(y)), y]
    return (s >= true[:, None]).sum(axis=1)
