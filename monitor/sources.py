"""Audio sources: microphone (sounddevice), file (soundfile), raw PCM on stdin, network
streams through ffmpeg (``FfmpegSource``), the bundled demo recording.

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
import re
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


FAST_BLOCK_FRAMES = 8192


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
        # unpaced (--fast), nothing waits on a block: larger reads cost fewer calls per second
        n = self.block_frames if self.realtime else max(self.block_frames, FAST_BLOCK_FRAMES)
        try:
            with sf.SoundFile(str(self.path)) as f:
                while not stop.is_set():
                    block = f.read(n, dtype="float32", always_2d=True)
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


URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp", "rtp", "hls", "mms")
STREAM_RATE_HZ = 48000  # what ffmpeg delivers (the pipeline resamples to the model's rate)


def is_stream_url(spec: str) -> bool:
    """A source spec that names a network stream for ffmpeg (rtsp://cam/..., https://...)."""
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.lower() in URL_SCHEMES


# query parameters that carry a credential in camera and stream URLs (?pwd=, &token=, ...)
SECRET_QUERY_KEYS = (
    "password",
    "passwd",
    "pwd",
    "pass",
    "token",
    "access_token",
    "auth",
    "key",
    "api_key",
    "secret",
    "sig",
)
_SECRET_QUERY = re.compile(r"([?&;](?:" + "|".join(SECRET_QUERY_KEYS) + r")=)[^&;#\s'\"]*", re.IGNORECASE)
_USERINFO_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^@/\s]*@")


