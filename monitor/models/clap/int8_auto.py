"""``model.int8: auto``: use the int8 audio encoder where, on this machine, it is clearly
faster than fp32 and agrees with it.

On the first start with a model on a machine, both encoders embed the bundled recordings
cut into windows (real audio): each is timed (median of two timed passes after a warm-up)
and their embeddings compared (the smallest cosine, and whether the top-1 among the
configured labels -- the bundled recordings' own when none are given -- is the same for every
window). int8 is chosen when it takes at most ``FASTER`` of the fp32 time and saves at least
``MIN_SAVING_MS`` per window (a model so small that the saving is noise keeps fp32, whatever a
timing says), and the cosine is at least ``MIN_COSINE`` with every top-1 the same. The
decision is kept next to the model (``int8-choice.json``, one entry per machine: CPU model
and flags, onnxruntime version, thread count), so later starts do not measure
again; the banner says which encoder runs and why. An export without an int8 encoder runs
fp32.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitor.files import write_text_atomic
from monitor.types import Window

log = logging.getLogger(__name__)

FASTER = 0.8  # int8 must take at most this share of the fp32 time
MIN_SAVING_MS = 5.0  # ... and save at least this much per window
MIN_COSINE = 0.99
CHOICE_FILE = "int8-choice.json"


@dataclass(frozen=True)
class Int8Choice:
    int8: bool
    why: str


def machine_key(threads: int) -> str:
    """What the speed of an encoder depends on here: CPU model and flags, onnxruntime, threads."""
    from monitor.models.ort import import_ort

    onnxruntime = import_ort()

    from monitor.machine import cpu_info

    cpu, flags = cpu_info()
    h = hashlib.sha256(f"{cpu}|{flags}|{onnxruntime.__version__}|{threads}".encode()).hexdigest()[:16]
    return f"{cpu} / {threads} threads / {h}"


def decide(t32_ms: float, t8_ms: float, cos_min: float, top1_same: int, n: int) -> Int8Choice:
    """The rule, on measured figures."""
    figures = (
        f"int8 {t8_ms:.0f} ms vs fp32 {t32_ms:.0f} ms per window, cosine >= {cos_min:.4f}, top-1 same {top1_same}/{n}"
    )
    if t8_ms > FASTER * t32_ms or t32_ms - t8_ms < MIN_SAVING_MS:
        return Int8Choice(False, f"fp32: int8 is not clearly faster here ({figures})")
    if cos_min < MIN_COSINE or top1_same < n:
        return Int8Choice(False, f"fp32: int8 disagrees with it ({figures})")
    return Int8Choice(True, f"int8: {figures}")


def _windows(rate: int, window_s: float) -> list[Window]:
    from monitor.audio_io import read_audio
    from monitor.machine import DEMO_DIR as demo

    n = int(window_s * rate)
    out: list[Window] = []
    for p in sorted(demo.glob("*.mp3"))[:6]:
        x = read_audio(p, rate).samples
        x = np.pad(x, (0, max(0, n - x.size)))[:n]
        out.append(Window(len(out), x.astype(np.float32), rate, 0.0, window_s, -20.0))
    return out


def _time_ms(backend: Any, windows: list[Window]) -> tuple[float, np.ndarray]:
    rows = backend.prepare(windows, "int8-auto")
    backend.end_stream("int8-auto")
    backend.embed_prepared(rows[:1])  # warm-up
    times, emb = [], None
    for _ in range(2):
        t = time.perf_counter()
        emb = backend.embed_prepared(rows)
        times.append((time.perf_counter() - t) * 1000.0 / len(windows))
    assert emb is not None
    return float(np.median(times)), np.asarray(emb)


def _kept(entry: object, store: Path) -> Int8Choice | None:
    """A decision kept in ``store``, if it is one this module wrote: ``int8`` a JSON boolean,
    ``why`` text that begins with the encoder it names. A hand-edited entry (``"int8": "yes"``)
    is not trusted: it is reported and measured again, so the banner says what runs."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        entry = {}
    int8, why = entry.get("int8"), entry.get("why")
    if not isinstance(int8, bool) or not isinstance(why, str) or not why.startswith("int8: " if int8 else "fp32: "):
        log.warning("%s: this machine's entry is not a decision this program wrote (measuring again)", store)
        return None
    when = entry.get("when") if isinstance(entry.get("when"), str) else "?"
    return Int8Choice(int8, f"{why} (measured {when}, kept)")


def choose(path: Path, threads: int, spinning: bool, labels: Sequence[str] = ()) -> Int8Choice:
    """Measure (or recall) whether the export at ``path`` should run its int8 encoder here;
    ``labels``: the configured ones, whose top-1 must not change (none: the bundled clips')."""
    from monitor.files import read_manifest
    from monitor.models.clap.encoder import ClapBackend

    manifest = read_manifest(path / "manifest.json")
    if not (manifest.get("audio") or {}).get("int8_file"):
        return Int8Choice(False, "fp32: this export has no int8 encoder (`models fetch clap --int8` adds one)")
    key = machine_key(threads)
    store = path / CHOICE_FILE
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    kept = _kept(known.get(key) if isinstance(known, dict) else None, store)
    if kept is not None:
        return kept
    b32 = ClapBackend.from_dir(path, threads=threads, int8=False, spinning=spinning)
    b8 = ClapBackend.from_dir(path, threads=threads, int8=True, spinning=spinning)
    wins = _windows(b32.sample_rate_hz, b32.window_s)
    t32, e32 = _time_ms(b32, wins)
    t8, e8 = _time_ms(b8, wins)
    a, b = e32 / np.linalg.norm(e32, axis=1, keepdims=True), e8 / np.linalg.norm(e8, axis=1, keepdims=True)
    cos_min = float(np.min(np.sum(a * b, axis=1)))
    from monitor.machine import DEMO_DIR

    names = list(dict.fromkeys(labels)) or [p.stem for p in sorted(DEMO_DIR.glob("*.mp3"))]
    t = b32.embed_text(names) if len(names) > 1 else b32.embed_text([*names, "background noise"])
    top1_same = int(np.sum(np.argmax(a @ t.T, axis=1) == np.argmax(b @ t.T, axis=1)))
    choice = decide(t32, t8, cos_min, top1_same, len(wins))
    entry = {"int8": choice.int8, "why": choice.why, "when": time.strftime("%Y-%m-%d", time.gmtime()), "labels": names}
    try:
        write_text_atomic(store, json.dumps({**(known if isinstance(known, dict) else {}), key: entry}, indent=1))
    except OSError as e:
        log.warning("cannot keep the int8 decision in %s (%s): it is measured again at the next start", store, e)
    return choice
