"""The local event store: every event of every run in SQLite, in the state dir.

Written by ``sinks/store.py`` for every event whether or not MQTT is configured; read by
`sound-monitor events` and the web page (history, an event's score curve, suggested
thresholds, the corrections made on the page). One file, ``<state>/events-<device>.sqlite``:

- ``events``: one row per event id, its ``start`` and ``end`` records as sent (the event
  schema); the latest is what the history shows. Each write is committed before the next
  (WAL, ``synchronous=FULL``): an event survives ``kill -9`` like the outbox's.
- ``windows``: each window's scores (the score curve around an event), kept
  ``store.scores_hours``.
- ``minutes``: per minute, source and label the highest score (suggested thresholds), kept
  as long as the events.
- ``corrections``: what the page taught ("not this sound"), and whether it was undone.

Retention: by age (``store.keep_days``) and by size (``store.max_mb``: the oldest windows,
then the oldest events go first); pruned at start and every hour.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from monitor.types import Event

SCHEMA = 1
CSV_FIELDS = (
    "schema",
    "type",
    "event_id",
    "seq",
    "label",
    "score",
    "peak_score",
    "start_s",
    "end_s",
    "duration_s",
    "wall_time",
    "start_time",
    "device_id",
    "source",
    "model",
    "reason",
    "clip",
)

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY, seq INTEGER, label TEXT NOT NULL, source TEXT NOT NULL,
    at REAL NOT NULL, ended REAL, run TEXT, start_s REAL, end_s REAL, peak REAL,
    clip TEXT, start_json TEXT, end_json TEXT);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE INDEX IF NOT EXISTS events_label_at ON events (label, at);
CREATE TABLE IF NOT EXISTS windows (
    run TEXT NOT NULL, source TEXT NOT NULL, t_s REAL NOT NULL, at REAL NOT NULL, scores TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS windows_run ON windows (run, source, t_s);
CREATE INDEX IF NOT EXISTS windows_at ON windows (at);
CREATE TABLE IF NOT EXISTS minutes (
    minute INTEGER NOT NULL, source TEXT NOT NULL, label TEXT NOT NULL, max REAL NOT NULL,
    PRIMARY KEY (minute, source, label));
CREATE TABLE IF NOT EXISTS corrections (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL, event_id TEXT,
    label TEXT NOT NULL, name TEXT, undone REAL);
"""


def store_path(state_dir: str | os.PathLike, device_id: str) -> Path:
    from monitor.runtime.state import state_file

    return state_file(state_dir, "events", device_id, ".sqlite")


def iso_to_epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def event_epoch(ev: Event) -> float:
    """When an event began, in seconds since the epoch (its first window when known)."""
    return iso_to_epoch(ev.start_time) or iso_to_epoch(ev.wall_time) or time.time()


def parse_since(text: str, now: float | None = None) -> float:
    """``24h``, ``7d``, ``30m``, ``90s`` ago, or an ISO date/time -> epoch seconds."""
    now = time.time() if now is None else now
    t = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if t and t[-1] in units:
        try:
            n = float(t[:-1])
        except ValueError:
            n = -1.0
        if n >= 0 and math.isfinite(n):
            return now - n * units[t[-1]]
    at = iso_to_epoch(text.strip())
    if at is None:
        try:  # a date alone: its midnight, local time
            at = datetime.fromisoformat(text.strip()).timestamp()
        except ValueError:
            raise ValueError(f"{text!r}: use a duration (30m, 24h, 7d) or a date/time (2026-12-07)") from None
    return at


@dataclass(frozen=True)
class StoredEvent:
    event_id: str
    label: str
    source: str
    at: float  # epoch seconds of its start
    ended: float | None
    run: str | None
    start_s: float | None
    end_s: float | None
    clip: str | None
    record: dict  # the latest record (end when there is one) in the event schema


