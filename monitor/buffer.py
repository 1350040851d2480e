"""Bounded ring buffer of captured blocks between the capture thread and the worker.

Real-time sources never wait: when the buffer is full the new block is dropped and
counted ("cannot process audio fast enough, dropping audio"). A file read with ``--fast``
passes ``block=True`` and waits instead, so offline processing loses nothing.
"""

from __future__ import annotations

import collections
import threading

import numpy as np


class RingBuffer:
    def __init__(self, capacity_frames: int):
        self.capacity_frames = int(capacity_frames)
        self._blocks: collections.deque[np.ndarray] = collections.deque()
        self._frames = 0
        self._cond = threading.Condition()
        self.dropped_frames = 0
        self.received_frames = 0
        self.closed = False

    def put(self, block: np.ndarray, block_when_full: bool = False, timeout: float | None = None) -> bool:
        n = len(block)
        with self._cond:
            self.received_frames += n
            if block_when_full:
                ok = self._cond.wait_for(
                    lambda: self._frames + n <= self.capacity_frames or self.closed, timeout
                )
                if not ok:
                    self.dropped_frames += n
                    return False
            elif self._frames + n > self.capacity_frames:
                self.dropped_frames += n
                return False
            self._blocks.append(block)
            self._frames += n
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> np.ndarray | None:
        """Next block, or None after ``timeout`` (or when closed and empty)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._blocks or self.closed, timeout):
                return None
            if not self._blocks:
                return None
            b = self._blocks.popleft()
            self._frames -= len(b)
            self._cond.notify_all()
            return b

    def close(self) -> None:
        """No more input: the reader drains what is left, then gets None."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def frames(self) -> int:
        return self._frames
