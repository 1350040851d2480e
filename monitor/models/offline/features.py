"""YAMNet's front-end in numpy: 16 kHz -> log-mel patches [n, 96, 64].

25 ms periodic-Hann frames every 10 ms, 512-point FFT magnitude, 64 HTK mel bands from 125
to 7500 Hz, log(mel + offset); patches of 96 frames (0.96 s) every 48 frames (0.48 s).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE_HZ = 16000
WIN = 400
HOP = 160
NFFT = 512
N_MELS = 64
PATCH = 96
PATCH_HOP = 48
LOG_OFFSET = 1e-6  # as in the ONNX export (MODELS.md); measured slightly better than 1e-3 here


def _hz_to_mel(f: float | np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def mel_matrix() -> np.ndarray:
    """[257, 64] HTK triangular weights on the FFT bin frequencies (DC bin excluded)."""
    bins = np.linspace(0, SAMPLE_RATE_HZ / 2, NFFT // 2 + 1)
    mel_bins = _hz_to_mel(bins)
    edges = np.linspace(_hz_to_mel(125.0), _hz_to_mel(7500.0), N_MELS + 2)
    lo, ce, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (mel_bins[:, None] - lo) / (ce - lo)
    down = (hi - mel_bins[:, None]) / (hi - ce)
    w = np.maximum(0.0, np.minimum(up, down))
    w[0, :] = 0.0
    return w.astype(np.float32)


_MEL = mel_matrix()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN) / WIN)).astype(np.float32)


def log_mel(x: np.ndarray) -> np.ndarray:
    """Mono float32 at 16 kHz -> [frames, 64] log-mel."""
    x = np.asarray(x, dtype=np.float32)
    if x.size < WIN:
        x = np.pad(x, (0, WIN - x.size))
    n = 1 + (x.size - WIN) // HOP
    frames = np.lib.stride_tricks.as_strided(x, (n, WIN), (x.strides[0] * HOP, x.strides[0]))
    mag = np.abs(np.fft.rfft(frames * _WINDOW, NFFT, axis=1)).astype(np.float32)
    return np.log(mag @ _MEL + LOG_OFFSET)


def patches(x: np.ndarray) -> np.ndarray:
    """Mono 16 kHz -> [n_patches, 96, 64]; a clip shorter than 0.96 s is zero-padded."""
    m = log_mel(x)
    if m.shape[0] < PATCH:
        pad = np.full((PATCH - m.shape[0], N_MELS), np.log(LOG_OFFSET), dtype=np.float32)
        m = np.concatenate([m, pad])
    n = 1 + (m.shape[0] - PATCH) // PATCH_HOP
    return np.stack([m[i * PATCH_HOP : i * PATCH_HOP + PATCH] for i in range(n)])
