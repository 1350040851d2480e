"""Small persisted state: the per-device event sequence number survives restarts."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path


class SeqCounter:
    """Monotonic ``seq`` stored in ``<state_dir>/seq-<device>.json`` (atomic writes)."""

    def __init__(self, state_dir: str | os.PathLike, device_id: str):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_id) or "device"
        self.path = Path(state_dir).expanduser() / f"seq-{safe}.json"
        self._lock = threading.Lock()
        self._last = self._load()

    def _load(self) -> int:
        try:
            return int(json.loads(self.path.read_text())["last_seq"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    @property
    def last(self) -> int:
        return self._last

    def next(self) -> int:
        with self._lock:
            self._last += 1
            self._save(self._last)
            return self._last

    def _save(self, value: int) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".seq-")
            with os.fdopen(fd, "w") as f:
                json.dump({"last_seq": value}, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # the sequence still increases within this run
