"""Small persisted state in the state dir: the per-device event sequence number, a lock
that keeps a second monitor of the same device out, and the journal of open events.

Everything here degrades instead of crashing: a state dir that fills up mid-run costs
durability across restarts (loudly reported), never the events of this run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from pathlib import Path

from monitor.errors import UserError
from monitor.files import write_text_atomic
from monitor.topics import device_slug

log = logging.getLogger(__name__)


def state_file(state_dir: str | os.PathLike, stem: str, device_id: str, suffix: str) -> Path:
    """``<state_dir>/<stem>-<device slug><suffix>``: one name rule for every per-device file."""
    return Path(state_dir).expanduser() / f"{stem}-{device_slug(device_id)}{suffix}"


def make_private(state_dir: Path) -> None:
    """The state dir 0700 and everything in it 0600 (folders 0700): it holds undelivered
    events, what the monitor heard and the control values, which are nobody else's. Run at
    every start, so files of an older version (or copied in) are closed too. A folder this
    user does not own is left as it is, with one warning."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
    except OSError as e:
        log.warning("cannot make the state dir %s private (%s): others may read it", state_dir, e.strerror)
        return
    for root, dirs, files in os.walk(state_dir):
        for name in dirs:
            _chmod(Path(root) / name, 0o700)
        for name in files:
            _chmod(Path(root) / name, 0o600)


def _chmod(p: Path, mode: int) -> None:
    try:
        if not p.is_symlink() and (p.stat().st_mode & 0o777) != mode:
            os.chmod(p, mode)
    except OSError:
        pass  # another user's file or a race with a rename: the 0700 folder still closes it


class StateLock:
    """An exclusive ``flock`` on ``<state_dir>/lock-<dev>`` held for the whole run.

    A second monitor with the same device id and state dir would reuse ``seq`` numbers and
    share the outbox; it is refused with one line naming the running one's pid.
    """

    def __init__(self, state_dir: str | os.PathLike, device_id: str):
        import fcntl

        self.path = state_file(state_dir, "lock", device_id, "")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._f = open(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+", encoding="utf-8")
        except OSError as e:
            raise UserError(
                f"the state dir {self.path.parent} is not writable ({e.strerror}): "
                "fix its permissions or set state_dir / SOUND_MONITOR_STATE"
            ) from None
        try:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(f"cannot lock {self.path}: {e.strerror}") from None
            self._f.seek(0)
            pid = self._f.read().strip() or "?"
            self._f.close()
            raise UserError(
                f"another sound-monitor (pid {pid}) is already running for device "
                f"{device_id!r} with the state dir {self.path.parent}: stop it, or give "
                "this one another device_id or state_dir"
            ) from None
        try:
            self._f.seek(0)
            self._f.truncate()
            self._f.write(f"{os.getpid()}\n")
            self._f.flush()
        except OSError:
            pass  # a full disk: the lock holds without the pid in it
        make_private(self.path.parent)

    def release(self) -> None:
        try:
            self._f.close()  # closing the descriptor drops the flock
        except OSError:
            pass


class SeqCounter:
    """Monotonic ``seq`` stored in ``<state_dir>/seq-<device>.json`` (atomic writes).

    It starts after the highest of the file's value and ``floor`` (the highest seq the
    outbox or the events file has seen), so a lost or corrupt file never makes numbers
    repeat. A file that cannot be saved is reported once; numbering goes on in memory.
    """

    def __init__(self, state_dir: str | os.PathLike, device_id: str, floor: int = 0):
        self.path = state_file(state_dir, "seq", device_id, ".json")
        self._legacy_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in device_id) or "device"
        self._lock = threading.Lock()
        self._save_failed = False
        stored = self._load()
        if stored is not None and floor > stored:
            log.warning(
                "%s says seq %d but seq %d was already used: continuing after %d", self.path, stored, floor, floor
            )
        self._last = max(stored or 0, floor)

    def _load(self) -> int | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            legacy = self.path.with_name(f"seq-{self._legacy_name}.json")  # before device slugs
            if legacy == self.path or not legacy.is_file():
                return None
            try:
                text = legacy.read_text(encoding="utf-8")
            except OSError:
                return None
        except OSError as e:
            log.warning(
                "cannot read %s (%s): seq continues from what the outbox and events file saw", self.path, e.strerror
            )
            return None
        try:
            value = int(json.loads(text)["last_seq"])
            if value < 0:
                raise ValueError(value)
            return value
        except (ValueError, KeyError, TypeError):
            log.warning(
                "%s is corrupt (%r): seq continues from what the outbox and events file saw", self.path, text[:40]
            )
            return None

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
            write_text_atomic(self.path, json.dumps({"last_seq": value}))
        except OSError as e:
            if not self._save_failed:
                log.error(
                    "cannot save the event sequence number to %s (%s): numbering continues in "
                    "memory, a restart continues after the outbox's highest seq",
                    self.path,
                    e.strerror,
                )
            self._save_failed = True
            return
        if self._save_failed:
            log.warning("saving the event sequence number to %s works again", self.path)
            self._save_failed = False
