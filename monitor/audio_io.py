"""Reading audio files: wav/flac/mp3/ogg via soundfile, any channel count, any rate; whole
(``read_audio``), checked without reading (``open_check``) or block by block (``stream_audio``).

Returns float32 mono at the requested rate (soxr, high quality). Samples that are NaN or
Inf are replaced by 0 and counted; the caller decides whether to warn. Errors are
``AudioError`` with one clear line naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from monitor.errors import AudioError

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff")


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32 [n], mono
    sample_rate_hz: int
    source_rate_hz: int
    source_channels: int
    nonfinite: int  # NaN/Inf samples replaced by 0


def sanitise(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN/Inf by 0 and count them; returns float32. Values beyond [-1, 1] are kept
    (a float file may exceed full scale; the models see what the file holds)."""
    x = np.asarray(x, dtype=np.float32)
    if np.isfinite(np.sum(x)):  # one cheap pass: a NaN or Inf would make the sum non-finite
        return x, 0
    bad = ~np.isfinite(x)
    n_bad = int(bad.sum())
    if n_bad:
        x = np.where(bad, np.float32(0.0), x)
    return x, n_bad


def downmix(x: np.ndarray) -> np.ndarray:
    """[n] or [n, ch] -> [n] mono (mean of channels)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return x[:, 0]
    return x.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Whole-signal resampling with soxr (VHQ). Streaming uses monitor.stream.resample instead."""
    if from_hz == to_hz or x.size == 0:
        return np.asarray(x, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(x, dtype=np.float32), from_hz, to_hz, quality="VHQ").astype(np.float32, copy=False)


class quiet_stderr:
    """Context: file descriptor 2 goes to /dev/null (libmpg123 inside libsndfile prints its
    warnings there directly, bypassing Python). Only around a decoder's open and first read,
    so that no other thread's log line is lost for long."""

    _saved: int | None

    def __enter__(self) -> quiet_stderr:
        import sys

        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        except OSError:
            self._saved = None
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        return False


def decode_error(p: Path, e: Exception) -> str:
    """One line for a file libsndfile cannot read (its own text can mislead: a garbage file
    that exists is reported as "File does not exist or is not a regular file")."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "does not exist" in msg or "unknown format" in msg.lower() or "not recognised" in msg.lower():
        msg = "not a valid audio file of a supported format (wav, flac, mp3, ogg)"
    return f"cannot decode audio file {p}: {msg}"


def _existing_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it is a non-empty file; else AudioError naming what it is."""
    p = Path(path)
    if not p.exists():
        raise AudioError(f"audio file not found: {p}")
    if p.is_dir():
        raise AudioError(f"expected an audio file, got a directory: {p}")
    if p.stat().st_size == 0:
        raise AudioError(f"audio file is empty (0 bytes): {p}")
    problem = wav_truncation(p)
    if problem:
        raise AudioError(f"audio file is cut off: {p}: {problem}")
    return p


def wav_truncation(p: Path) -> str | None:
    """Why a RIFF/WAVE file holds less audio than its header declares (None: it does not, or
    it is not a WAV). libsndfile quietly reads what is there, so a copy that stopped half-way
    would be monitored or classified as a shorter recording. A data size of 0 or 0xFFFFFFFF
    is what streaming writers put before they know the length: not checked."""
    import struct

    size = p.stat().st_size
    try:
        with open(p, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            pos, block_align, fmt_ok = 12, 1, False
            for _ in range(64):  # a few chunks before "data" (fmt, LIST, fact, ...)
                f.seek(pos)
                chunk = f.read(8)
                if len(chunk) < 8:
                    # a sound format chunk and then the end: a header whose audio is missing
                    # (anything else is not a WAV libsndfile can read: its error says so)
                    return "its header ends before the audio begins" if fmt_ok else None
                cid, n = struct.unpack("<4sI", chunk)
                if cid == b"fmt ":
                    fmt = f.read(min(n, 16))
                    fmt_ok = 16 <= n <= 64 and len(fmt) == 16
                    if fmt_ok:
                        block_align = max(1, struct.unpack("<H", fmt[12:14])[0])
                elif cid == b"data":
                    if n in (0, 0xFFFFFFFF):
                        return None
                    have = max(0, size - (pos + 8))
                    if have + block_align <= n:
                        return f"its header declares {n} bytes of audio, the file holds {have}"
                    return None
                pos += 8 + n + (n & 1)
    except OSError:
        return None  # unreadable: decoding says why
    return None


def open_check(path: str | os.PathLike) -> Any:
    """A file that can be decoded and holds samples -> its soundfile info; else AudioError
    with one line (not found, empty, not audio, no samples). Reads one block, not the file."""
    import soundfile as sf

    p = _existing_file(path)
    try:
        with quiet_stderr():
            info = sf.info(str(p))
            with sf.SoundFile(str(p)) as f:  # a header without samples (empty, truncated)
                first = f.read(1024, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several kinds
        raise AudioError(decode_error(p, e)) from None
    if len(first) == 0:
        raise AudioError(f"audio file has no samples: {p}")
    return info


def read_audio(path: str | os.PathLike, sample_rate_hz: int | None = None) -> Audio:
    """Read an audio file as float32 mono, resampled to ``sample_rate_hz`` when given."""
    import soundfile as sf

    p = _existing_file(path)
    try:
        with quiet_stderr():
            data, rate = sf.read(str(p), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError, EOFError) as e:
        raise AudioError(decode_error(p, e)) from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file has no samples: {p}")
    channels = int(data.shape[1])
    mono, n_bad = sanitise(downmix(data))
    out_rate = int(sample_rate_hz or rate)
    mono = resample(mono, int(rate), out_rate)
    return Audio(mono, out_rate, int(rate), channels, n_bad)


def stream_audio(
    path: str | os.PathLike, sample_rate_hz: int, block_s: float = 2.0
) -> tuple[Any, Generator[np.ndarray, None, int]]:
    """Decode a file block by block -> (info, generator of float32 mono blocks at
    ``sample_rate_hz``), resampled as one stream (soxr VHQ, the quality of ``read_audio``):
    memory stays at a few blocks whatever the file's length. The generator's return value
    (``StopIteration.value``) is the number of NaN/Inf samples replaced by 0."""
    import soundfile as sf

    from monitor.stream.resample import StreamResampler

    p = Path(path)
    try:
        with quiet_stderr():
            info = sf.info(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError, EOFError) as e:
        raise AudioError(decode_error(p, e)) from None

    def blocks() -> Generator[np.ndarray, None, int]:
        rs = StreamResampler(int(info.samplerate), int(sample_rate_hz), quality="VHQ")
        bad = 0
        frames = max(1, int(block_s * info.samplerate))
        try:
            with sf.SoundFile(str(p)) as f:
                while True:
                    data = f.read(frames, dtype="float32", always_2d=True)
                    last = len(data) < frames
                    mono, n_bad = sanitise(downmix(data))
                    bad += n_bad
                    out = rs.process(mono, last=last)
                    if out.size:
                        yield out
                    if last:
                        break
        except sf.LibsndfileError as e:
            raise AudioError(f"error while decoding {p}: {e}") from None
        return bad

    return info, blocks()


def list_audio_files(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
