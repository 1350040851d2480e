"""The journal of open events: a sink that remembers which events are open (a ``start``
without its ``end``) in the state dir, so that the next start after a crash or ``kill -9``
ends them (``"reason": "restart"``); and the highest ``seq`` any sink has on record."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable

from monitor.events import utc_now_iso
from monitor.files import write_text_atomic
from monitor.runtime.state import state_file
from monitor.sinks.base import Sink
from monitor.types import Event

log = logging.getLogger("monitor.runtime.state")


class OpenEventsJournal(Sink):
    """Remembers the events that are open (a ``start`` without its ``end``) in
    ``<state_dir>/open-<dev>.json``, so that after a crash or ``kill -9`` the next start can
    end them (``"reason": "restart"``) instead of leaving them open forever."""

    name = "journal"

    def __init__(self, state_dir: str | os.PathLike, device_id: str):
        self.path = state_file(state_dir, "open", device_id, ".json")
        self._lock = threading.Lock()
        self._failed = False
        self._open: dict[str, dict] = self._load()
        self._left = dict(self._open)  # what the previous run left open

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning(
                "cannot read the open-events journal %s (%s): events a crash left open cannot be ended", self.path, e
            )
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict) and v.get("type") == "start"}

    def close_left_open(self, next_seq: Callable[[], int]) -> list[Event]:
        """``end`` events (reason ``restart``) for what the previous run left open; they
        are forgotten here, the caller hands them to the sinks."""
        ends = []
        for event_id, d in sorted(self._left.items(), key=lambda kv: kv[1].get("seq", 0)):
            try:
                start = Event.from_dict(d)
            except TypeError:
                continue
            ends.append(
                Event(
                    type="end",
                    event_id=event_id,
                    seq=next_seq(),
                    label=start.label,
                    score=start.score,
                    peak_score=start.peak_score,
                    start_s=start.start_s,
                    end_s=None,
                    duration_s=None,
                    wall_time=utc_now_iso(),
                    device_id=start.device_id,
                    source=start.source,
                    model=start.model,
                    reason="restart",
                )
            )
        with self._lock:
            for event_id in self._left:
                self._open.pop(event_id, None)
            self._left = {}
        self._save()
        return ends

    def publish(self, event: Event) -> None:
        with self._lock:
            if event.type == "start":
                self._open[event.event_id] = event.to_dict()
            else:
                self._open.pop(event.event_id, None)
        self._save()

    def _save(self) -> None:
        with self._lock:
            text = json.dumps(self._open)
        try:
            write_text_atomic(self.path, text)
        except OSError as e:
            if not self._failed:
                log.error(
                    "cannot save the open-events journal %s (%s): a crash now could leave events without an end",
                    self.path,
                    e.strerror,
                )
            self._failed = True
            return
        self._failed = False


def highest_seq(sinks: Iterable[Sink]) -> int:
    """The highest ``seq`` any sink has on record (outbox, events file)."""
    return max((s.last_seq() for s in sinks), default=0)
