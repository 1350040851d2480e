"""JSON-lines sinks: events (``--events``) and per-window scores (``--scores``).

Lines are written whole: a write that the disk cuts short is undone (the file is
truncated back), kept and written again with the next line, so a reader never meets half
a line. A file that ends in half a line from an earlier crash gets a newline first. A
failing file is reported once when it fails and once when it works again; the monitor
goes on.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path

from monitor.errors import UserError
from monitor.sinks.base import Sink, SinkStatus
from monitor.types import Event, Scores

log = logging.getLogger(__name__)

MAX_PENDING_LINES = 10000  # lines kept for a file that cannot be written (oldest dropped first)


class LineFile:
    """Append-only JSON-lines file (or stdout for ``-``) that never leaves half a line."""

    def __init__(self, path: str, what: str):
        self.path = path
        self.what = what
        self._fd: int | None
        self._pending: list[str] = []
        self._newline_first = False  # the file ends in an earlier run's half line
        self._failing = False
        self.dropped = 0
        self.written = 0
        if path == "-":
            self._fd = None
            return
        p = Path(path).expanduser()
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot open {p} for writing: {e.strerror}") from None
        self._repair(p)

    def _repair(self, p: Path) -> None:
        """A last line without its newline (a crash or a full disk mid-write): end it."""
        assert self._fd is not None
        try:
            size = os.fstat(self._fd).st_size
            if size == 0:
                return
            with open(p, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    log.warning(
                        "%s ended in an incomplete line (an earlier run was cut off): new lines start after it", p
                    )
                    self._newline_first = True
        except OSError:
            pass

    def last_lines(self, max_bytes: int = 65536) -> list[str]:
        """The file's last complete lines (for the highest seq it holds)."""
        if self._fd is None:
            return []
        try:
            with open(Path(self.path).expanduser(), "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                tail = f.read()
        except OSError:
            return []
        return tail.decode("utf-8", "replace").split("\n")[1 if size > max_bytes else 0 :]

    def write(self, line: str) -> None:
        self._pending.append(line)
        if len(self._pending) > MAX_PENDING_LINES:
            n = len(self._pending) - MAX_PENDING_LINES
            del self._pending[:n]
            self.dropped += n
        try:
            self._write_all(self._data())
        except OSError as e:
            if not self._failing:
                log.error(
                    "cannot write %s to %s (%s): lines are kept and written when it works again",
                    self.what,
                    self.path,
                    e.strerror or e,
                )
            self._failing = True
            return
        self.written += len(self._pending)
        self._pending.clear()
        self._newline_first = False
        if self._failing:
            log.warning("writing %s to %s works again", self.what, self.path)
        self._failing = False

    def _data(self) -> bytes:
        text = "".join(s + "\n" for s in self._pending)
        return (("\n" if self._newline_first else "") + text).encode("utf-8")

    def _write_all(self, data: bytes) -> None:
        if self._fd is None:
            sys.stdout.write(data.decode("utf-8"))
            sys.stdout.flush()
            return
        start = os.fstat(self._fd).st_size
        try:
            n = os.write(self._fd, data)
            if n != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            try:
                os.ftruncate(self._fd, start)  # take back the part that made it
            except OSError:
                pass
            raise

    @property
    def failing(self) -> bool:
        return self._failing

    def close(self) -> None:
        if self._pending:
            try:
                self._write_all(self._data())
                self._pending.clear()
            except OSError:
                log.error("%d line(s) of %s could not be written to %s", len(self._pending), self.what, self.path)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class JsonlEventSink(Sink):
    name = "jsonl"

    def __init__(self, path: str):
        self.path = path
        self._file = LineFile(path, "events")

    @property
    def written(self) -> int:
        return self._file.written

    def publish(self, event: Event) -> None:
        self._file.write(event.to_json())

    def last_seq(self) -> int:
        best = 0
        for line in self._file.last_lines():
            try:
                best = max(best, int(json.loads(line)["seq"]))
            except (ValueError, KeyError, TypeError):
                continue
        return best

    def status(self) -> SinkStatus:
        return SinkStatus("write failing" if self._file.failing else "ok")

    def close(self) -> None:
        self._file.close()


class JsonlScoresSink(Sink):
    name = "scores"

    def __init__(self, path: str, with_source: bool = False):
        self._file = LineFile(path, "scores")
        self.with_source = with_source

    def publish(self, event: Event) -> None:
        pass

    def on_scores(self, scores: Scores) -> None:
        # one line per source per hop: cheap, and `tail -f` sees it at once
        self._file.write(scores.to_json_line(self.with_source))

    def status(self) -> SinkStatus:
        return SinkStatus("write failing" if self._file.failing else "ok")

    def close(self) -> None:
        self._file.close()
