"""Durable outbox (SQLite): an event is stored before it is published and deleted only
after the broker acknowledged it (QoS 1 PUBACK). Survives crashes and restarts."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path


class Outbox:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
            "payload TEXT NOT NULL, created REAL NOT NULL)"
        )

    def add(self, seq: int, topic: str, payload: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO outbox (seq, topic, payload, created) VALUES (?, ?, ?, ?)",
                (seq, topic, payload, time.time()),
            )

    def after(self, seq: int, limit: int = 100) -> list[tuple[int, str, str]]:
        """Entries with a sequence number above ``seq``, oldest first."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()

    def remove(self, seq: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def size(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def oldest_age_s(self) -> float:
        with self._lock:
            row = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()
        return 0.0 if row[0] is None else max(0.0, time.time() - row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
