"""Durable outbox (SQLite): an event is stored before it is published and deleted only
after the broker acknowledged it (QoS 1 PUBACK). Survives crashes and restarts.

Rows are keyed by the event's ``seq``; a row is never replaced (a key that is taken gets
the next free one, loudly). The outbox also remembers the highest ``seq`` it ever held, so
numbering continues after it even if the seq file is lost.

When the database cannot be written (state dir full, or unusable at start) rows are kept
in memory, delivered like the others and written to the database again as soon as it
accepts them; only a crash during such a stretch loses them. A database that is not a
database any more (corrupt, truncated) is moved aside and a fresh one started.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mem: dict[int, tuple[str, str, float]] = {}  # rows the database did not take
        self._gone: set[int] = set()  # delivered rows the database could not delete yet
        self._high = 0
        self._failing = False
        self.moved_aside: Path | None = None
        self._db = self._open()

    # -- opening ---------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # created 0600 here (sqlite would make it 0644; its -wal and -shm files copy the mode)
        try:
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError:
            pass  # sqlite's own open says what is wrong (read-only, full, ...)
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
                "payload TEXT NOT NULL, created REAL NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            row = db.execute("SELECT value FROM meta WHERE key = 'high_seq'").fetchone()
            top = db.execute("SELECT MAX(seq) FROM outbox").fetchone()
            self._high = max(row[0] if row else 0, top[0] or 0)
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> sqlite3.Connection | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.error("cannot create %s (%s): undelivered events are kept in memory only", self.path.parent, e.strerror)
            self._failing = True
            return None
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            if not _corrupt(e):
                log.error(
                    "cannot open the outbox %s (%s): undelivered events are kept in memory only, a restart loses them",
                    self.path,
                    e,
                )
                self._failing = True
                return None
            reason = str(e)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            self.path.replace(aside)
            for ext in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + ext)
                if side.exists():
                    side.replace(aside.with_name(aside.name + ext))
        except OSError as e:
            log.error(
                "the outbox %s is corrupt (%s) and cannot be moved aside (%s): events are kept in memory only",
                self.path,
                reason,
                e.strerror,
            )
            self._failing = True
            return None
        self.moved_aside = aside
        log.error(
            "the outbox %s was corrupt (%s): kept as %s, starting a fresh one (events in it are not delivered)",
            self.path,
            reason,
            aside,
        )
        try:
            return self._connect()
        except sqlite3.Error as e:
            log.error("cannot start a fresh outbox %s (%s): events are kept in memory only", self.path, e)
            self._failing = True
            return None

    def _report(self, ok: bool, what: str = "", err: Exception | None = None) -> None:
        if not ok and not self._failing:
            log.error(
                "the outbox %s cannot be written (%s: %s): events are kept in memory and still "
                "delivered; a restart before it recovers loses them",
                self.path,
                what,
                err,
            )
        elif ok and self._failing:
            log.warning(
                "the outbox %s accepts writes again: %d event(s) kept in memory are stored", self.path, len(self._mem)
            )
        self._failing = not ok

    # -- writing ---------------------------------------------------------------------------
    def _insert(self, key: int, topic: str, payload: str, created: float) -> None:
        """Store a row under ``key``, or under the next free key if it is taken; raises sqlite3.Error."""
        assert self._db is not None
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM outbox WHERE seq = ?", (key,)).fetchone():
                top = db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
                new = max(top, self._high, max(self._mem, default=0)) + 1
                log.error(
                    "outbox: seq %d is already taken by an undelivered event; this one is kept "
                    "as row %d (nothing is replaced)",
                    key,
                    new,
                )
                key = new
            db.execute(
                "INSERT INTO outbox (seq, topic, payload, created) VALUES (?, ?, ?, ?)", (key, topic, payload, created)
            )
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('high_seq', ?) ON CONFLICT(key) DO UPDATE "
                "SET value = MAX(value, excluded.value)",
                (key,),
            )
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self._high = max(self._high, key)

    def _flush_memory(self) -> bool:
        """Move rows kept in memory and pending deletions to the database; True when all went."""
        if self._db is None:
            return False
        try:
            for key in sorted(self._gone):
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (key,))
                self._gone.discard(key)
            for key in sorted(self._mem):
                topic, payload, created = self._mem[key]
                self._insert(key, topic, payload, created)
                del self._mem[key]
        except sqlite3.Error as e:
            self._report(False, "retry", e)
            return False
        self._report(True)
        return True

    def add(self, seq: int, topic: str, payload: str) -> None:
        now = time.time()
        with self._lock:
            if (self._mem or self._gone) and not self._flush_memory():
                self._keep(seq, topic, payload, now)
                return
            if self._db is None:
                self._keep(seq, topic, payload, now)
                return
            try:
                self._insert(seq, topic, payload, now)
            except sqlite3.Error as e:
                self._report(False, "add", e)
                self._keep(seq, topic, payload, now)

    def _keep(self, seq: int, topic: str, payload: str, created: float) -> None:
        if seq in self._mem:
            seq = max(max(self._mem), self._high) + 1
        self._mem[seq] = (topic, payload, created)
        self._high = max(self._high, seq)

    def after(self, seq: int, limit: int = 100) -> list[tuple[int, str, str]]:
        """Entries with a key above ``seq``, oldest first (database and memory)."""
        with self._lock:
            rows: list[tuple[int, str, str]] = []
            if self._db is not None:
                try:
                    rows = self._db.execute(
                        "SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                        (seq, limit + len(self._gone)),
                    ).fetchall()
                except sqlite3.Error as e:
                    log.error("cannot read the outbox %s: %s", self.path, e)
            rows = [r for r in rows if r[0] not in self._gone]
            rows += [(k, t, p) for k, (t, p, _) in self._mem.items() if k > seq]
            rows.sort(key=lambda r: r[0])
            return rows[:limit]

    def remove(self, seq: int) -> None:
        with self._lock:
            if self._mem.pop(seq, None) is not None:
                return
            if self._db is None:
                return
            try:
                self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            except sqlite3.Error as e:  # a full disk can refuse even a delete (WAL)
                self._report(False, "remove", e)
                self._gone.add(seq)

    def size(self) -> int:
        with self._lock:
            n = 0
            if self._db is not None:
                try:
                    n = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                except sqlite3.Error:
                    n = 0
            return n - len(self._gone) + len(self._mem)

    @property
    def in_memory(self) -> int:
        return len(self._mem)

    @property
    def high_seq(self) -> int:
        """The highest key this outbox ever held (delivered rows included)."""
        return self._high

    def oldest_age_s(self) -> float:
        with self._lock:
            oldest = [c for _, _, c in self._mem.values()]
            if self._db is not None:
                try:
                    row = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()
                    if row[0] is not None:
                        oldest.append(row[0])
                except sqlite3.Error:
                    pass
        return max(0.0, time.time() - min(oldest)) if oldest else 0.0

    def close(self) -> None:
        with self._lock:
            if self._mem or self._gone:
                self._flush_memory()
            if self._mem:
                log.error(
                    "%d undelivered event(s) could not be stored in %s and are lost with this exit",
                    len(self._mem),
                    self.path,
                )
            if self._db is not None:
                self._db.close()


def _corrupt(e: sqlite3.DatabaseError) -> bool:
    text = str(e).lower()
    return any(
        k in text for k in ("not a database", "malformed", "quick_check", "file is encrypted", "database disk image")
    )
