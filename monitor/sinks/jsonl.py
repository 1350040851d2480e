"""JSON-lines sinks: events (``--events``) and per-window scores (``--scores``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from monitor.errors import UserError
from monitor.sinks.base import Sink
from monitor.types import Event, Scores


def _open(path: str) -> tuple[TextIO, bool]:
    if path == "-":
        return sys.stdout, False
    p = Path(path).expanduser()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        return open(p, "a", encoding="utf-8"), True
    except OSError as e:
        raise UserError(f"cannot open {p} for writing: {e}") from None


class JsonlEventSink(Sink):
    name = "jsonl"

    def __init__(self, path: str):
        self.path = path
        self._f, self._owned = _open(path)
        self.written = 0

    def publish(self, event: Event) -> None:
        self._f.write(event.to_json() + "\n")
        self._f.flush()
        self.written += 1

    def status(self) -> dict:
        return {"state": "ok", "written": self.written}

    def close(self) -> None:
        if self._owned:
            self._f.close()


class JsonlScoresSink(Sink):
    name = "scores"

    def __init__(self, path: str, with_source: bool = False):
        self._f, self._owned = _open(path)
        self.with_source = with_source

    def publish(self, event: Event) -> None:
        pass

    def on_scores(self, scores: Scores) -> None:
        self._f.write(scores.to_json_line(self.with_source) + "\n")
        self._f.flush()  # one line per source per hop: cheap, and `tail -f` sees it at once

    def close(self) -> None:
        self._f.flush()
        if self._owned:
            self._f.close()