class EventStore:
    """The store's one connection (thread-safe: a lock around each statement group)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        keep_days: float = 90.0,
        max_mb: float = 200.0,
        scores_hours: float = 48.0,
        create: bool = True,
    ):
        self.path = Path(path)
        self.keep_days, self.max_mb, self.scores_hours = keep_days, max_mb, scores_hours
        if not create and not self.path.exists():
            raise FileNotFoundError(self.path)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)  # what a house sounds like: private
            os.close(fd)
        self._lock = threading.RLock()
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=10.0)
        with self._lock:
            if create:
                self.db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            if create:
                self.db.executescript(_TABLES)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
                self.db.commit()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- writing ---------------------------------------------------------------------------
    def put_event(self, ev: Event, run: str) -> None:
        """A start inserts the event, an end completes it (or inserts it: a restart's end)."""
        rec = ev.to_json()
        with self._lock, self.db:
            if ev.type == "start":
                self.db.execute(
                    "INSERT OR REPLACE INTO events (event_id, seq, label, source, at, run, start_s, peak, start_json)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (ev.event_id, ev.seq, ev.label, ev.source, event_epoch(ev), run, ev.start_s, ev.peak_score, rec),
                )
                return
            ended = iso_to_epoch(ev.wall_time) or time.time()
            cur = self.db.execute(
                # the end record carries all the start's fields: the start's copy goes (size)
                "UPDATE events SET ended = ?, end_s = ?, peak = ?, clip = ?, end_json = ?, start_json = NULL"
                " WHERE event_id = ?",
                (ended, ev.end_s, ev.peak_score, ev.clip, rec, ev.event_id),
            )
            if cur.rowcount == 0:
                self.db.execute(
                    "INSERT INTO events (event_id, seq, label, source, at, ended, start_s, end_s, peak, clip, end_json)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        ev.event_id,
                        ev.seq,
                        ev.label,
                        ev.source,
                        event_epoch(ev),
                        ended,
                        ev.start_s,
                        ev.end_s,
                        ev.peak_score,
                        ev.clip,
                        rec,
                    ),
                )

    def put_windows(self, rows: Sequence[tuple[str, str, float, float, str]]) -> None:
        """(run, source, t_s, at, scores JSON) of each window."""
        if rows:
            with self._lock, self.db:
                self.db.executemany("INSERT INTO windows VALUES (?, ?, ?, ?, ?)", rows)

    def put_minutes(self, rows: Iterable[tuple[int, str, str, float]]) -> None:
        """(minute since the epoch, source, label, highest score): kept as the highest seen."""
        with self._lock, self.db:
            self.db.executemany(
                "INSERT INTO minutes VALUES (?, ?, ?, ?) ON CONFLICT (minute, source, label)"
                " DO UPDATE SET max = MAX(max, excluded.max)",
                list(rows),
            )

    def add_correction(self, kind: str, label: str, name: str, event_id: str | None) -> int:
        with self._lock, self.db:
            cur = self.db.execute(
                "INSERT INTO corrections (at, kind, event_id, label, name) VALUES (?, ?, ?, ?, ?)",
                (time.time(), kind, event_id, label, name),
            )
            return int(cur.lastrowid or 0)

    def undo_correction(self, cid: int) -> dict | None:
        """Mark a correction undone; -> it (None: no such correction, or already undone)."""
        with self._lock, self.db:
            row = self.db.execute(
                "SELECT id, at, kind, event_id, label, name, undone FROM corrections WHERE id = ?", (cid,)
            ).fetchone()
            if row is None or row[6] is not None:
                return None
            self.db.execute("UPDATE corrections SET undone = ? WHERE id = ?", (time.time(), cid))
            return _correction(row)

    # -- reading ---------------------------------------------------------------------------
    def _where(
        self, since: float | None, until: float | None, label: str | None, source: str | None
    ) -> tuple[str, list]:
        clauses, args = [], []
        for sql, value in (("at >= ?", since), ("at < ?", until), ("label = ?", label), ("source = ?", source)):
            if value is not None:
                clauses.append(sql)
                args.append(value)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def events(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        label: str | None = None,
        source: str | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """The events (latest record of each, event schema), newest first."""
        where, args = self._where(since, until, label, source)
        sql = f"SELECT COALESCE(end_json, start_json) FROM events{where} ORDER BY at DESC, seq DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._lock:
            rows = self.db.execute(sql, args).fetchall()
        return [json.loads(r[0]) for r in rows]

    def event(self, event_id: str) -> StoredEvent | None:
        with self._lock:
            row = self.db.execute(
                "SELECT event_id, label, source, at, ended, run, start_s, end_s, clip,"
                " COALESCE(end_json, start_json) FROM events WHERE event_id = ?",
                (event_id,),
            ).fetchone()
        if row is None:
            return None
        eid, label, source, at, ended, run, start_s, end_s, clip, rec = row
        return StoredEvent(eid, label, source, at, ended, run, start_s, end_s, clip, json.loads(rec))

    def curve(self, ev: StoredEvent, pad_s: float = 30.0) -> dict:
        """Every label's score per window around ``ev`` (its run and source): ``{"t_s": [...],
        "scores": {label: [...]}}`` (a label missing from a window: null)."""
        if ev.run is None or ev.start_s is None:
            return {"t_s": [], "scores": {}}
        end = ev.end_s if ev.end_s is not None else ev.start_s + 60.0
        with self._lock:
            rows = self.db.execute(
                "SELECT t_s, scores FROM windows WHERE run = ? AND source = ? AND t_s BETWEEN ? AND ? ORDER BY t_s",
                (ev.run, ev.source, ev.start_s - pad_s, end + pad_s),
            ).fetchall()
        per = [json.loads(s) for _, s in rows]
        labels: list[str] = []
        for d in per:
            labels += [k for k in d if k not in labels]
        return {"t_s": [t for t, _ in rows], "scores": {k: [d.get(k) for d in per] for k in labels}}

    def counts(
        self,
        by: str,
        *,
        since: float | None = None,
        until: float | None = None,
        label: str | None = None,
        source: str | None = None,
        utc_offset_s: float = 0.0,
    ) -> list[tuple[str, int]]:
        """Events per ``hour`` or ``day`` (local time at ``utc_offset_s``): [(bucket, n)]."""
        where, args = self._where(since, until, label, source)
        fmt = "%Y-%m-%dT%H:00" if by == "hour" else "%Y-%m-%d"
        sql = f"SELECT strftime(?, at + ?, 'unixepoch') AS b, COUNT(*) FROM events{where} GROUP BY b ORDER BY b"
        with self._lock:
            return [(b, n) for b, n in self.db.execute(sql, [fmt, utc_offset_s, *args]).fetchall()]

    def corrections(self, limit: int = 200) -> list[dict]:
        with self._lock:
            rows = self.db.execute(
                "SELECT id, at, kind, event_id, label, name, undone FROM corrections ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_correction(r) for r in rows]

    def suggest_threshold(self, label: str, per_day: float = 1.0, lowest: float = 0.05) -> dict:
        """The lowest threshold that would have started at most ``per_day`` events a day on
        the minutes no event of ``label`` covers (each run of consecutive minutes at or above
        it counts as an event per ``RUN_MINUTES``): ``{"threshold", "hours", "would_fire_per_day"}``, or
        ``{"threshold": None, "why"}`` with too little history."""
        with self._lock:
            rows = self.db.execute(
                "SELECT minute, MAX(max) FROM minutes WHERE label = ? GROUP BY minute ORDER BY minute", (label,)
            ).fetchall()
            spans = self.db.execute(
                "SELECT at, COALESCE(ended, at + 60) FROM events WHERE label = ?", (label,)
            ).fetchall()
        covered: set[int] = set()
        for a, b in spans:
            covered.update(range(int(a // 60) - 1, int(b // 60) + 2))
        free = [(m, v) for m, v in rows if m not in covered]
        hours = len(rows) / 60.0
        if hours < 1.0:
            return {"threshold": None, "hours": round(hours, 2), "why": "less than an hour of scores recorded"}
        days = max(hours / 24.0, 1.0 / 24.0)
        mins = np.array([m for m, _ in free], dtype=np.int64)
        vals = np.array([v for _, v in free], dtype=np.float64)
        for step in range(int(lowest * 100), 100):
            t = step / 100.0
            fired = _would_fire(mins[vals >= t])
            if fired / days <= per_day:
                return {"threshold": t, "hours": round(hours, 2), "would_fire_per_day": round(fired / days, 2)}
        return {"threshold": None, "hours": round(hours, 2), "why": "no threshold below 1 is quiet enough"}

    # -- retention -------------------------------------------------------------------------
    def size_mb(self) -> float:
        with self._lock:
            pages = self.db.execute("PRAGMA page_count").fetchone()[0]
            free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self.db.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size / 1e6

    def prune(self, now: float | None = None) -> dict[str, int]:
        """Delete by age, then the oldest (windows first) while over ``max_mb``; -> rows deleted."""
        now = time.time() if now is None else now
        gone = {"events": 0, "windows": 0, "minutes": 0}
        with self._lock, self.db:
            gone["windows"] += self.db.execute(
                "DELETE FROM windows WHERE at < ?", (now - self.scores_hours * 3600,)
            ).rowcount
            old = now - self.keep_days * 86400
            gone["events"] += self.db.execute("DELETE FROM events WHERE at < ?", (old,)).rowcount
            gone["minutes"] += self.db.execute("DELETE FROM minutes WHERE minute < ?", (int(old // 60),)).rowcount
        for table, key in (("windows", "at"), ("minutes", "minute"), ("events", "at")):
            while self.size_mb() > self.max_mb:
                with self._lock, self.db:
                    n = self.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                    if n == 0:
                        break
                    cut = self.db.execute(
                        f"SELECT {key} FROM {table} ORDER BY {key} LIMIT 1 OFFSET ?", (max(n // 10, 1) - 1,)
                    ).fetchone()[0]
                    gone[table] += self.db.execute(f"DELETE FROM {table} WHERE {key} <= ?", (cut,)).rowcount
        with self._lock:
            self.db.execute("PRAGMA incremental_vacuum")
        return gone


RUN_MINUTES = 5  # a stretch of minutes above a threshold: one event per this many minutes


def _would_fire(minutes: Sequence[int] | np.ndarray) -> int:
    """Events that minutes at or above a threshold would have started: each stretch of
    consecutive minutes one per ``RUN_MINUTES`` (a score that stays up fires again and
    again as it wavers; a threshold under the room's own level is never suggested)."""
    m = np.asarray(minutes, dtype=np.int64)
    if m.size == 0:
        return 0
    starts = np.flatnonzero(np.diff(m) != 1) + 1  # where a new stretch begins
    lengths = np.diff(np.concatenate(([0], starts, [m.size])))
    return int(np.sum(-(-lengths // RUN_MINUTES)))


def _correction(row: Sequence) -> dict:
    return {
        "id": row[0],
        "at": datetime.fromtimestamp(row[1], timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "kind": row[2],
        "event_id": row[3],
        "label": row[4],
        "name": row[5],
        "undone": row[6] is not None,
    }


def to_csv(events: Sequence[dict]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for e in events:
        w.writerow({k: ("" if e.get(k) is None else e.get(k)) for k in CSV_FIELDS})
    return out.getvalue()
