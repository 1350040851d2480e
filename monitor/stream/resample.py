"""Streaming resampler: device rate -> model rate, state carried across blocks.

soxr's ResampleStream keeps the filter history between calls, so the output does not
depend on how the input was cut into blocks (tested with blocks of 256, 1000 and 4096).
"""

from __future__ import annotations

import numpy as np


class StreamResampler:
    def __init__(self, in_rate_hz: int, out_rate_hz: int, quality: str = "HQ"):
        self.in_rate_hz = int(in_rate_hz)
        self.out_rate_hz = int(out_rate_hz)
        self.quality = quality
        self._stream = None
        self.reset()

    def reset(self) -> None:
        if self.in_rate_hz != self.out_rate_hz:
            import soxr

            self._stream = soxr.ResampleStream(
                self.in_rate_hz, self.out_rate_hz, 1, dtype="float32", quality=self.quality
            )

    def process(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        """Mono float32 block in, resampled block out (may be empty)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self._stream is None:
            return x
        return self._stream.resample_chunk(x, last=last)
