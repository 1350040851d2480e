"""Audio sources: microphone (sounddevice), file (soundfile), raw PCM on stdin.

Every source subclasses ``Source``, which declares what the rest of the run may ask of it:
``sample_rate_hz``, ``channels``, ``description``, the abilities ``realtime`` and
``never_block``, ``finished``, and ``run(put, stop)``, which delivers float32
[frames, channels] blocks through ``put`` until the audio ends or ``stop`` is set.
sounddevice is imported only here and only when a microphone is used, so files and stdin
work without PortAudio.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from monitor.errors import AudioError, UserError

log = logging.getLogger(__name__)

Put = Callable[[np.ndarray], object]


class Source:
    """What a source is and declares (class defaults; a source overrides what differs).

    - ``realtime``: the audio arrives at the pace of the world (microphone, a file replayed
      at real-time pace); a worker that falls behind drops whole windows rather than lag.
    - ``never_block``: ``put`` is called from an audio callback and must never wait (a full
      buffer drops the oldest audio, counted); otherwise ``put`` waits for room and nothing
      is lost.
    - ``finished``: set by a restartable source whose programme is over, so the supervisor
      ends the run instead of reopening it.
    """

    sample_rate_hz: int
    channels: int = 1
    description: str = "source"
    realtime: bool = False
    never_block: bool = False
    finished: bool = False

    def run(self, put: Put, stop: threading.Event) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class SourceSlot:
    """One source of a run: the source, its unique name, and how to reopen it after a loss
    (``None``: it cannot be reopened and resumes by itself, or ends)."""

    source: Source
    name: str
    reopen: Callable[[], Source] | None = None


def import_sounddevice() -> Any:
    try:
        import sounddevice as sd  # lazily: PortAudio may be missing
    except OSError as e:
        raise UserError(
            f"PortAudio is not available ({e}); install it with `sudo apt-get install libportaudio2`"
        ) from None
    except ImportError:
        raise UserError("the sounddevice package is missing: pip install sounddevice") from None
    return sd


def list_input_devices() -> list[dict]:
    sd = import_sounddevice()
    out = []
    for i, d in enumerate(sd.query_devices()):
        if d.get("max_input_channels", 0) > 0:
            out.append(
                {
                    "index": i,
                    "name": d["name"],
                    "channels": d["max_input_channels"],
                    "default_rate_hz": int(d["default_samplerate"]),
                }
            )
    return out


def has_input_device() -> bool:
    try:
        return bool(list_input_devices())
    except UserError:
        return False
    except Exception:  # noqa: BLE001 - PortAudio errors of any kind mean "no device"
        return False


class MicSource(Source):
    """sounddevice InputStream; the callback only copies the block and enqueues it."""

    def __init__(
        self,
        device: int | str | None = None,
        sample_rate_hz: int | None = None,
        channels: int = 1,
        block_frames: int = 1024,
    ):
        sd = import_sounddevice()
        try:
            info = sd.query_devices(device, "input")
        except Exception as e:  # noqa: BLE001 - PortAudio's errors have no common type
            raise UserError(f"no usable input device {device!r}: {e}") from None
        self._sd = sd
        self.device = device
        self.sample_rate_hz = int(sample_rate_hz or info["default_samplerate"])
        self.channels = int(channels)
        self.block_frames = int(block_frames)
        self.description = f"mic:{info['name']}"
        self.status_flags = 0  # callbacks that reported overflow or other status
        self.realtime = True
        self.never_block = True  # the audio callback must never wait

    def callback(self, indata: np.ndarray, frames: int, time_info: object, status: object) -> None:
        """sounddevice's callback signature; copy + enqueue, nothing more."""
        if status:
            self.status_flags += 1
        self._put(indata.copy())

    def run(self, put: Put, stop: threading.Event) -> None:
        from monitor.audio_io import quiet_stderr

        self._put = put
        with quiet_stderr():  # ALSA and PortAudio print their own failure lines on fd 2
            stream = self._sd.InputStream(
                device=self.device,
                samplerate=self.sample_rate_hz,
                channels=self.channels,
                blocksize=self.block_frames,
                dtype="float32",
                callback=self.callback,
            )
        with stream:
            while not stop.wait(0.2):
                if not stream.active:
                    raise AudioError("the microphone stream stopped (device lost?)")


class AbsentSource(Source):
    """A microphone that is not there (yet): its ``run`` fails at once, so the supervisor
    reports it ``lost`` and reopens the real one with backoff until it appears (a USB
    microphone that is not ready at boot). It never produces audio."""

    def __init__(self, description: str, sample_rate_hz: int, channels: int, reason: str):
        self.description = description
        self.sample_rate_hz = int(sample_rate_hz)
        self.channels = int(channels)
        self.reason = reason
        self.realtime = True
        self.never_block = True

    def run(self, put: Put, stop: threading.Event) -> None:
        raise AudioError(self.reason)


