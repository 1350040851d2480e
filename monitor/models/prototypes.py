"""Whole-clip embeddings, their on-disk cache, and the store of enrolled prototype labels.

Clip embedding (used by ``eval``, ``enroll`` and labels with ``examples:``): the clip is cut
into consecutive windows of the model's ``window_s`` (hop = window_s; the last window ends
at the end of the clip, so it may overlap the one before; a clip no longer than one window
is one window, embedded at its own length as the backend does). The clip's embedding is
the mean of its windows' embeddings. Deterministic, and the windows are the units the
monitor itself scores, so a prototype built from a clip matches what ``run`` sees.

Cache: ``<cache_dir>/clips-<cache_key>-<kind>.npz`` maps ``abs path|size|mtime_ns`` to the
clip's mean embedding (``kind`` = ``audio`` for ``embed_audio``, ``features`` for
``embed_audio_features``). A changed file gets a new key; an unreadable cache is a miss.

Prototype store (``enroll``): ``<state_dir>/prototypes/<cache_key>.json`` =
``{label: {"vector": [...], "files": [...], "n_windows": n}}``; durable, human-readable,
one file per model weights (a prototype only means something in its model's space).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from monitor.files import atomic_savez, write_text_atomic
from monitor.models.backend import Backend, l2_normalise

log = logging.getLogger(__name__)


def clip_windows(samples: np.ndarray, sample_rate_hz: int, window_s: float, hop_s: float | None = None) -> np.ndarray:
    """[n] -> [W, min(n, window)]: windows every ``hop_s`` (default: consecutive), the last
    one ending at the clip's end."""
    x = np.asarray(samples, dtype=np.float32)
    n = int(round(window_s * sample_rate_hz))
    if x.size <= n:
        return x[None, :]
    step = n if hop_s is None else max(1, int(round(hop_s * sample_rate_hz)))
    starts = list(range(0, x.size - n + 1, step))
    if starts[-1] + n < x.size:
        starts.append(x.size - n)
    return np.stack([x[s : s + n] for s in starts])


def embed_windows_mean(backend: Backend, samples: np.ndarray, kind: str = "audio") -> tuple[np.ndarray, int]:
    """One clip -> (mean of its windows' embeddings [D] (not re-normalised), number of windows)."""
    w = clip_windows(samples, backend.sample_rate_hz, backend.window_s)
    if kind == "audio":
        v = backend.embed_audio(w)
    elif kind == "features":
        v = backend.embed_audio_features(w) if backend.has_audio_features else backend.embed_audio(w)
    else:
        raise ValueError(f"unknown embedding kind {kind!r}")
    return np.asarray(v, dtype=np.float32).mean(axis=0), int(w.shape[0])


def file_key(path: str | os.PathLike) -> str:
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


class ClipCache:
    """{file key: mean clip embedding} for one backend and kind, persisted as one .npz."""

    def __init__(self, cache_dir: str | os.PathLike | None, cache_key: str, kind: str):
        self.path = Path(cache_dir).expanduser() / f"clips-{cache_key}-{kind}.npz" if cache_dir else None
        self._vectors: dict[str, np.ndarray] = {}
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    self._vectors = {str(k): v for k, v in zip(z["keys"], z["vectors"])}
            except Exception as e:  # noqa: BLE001 - an unreadable cache is just a miss
                log.warning("ignoring unreadable clip cache %s: %s", self.path, e)

    def get(self, key: str) -> np.ndarray | None:
        return self._vectors.get(key)

    def put(self, key: str, vector: np.ndarray) -> None:
        self._vectors[key] = np.asarray(vector, dtype=np.float32)
        self._dirty = True

    def save(self) -> None:
        if self.path is None or not self._dirty or not self._vectors:
            return
        try:
            keys = list(self._vectors)
            atomic_savez(
                self.path,
                ".clip-cache-",
                keys=np.array(keys, dtype=str),
                vectors=np.stack([self._vectors[k] for k in keys]),
            )
            self._dirty = False
        except OSError as e:
            log.warning("cannot write clip cache %s: %s", self.path, e)


