"""Clips sink: the audio around each event saved as a local FLAC/WAV file. Never sent anywhere.

The sink keeps a bounded ring of the recent model-rate audio (``on_audio``). When an event
ends, the audio from ``start_s - pre_s`` to ``end_s + post_s`` (what the ring still holds;
at most ``max_clip_s``) is handed to a writer thread through a bounded queue (a full queue
drops the clip, counted). After every write the folder is kept inside its budget: clips
older than ``max_age_days`` are deleted, then the oldest until the total is at most
``max_total_mb``. Only files this sink names (``clip-*.flac|wav``) are ever deleted. The
folder is created private (0700) and clips are 0600: they are recordings of a home.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np

from monitor.config import ClipsConfig
from monitor.sinks.base import Sink, SinkStatus
from monitor.topics import slugify
from monitor.types import Event

log = logging.getLogger(__name__)

PRE_S = 1.0
POST_S = 1.0
MAX_CLIP_S = 60.0
PATTERNS = ("clip-*.flac", "clip-*.wav")


def enforce_budget(folder: Path, max_total_bytes: float, max_age_s: float, now: float | None = None) -> list[Path]:
    """Delete this sink's clips older than ``max_age_s``, then the oldest beyond the size budget."""
    now = time.time() if now is None else now
    files = []
    for pat in PATTERNS:
        for p in folder.glob(pat):
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, p))
    files.sort()
    deleted = []
    kept = []
    for mtime, size, p in files:
        if now - mtime > max_age_s:
            deleted.append(p)
        else:
            kept.append((mtime, size, p))
    total = sum(s for _, s, _ in kept)
    for _mtime, size, p in kept:
        if total <= max_total_bytes:
            break
        deleted.append(p)
        total -= size
    for p in deleted:
        try:
            p.unlink()
        except OSError as e:
            log.warning("cannot delete old clip %s: %s", p, e)
    return deleted


class ClipsSink(Sink):
    name = "clips"
    wants_audio = True

    def __init__(self, cfg: ClipsConfig, *, ring_s: float = MAX_CLIP_S + 15.0, fmt: str = "flac", queue_size: int = 8):
        self.cfg = cfg
        self.dir = Path(cfg.dir).expanduser()
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            from monitor.errors import UserError

            raise UserError(f"cannot create the clips folder {self.dir}: {e}") from None
        self.fmt = fmt
        self.max_total_bytes = cfg.max_total_mb * 1024 * 1024
        self.max_age_s = cfg.max_age_days * 86400.0
        self.ring_s = float(ring_s)
        self._ring: np.ndarray | None = None  # float32, allocated on the first audio
        self._rate = 0
        self._end_n = 0  # stream sample index just after the newest sample in the ring
        self._filled = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.written: list[Path] = []
        self.dropped = 0
        self.deleted = 0
        self._writer = threading.Thread(target=self._write_loop, name="clips-writer", daemon=True)
        self._writer.start()
        self.deleted += len(enforce_budget(self.dir, self.max_total_bytes, self.max_age_s))

    # -- audio ring (worker thread) -----------------------------------------------------------
    def on_audio(self, start_s: float, samples: np.ndarray, sample_rate_hz: int) -> None:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        start_n = int(round(start_s * sample_rate_hz))
        with self._lock:
            if self._ring is None or sample_rate_hz != self._rate:
                self._rate = int(sample_rate_hz)
                self._ring = np.zeros(int(self.ring_s * self._rate), np.float32)
                self._filled = 0
                self._end_n = start_n
            if start_n != self._end_n:  # a gap in the stream: older audio is not contiguous
                self._filled = 0
                self._end_n = start_n
            cap = self._ring.size
            n_total = x.size
            if x.size > cap:
                x = x[-cap:]
            i = (start_n + n_total - x.size) % cap  # circular write position
            k = min(x.size, cap - i)
            self._ring[i : i + k] = x[:k]
            self._ring[: x.size - k] = x[k:]
            self._end_n = start_n + n_total
            self._filled = min(cap, self._filled + n_total)

    def _cut(self, a_s: float, b_s: float) -> tuple[np.ndarray, float]:
        with self._lock:
            if self._ring is None or self._filled == 0:
                return np.zeros(0, np.float32), a_s
            r = self._rate
            first_n = self._end_n - self._filled
            a = max(int(round(a_s * r)), first_n)
            b = min(int(round(b_s * r)), self._end_n)
            if b - a > int(MAX_CLIP_S * r):
                a = b - int(MAX_CLIP_S * r)  # a very long event: keep its last minute
            if b <= a:
                return np.zeros(0, np.float32), a_s
            return self._ring.take(np.arange(a, b) % self._ring.size), a / r

    # -- events ---------------------------------------------------------------------------
    def _path(self, event: Event) -> Path:
        stamp = event.wall_time.replace(":", "").replace("-", "").replace(".", "")
        return self.dir / f"clip-{stamp}-{slugify(event.label)[:40]}-{event.event_id[:8]}.{self.fmt}"

    def annotate(self, event: Event) -> Event:
        """An end event names the clip this sink writes for it (when it has audio for one)."""
        if event.type != "end" or event.end_s is None or self._filled == 0:
            return event
        return dataclasses.replace(event, clip=str(self._path(event)))

    def publish(self, event: Event) -> None:
        if event.type != "end" or event.end_s is None:
            return
        audio, t0 = self._cut(event.start_s - PRE_S, event.end_s + POST_S)
        if audio.size == 0:
            log.warning("no audio left for the clip of %r (%.1f-%.1f s)", event.label, event.start_s, event.end_s)
            return
        try:
            self._queue.put_nowait((self._path(event), audio, self._rate))
        except queue.Full:
            self.dropped += 1
            log.warning("clip writer is behind: clip of %r dropped", event.label)

    def _write_loop(self) -> None:
        import soundfile as sf

        while True:
            item = self._queue.get()
            if item is None:
                return
            path, audio, rate = item
            tmp = path.with_name("." + path.name + ".part")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    sf.write(f, np.clip(audio, -1.0, 1.0), rate, format=self.fmt.upper(), subtype="PCM_16")
                os.replace(tmp, path)
                self.written.append(path)
                del self.written[:-1000]
                self.deleted += len(enforce_budget(self.dir, self.max_total_bytes, self.max_age_s))
            except Exception as e:  # noqa: BLE001 - a full disk must not stop monitoring
                log.error("cannot write clip %s: %s", path, e)
                try:
                    tmp.unlink()
                except OSError:
                    pass

    def status(self) -> SinkStatus:
        return SinkStatus("ok")

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=10)
        if self._writer.is_alive():
            log.warning("clip writer did not finish within 10 s")