def redact_url(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host``, and ``?pwd=x`` /
    ``&token=x`` (see SECRET_QUERY_KEYS) -> ``?pwd=***``, wherever they appear
    (descriptions, logs, ffmpeg's messages): camera passwords never reach a log."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", text))


def url_has_secret(url: str) -> bool:
    """Whether a URL carries a password or token that must not appear on a command line."""
    return redact_url(url) != url


def find_ffmpeg() -> str:
    import shutil

    exe = shutil.which("ffmpeg")
    if exe is None:
        raise UserError(
            "stream sources (rtsp://, http://, ...) need ffmpeg, which is not installed: sudo apt-get install ffmpeg"
        )
    return exe


# streams that can deliver faster than real time (a file on a web server): ffmpeg reads
# them at their own pace (-re); a live one arrives at that pace anyway
PACED_SCHEMES = ("http", "https", "hls")
# what ffmpeg may open behind the private input list that hides a URL's credentials
_PROTOCOLS = "file,http,https,tcp,tls,crypto,httpproxy,rtsp,rtsps,rtp,srtp,udp,rtmp,rtmps,srt,hls,mmsh,mmst"
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


class FfmpegSource(Source):
    """A network stream (camera RTSP, HTTP, anything ffmpeg reads) decoded by an ffmpeg
    subprocess to mono s16le at ``STREAM_RATE_HZ`` on a pipe.

    ``run`` returns or raises when ffmpeg exits (the stream broke, the camera rebooted): the
    supervisor then reports the source lost and starts a new ffmpeg with backoff; a stream
    that stops delivering is stalled, closed and restarted the same way. ffmpeg's own
    messages are summarised (how many, the last one, passwords redacted), never echoed.

    HTTP(S) and HLS inputs are read at real-time pace (``-re``): a file on a web server would
    otherwise arrive at network speed and overflow the buffer. An input that is known to be
    whole (ffmpeg states its "Duration", or the server its Content-Length) and was delivered
    whole has ended like a file: ``finished`` is set and the source is not reopened (no replay
    of the same sounds). A URL with a password or token never appears on ffmpeg's command
    line (readable by every local user in ``ps``): an http(s) one is fetched here (basic auth
    from the URL) and piped into ffmpeg; any other is named in a private (0600) input list
    that ffmpeg reads and that is removed once read.
    """

    realtime = True  # a live stream comes at its own pace: windows that fall behind are dropped
    never_block = True  # the reader must keep draining ffmpeg's pipe, or the stream backs up

    def __init__(self, url: str, block_frames: int = 1024, ffmpeg: str | None = None):
        self.url = url
        self.ffmpeg = ffmpeg or find_ffmpeg()
        self.sample_rate_hz = STREAM_RATE_HZ
        self.channels = 1
        self.block_frames = int(block_frames)
        self.description = "stream:" + redact_url(url)
        self.messages = 0
        self.last_message = ""
        self.finished = False
        self.duration_s: float | None = None  # what ffmpeg says the input lasts (None: live / unknown)
        self.hidden = url_has_secret(url)  # the URL goes through a private input list

    @property
    def paced(self) -> bool:
        return self.url.partition("://")[0].lower() in PACED_SCHEMES

    @property
    def fetched_here(self) -> bool:
        """An http(s) URL with credentials: this process fetches it and pipes it to ffmpeg."""
        return self.hidden and self.url.partition("://")[0].lower() in ("http", "https")

    def command(self, input_list: str | None = None) -> list[str]:
        """ffmpeg's arguments; ``input_list``: the private ffconcat file that names the URL."""
        rtsp = self.url.lower().startswith("rtsp")
        if self.fetched_here:
            source = ["-i", "pipe:0"]
        elif input_list is not None:
            source = ["-f", "concat", "-safe", "0", "-protocol_whitelist", _PROTOCOLS, "-i", input_list]
        else:
            source = [*(["-rtsp_transport", "tcp"] if rtsp else []), "-i", self.url]
        return [
            self.ffmpeg,
            "-hide_banner",
            "-nostdin",
            "-nostats",
            "-loglevel",
            "level+info",  # "[error] ..." prefixes: the Duration line is read, only warnings count
            *(["-re"] if self.paced else []),
            *source,
            "-vn",
            "-ac",
            "1",
            "-ar",
            str(STREAM_RATE_HZ),
            "-f",
            "s16le",
            "pipe:1",
        ]

    def _write_input_list(self) -> str:
        """A 0600 ffconcat file naming the URL (credentials stay off the command line)."""
        import tempfile

        fd, path = tempfile.mkstemp(prefix="sound-monitor-input-", suffix=".ffconcat")
        quoted = "'" + self.url.replace("'", "'\\''") + "'"
        lines = ["ffconcat version 1.0", f"file {quoted}"]
        if self.url.lower().startswith("rtsp"):
            lines.append("option rtsp_transport tcp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def _drain_stderr(self, pipe: BinaryIO) -> None:
        for raw in iter(pipe.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            level, _, text = line.partition("] ")
            if not line.startswith("[") or not text:
                level, text = "[error", line
            if level.endswith(("[info", "[verbose", "[debug")):
                m = _DURATION.search(text)
                if m:
                    h, mi, sec = m.groups()
                    self.duration_s = int(h) * 3600 + int(mi) * 60 + float(sec)
                continue
            if text:
                self.messages += 1
                self.last_message = redact_url(text)[:300]

    def _open_http(self) -> tuple[Any, int | None]:
        """The response of an http(s) URL with its credentials as a basic-auth header (never
        on a command line), and its Content-Length (None: a live stream of unknown length)."""
        import base64
        import urllib.error
        import urllib.request
        from urllib.parse import unquote, urlsplit, urlunsplit

        u = urlsplit(self.url)
        headers = {"User-Agent": "sound-monitor"}
        if u.username is not None:
            cred = f"{unquote(u.username)}:{unquote(u.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        netloc = u.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if u.port:
            netloc += f":{u.port}"
        clean = urlunsplit((u.scheme, netloc, u.path, u.query, ""))
        try:
            resp = urllib.request.urlopen(urllib.request.Request(clean, headers=headers), timeout=15)
        except urllib.error.HTTPError as e:
            raise AudioError(f"the server answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise AudioError(f"cannot open the stream: {redact_url(str(reason))}") from None
        length = resp.headers.get("Content-Length")
        return resp, int(length) if length and length.isdigit() else None

    def _feed(self, resp: Any, stdin: BinaryIO, stop: threading.Event, state: dict) -> None:
        """Copy the response into ffmpeg's stdin (its -re read paces this through the pipe)."""
        try:
            while not stop.is_set():
                chunk = resp.read(65536)
                if not chunk:
                    state["eof"] = True
                    break
                stdin.write(chunk)
                state["bytes"] += len(chunk)
        except (OSError, ValueError) as e:  # the connection broke, or ffmpeg went away
            state["error"] = redact_url(str(e))
        finally:
            try:
                stdin.close()
            except OSError:
                pass
            resp.close()

    def _read(self, fd: int, put: Put, stop: threading.Event, input_list: str | None) -> int:
        """ffmpeg's s16le output -> float32 blocks through ``put`` until it closes its output or
        ``stop``; removes the private input list once audio flows (ffmpeg has read it). -> samples."""
        import select

        want = self.block_frames * 2
        pending = b""
        delivered = 0
        try:
            while not stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if not ready:
                    continue
                chunk = os.read(fd, want)
                if not chunk:
                    break  # ffmpeg closed its output: it is exiting
                if input_list is not None:  # ffmpeg has read it: the credentials leave the disk
                    os.unlink(input_list)
                    input_list = None
                pending += chunk
                usable = len(pending) - len(pending) % 2
                if usable:
                    put((np.frombuffer(pending[:usable], dtype="<i2").astype(np.float32) / 32768.0).reshape(-1, 1))
                    delivered += usable // 2
                    pending = pending[usable:]
        finally:
            if input_list is not None:
                os.unlink(input_list)
        return delivered

    def run(self, put: Put, stop: threading.Event) -> None:
        import subprocess

        fetch: dict = {"bytes": 0, "eof": False, "length": None}
        resp = None
        if self.fetched_here:
            resp, fetch["length"] = self._open_http()
        input_list = self._write_input_list() if self.hidden and resp is None else None
        self.duration_s = None
        try:
            proc = subprocess.Popen(
                self.command(input_list),
                stdin=subprocess.PIPE if resp is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except BaseException:
            if input_list is not None:
                os.unlink(input_list)
            if resp is not None:
                resp.close()
            raise
        assert proc.stdout is not None and proc.stderr is not None
        err = threading.Thread(target=self._drain_stderr, args=(proc.stderr,), name="ffmpeg-stderr", daemon=True)
        err.start()
        feeder = None
        if resp is not None:
            assert proc.stdin is not None
            feeder = threading.Thread(
                target=self._feed, args=(resp, proc.stdin, stop, fetch), name="stream-fetch", daemon=True
            )
            feeder.start()
        try:
            delivered = self._read(proc.stdout.fileno(), put, stop, input_list)
            input_list = None  # removed by _read
        finally:
            if input_list is not None and os.path.exists(input_list):
                os.unlink(input_list)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=3)
            err.join(timeout=2)
            if feeder is not None:
                feeder.join(timeout=2)
            proc.stdout.close()
            proc.stderr.close()
        if stop.is_set():
            return
        rc = proc.returncode
        why = f": {self.last_message}" if self.last_message else ""
        if rc != 0:
            raise AudioError(f"ffmpeg exited with status {rc} ({self.messages} message(s)){why}")
        whole_by_length = fetch["length"] is not None and fetch["eof"] and fetch["bytes"] >= fetch["length"]
        whole_by_duration = (
            self.duration_s is not None and delivered >= 0.98 * self.duration_s * STREAM_RATE_HZ - STREAM_RATE_HZ // 10
        )
        if delivered and (whole_by_length or whole_by_duration):
            self.finished = True  # a file served over the network, delivered whole: it has ended


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