def stderr_progress(label: str) -> Callable[[int, int], None]:
    """A one-line progress indicator on stderr (only when stderr is a terminal or for long runs)."""
    start = time.monotonic()
    tty = sys.stderr.isatty()

    def report(done: int, total: int) -> None:
        if total < 20:
            return
        if tty:
            end = "\n" if done == total else ""
            print(
                f"\r{label}: {done}/{total} clips ({time.monotonic() - start:.0f} s)",
                end=end,
                file=sys.stderr,
                flush=True,
            )
        elif done == total or done % 100 == 0:
            print(f"{label}: {done}/{total} clips ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)

    return report


def embed_files(
    backend: Backend,
    paths: Sequence[str | os.PathLike],
    kind: str = "audio",
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Mean window embeddings of whole files [N, D] (not re-normalised), cached per file."""
    from monitor.audio_io import read_audio

    cache = ClipCache(cache_dir, backend.cache_key, kind)
    out = []
    last_save = time.monotonic()
    for i, p in enumerate(paths):
        key = file_key(p)
        v = cache.get(key)
        if v is None:
            audio = read_audio(p, backend.sample_rate_hz)
            v, _ = embed_windows_mean(backend, audio.samples, kind)
            cache.put(key, v)
            if time.monotonic() - last_save > 30:  # long runs keep their progress
                cache.save()
                last_save = time.monotonic()
        out.append(v)
        if progress is not None:
            progress(i + 1, len(paths))
    cache.save()
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(out).astype(np.float32)


def clip_window_embeddings(
    backend: Backend, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, hop_s: float | None = None
) -> np.ndarray:
    """The unit embeddings of a clip's windows [W, D] (``clip_windows``, every ``hop_s``),
    cached per file and window like the clips' means (a veto clip is read again on every
    reload)."""
    from monitor.audio_io import read_audio

    cache = ClipCache(cache_dir, backend.cache_key, "windows")
    x = read_audio(path, backend.sample_rate_hz).samples
    windows = clip_windows(x, backend.sample_rate_hz, backend.window_s, hop_s)
    hop = "" if hop_s is None else f"@{hop_s:g}"
    keys = [f"{file_key(path)}#{i}/{len(windows)}{hop}" for i in range(len(windows))]
    found = [cache.get(k) for k in keys]
    missing = [i for i, v in enumerate(found) if v is None]
    if missing:
        new = l2_normalise(backend.embed_audio(windows[missing]))
        for i, v in zip(missing, new):
            found[i] = v
            cache.put(keys[i], v)
        cache.save()
    return np.stack([np.asarray(v, np.float32) for v in found])


def prototype(
    backend: Backend, paths: Sequence[str | os.PathLike], cache_dir: str | os.PathLike | None = None
) -> np.ndarray:
    """The label vector taught by example clips: mean of the clips' window embeddings, L2-normalised.

    Each clip weighs the same whatever its length (mean of per-clip means).
    """
    return l2_normalise(embed_files(backend, paths, "audio", cache_dir).mean(axis=0))


# -- enrolled prototypes ---------------------------------------------------------------------------
class PrototypeStore:
    """``<state_dir>/prototypes/<cache_key>.json``: labels enrolled for one model."""

    def __init__(self, state_dir: str | os.PathLike, cache_key: str):
        self.path = Path(state_dir).expanduser() / "prototypes" / f"{cache_key}.json"

    def load(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable prototype store %s: %s", self.path, e)
            return {}

    def find(self, label: str) -> dict | None:
        key = label.casefold()
        for name, entry in self.load().items():
            if name.casefold() == key:
                return entry
        return None

    def find_elsewhere(self, label: str) -> tuple[Path, dict] | None:
        """The label enrolled for *another* model (another store in the same folder) whose
        clips are all still there: after a model update its prototype can be made again."""
        for p in sorted(self.path.parent.glob("*.json")):
            if p == self.path:
                continue
            entry = PrototypeStore(p.parent.parent, p.stem).find(label)
            files = [Path(f) for f in (entry or {}).get("files", ())]
            if entry is not None and files and all(f.is_file() for f in files):
                return p, entry
        return None

    def put(self, label: str, vector: np.ndarray, files: Sequence[str], n_windows: int) -> None:
        data = {k: v for k, v in self.load().items() if k.casefold() != label.casefold()}
        data[label] = {
            "vector": [float(x) for x in np.asarray(vector, dtype=np.float32)],
            "files": [str(f) for f in files],
            "n_windows": int(n_windows),
        }
        write_text_atomic(self.path, json.dumps(data))


def store_dir_for_cache(cache_dir: str | os.PathLike | None) -> Path | None:
    """The state dir that holds ``prototypes/``, given the label cache ``<state_dir>/label-cache``."""
    return Path(cache_dir).expanduser().parent if cache_dir is not None else None
