"""Bounded ring buffer of captured blocks between the capture thread and the worker.

Real-time sources never wait: when the buffer is full the new block is dropped and
counted ("cannot process audio fast enough, dropping audio"). A file read with ``--fast``
passes ``block=True`` and waits instead, so offline processing loses nothing.

Besides audio blocks the buffer carries small control markers (source lost / resumed), in
order with the audio around them; markers are never dropped and do not count as frames.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DroppedAudio:
    """Marker: ``frames`` were dropped just before the next block (stream time must skip them)."""

    frames: int


class RingBuffer:
    def __init__(self, capacity_frames: int):
        self.capacity_frames = int(capacity_frames)
        self._blocks: collections.deque = collections.deque()
        self._frames = 0
        self._cond = threading.Condition()
        self.dropped_frames = 0
        self.received_frames = 0
        self.closed = False
        self._unreported_drop = 0

    def put(self, block: np.ndarray, block_when_full: bool = False, timeout: float | None = None) -> bool:
        n = len(block)
        with self._cond:
            self.received_frames += n
            if block_when_full:
                ok = self._cond.wait_for(lambda: self._frames + n <= self.capacity_frames or self.closed, timeout)
                if not ok:
                    self.dropped_frames += n
                    return False
            elif self._frames + n > self.capacity_frames:
                self.dropped_frames += n
                self._unreported_drop += n
                return False
            if self._unreported_drop:
                self._blocks.append(DroppedAudio(self._unreported_drop))
                self._unreported_drop = 0
            self._blocks.append(block)
            self._frames += n
            self._cond.notify_all()
            return True

    def put_marker(self, marker: object) -> None:
        """Enqueue a control marker after the blocks already queued (never blocks, never dropped)."""
        with self._cond:
            self._blocks.append(marker)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """Next block (or marker), or None after ``timeout`` (or when closed and empty)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._blocks or self.closed, timeout):
                return None
            if not self._blocks:
                return None
            b = self._blocks.popleft()
            if isinstance(b, np.ndarray):
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
