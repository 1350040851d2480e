"""The event store's writer (``store.enabled``, on by default): every event, each window's
scores and the per-minute maxima into the SQLite store (monitor/eventstore.py).

The pipeline only queues: a writer thread commits (an event at once, windows and minutes
every ``FLUSH_S``), so a slow SD card never holds a window up. At close the queue is
drained; a ``kill -9`` loses at most the last ``FLUSH_S`` of window scores, never an event
already committed.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable

from monitor.eventstore import EventStore
from monitor.sinks.base import Sink, SinkStatus
from monitor.types import Event, Scores

log = logging.getLogger(__name__)

FLUSH_S = 2.0
PRUNE_EVERY_S = 3600.0


class StoreSink(Sink):
    name = "store"

    def __init__(self, store: EventStore, clock: Callable[[], float] = time.time):
        self.store = store
        self.run = uuid.uuid4().hex[:12]  # this run's windows (an event's curve is of its run)
        self._clock = clock
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._minute: dict[tuple[str, str], float] = {}
        self._minute_at: int | None = None
        self._failed = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # sources' workers share this sink
        self._thread = threading.Thread(target=self._write, name="event store", daemon=True)
        self._thread.start()

    def publish(self, event: Event) -> None:
        self._q.put(("event", event))

    def on_scores(self, scores: Scores) -> None:
        now = self._clock()
        if scores.gated:
            values = {k: 0.0 for k in scores.labels}
        else:
            values = {k: round(v, 4) for k, v in zip(scores.labels, scores.values) if math.isfinite(v)}
        self._q.put(("window", (self.run, scores.source, round(scores.start_s, 3), now, json.dumps(values))))
        minute = int(now // 60)
        rows = None
        with self._lock:
            rows = self._note_minute(minute, scores.source, values)
        if rows:
            self._q.put(("minutes", rows))

    def _note_minute(self, minute: int, source: str, values: dict[str, float]) -> list | None:
        """Keep the minute's maxima; -> the previous minute's rows once a new one begins."""
        rows = None
        if self._minute_at is not None and minute != self._minute_at:
            rows = [(self._minute_at, s, k, v) for (s, k), v in self._minute.items()]
            self._minute = {}
        self._minute_at = minute
        for k, v in values.items():
            key = (source, k)
            if v > self._minute.get(key, -1.0):
                self._minute[key] = v
        return rows

    def status(self) -> SinkStatus:
        return SinkStatus(state="ok" if not self._failed else f"{self._failed} write(s) failed")

    def close(self) -> None:
        if self._minute_at is not None and self._minute:
            self._q.put(("minutes", [(self._minute_at, s, k, v) for (s, k), v in self._minute.items()]))
        self._stop.set()
        self._q.put(("stop", None))
        self._thread.join(timeout=30)
        self.store.close()

    def _write(self) -> None:
        windows: list = []
        flushed = pruned = time.monotonic()
        self._safely(self.store.prune)
        while True:
            try:
                kind, item = self._q.get(timeout=FLUSH_S)
            except queue.Empty:
                kind, item = "tick", None
            if kind == "event":
                self._safely(self.store.put_event, item, self.run)
            elif kind == "window":
                windows.append(item)
            elif kind == "minutes":
                self._safely(self.store.put_minutes, item)
            now = time.monotonic()
            if windows and (kind in ("stop", "tick") or now - flushed >= FLUSH_S):
                batch, windows = windows, []
                self._safely(self.store.put_windows, batch)
                flushed = now
            if kind == "stop":
                return
            if now - pruned >= PRUNE_EVERY_S:
                pruned = now
                self._safely(self.store.prune)

    def _safely(self, fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - the store must never stop the monitor
            self._failed += 1
            if self._failed in (1, 10, 100) or self._failed % 1000 == 0:
                log.error("event store %s: write failed (%d so far): %s", self.store.path, self._failed, e)