class FileSource(Source):
    """An audio file in blocks; real-time pace unless ``realtime=False`` (``--fast``)."""

    def __init__(self, path: str | Path, block_frames: int = 1024, realtime: bool = True):
        from monitor.audio_io import open_check

        p = Path(path)
        info = open_check(p)
        self.path = p
        self.sample_rate_hz = int(info.samplerate)
        self.channels = int(info.channels)
        self.block_frames = int(block_frames)
        self.realtime = realtime
        self.description = f"file:{p.name}"

    def run(self, put: Put, stop: threading.Event) -> None:
        import soundfile as sf

        t0 = time.monotonic()
        sent = 0
        try:
            with sf.SoundFile(str(self.path)) as f:
                while not stop.is_set():
                    block = f.read(self.block_frames, dtype="float32", always_2d=True)
                    if len(block) == 0:
                        break
                    put(block)
                    sent += len(block)
                    if self.realtime:
                        ahead = sent / self.sample_rate_hz - (time.monotonic() - t0)
                        if ahead > 0 and stop.wait(ahead):
                            break
        except sf.LibsndfileError as e:
            raise AudioError(f"error while decoding {self.path}: {e}") from None


class ArraySource(Source):
    """In-memory audio (demo recording, tests), same pacing rules as a file."""

    def __init__(
        self,
        samples: np.ndarray,
        sample_rate_hz: int,
        description: str,
        block_frames: int = 1024,
        realtime: bool = True,
    ):
        self.samples = np.asarray(samples, dtype=np.float32).reshape(len(samples), -1)
        self.sample_rate_hz = int(sample_rate_hz)
        self.channels = self.samples.shape[1]
        self.block_frames = int(block_frames)
        self.realtime = realtime
        self.description = description

    def run(self, put: Put, stop: threading.Event) -> None:
        t0 = time.monotonic()
        for a in range(0, len(self.samples), self.block_frames):
            if stop.is_set():
                break
            put(self.samples[a : a + self.block_frames])
            if self.realtime:
                ahead = (a + self.block_frames) / self.sample_rate_hz - (time.monotonic() - t0)
                if ahead > 0 and stop.wait(ahead):
                    break


class StdinSource(Source):
    """Raw interleaved PCM (s16le or f32le) on stdin, e.g. from arecord or ffmpeg."""

    def __init__(
        self,
        sample_rate_hz: int,
        channels: int = 1,
        fmt: str = "s16le",
        block_frames: int = 1024,
        stream: BinaryIO | None = None,
    ):
        self.sample_rate_hz = int(sample_rate_hz)
        self.channels = int(channels)
        self.fmt = fmt
        self.block_frames = int(block_frames)
        self.realtime = False  # paced by whoever writes to the pipe
        self.description = f"stdin:{fmt}@{self.sample_rate_hz}"
        self._stream = stream
        self._dtype = np.dtype("<i2") if fmt == "s16le" else np.dtype("<f4")

    def _reader(self, stream: BinaryIO, want: int, stop: threading.Event) -> Callable[[], bytes | None]:
        """A read function that returns b"" at EOF and None when ``stop`` was set.

        A real pipe is read with select + os.read on its descriptor: the read never blocks
        for more than 0.2 s (so stop is honoured and a stalled writer does not pin the
        thread), and no lock of sys.stdin's buffered reader is held at interpreter exit.
        """
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        if fd is None:
            return lambda: None if stop.is_set() else stream.read(want)
        import select

        def read() -> bytes | None:
            while not stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    return os.read(fd, want)
            return None

        return read

    def run(self, put: Put, stop: threading.Event) -> None:
        stream = self._stream or sys.stdin.buffer
        frame_bytes = self._dtype.itemsize * self.channels
        want = self.block_frames * frame_bytes
        pending = b""
        read = self._reader(stream, want, stop)
        while not stop.is_set():
            chunk = read()
            if not chunk:
                break
            pending += chunk
            usable = len(pending) - len(pending) % frame_bytes
            if usable == 0:
                continue
            raw = np.frombuffer(pending[:usable], dtype=self._dtype).reshape(-1, self.channels)
            pending = pending[usable:]
            if self._dtype.kind == "i":
                block = raw.astype(np.float32) / 32768.0
            else:
                block = raw.astype(np.float32)
            put(block)


def demo_source(block_frames: int = 1024, realtime: bool = True) -> ArraySource:
    """The bundled demo recording: the animal clips one after another with 1 s gaps."""
    from monitor.audio_io import read_audio

    demo = Path(__file__).resolve().parent / "demo"
    rate = 48000
    parts = []
    for p in sorted(demo.glob("*.mp3")):
        parts.append(read_audio(p, rate).samples)
        parts.append(np.zeros(rate, dtype=np.float32))
    if not parts:
        raise UserError(f"the bundled demo recordings are missing from {demo}")
    return ArraySource(np.concatenate(parts), rate, "demo:bundled-animals", block_frames, realtime)
