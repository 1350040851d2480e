"""Label embeddings for any Backend: prompts x templates, averaged, cached on disk.

A label has prompts (default: its name); each prompt is put in every template
(``"This is a sound of {}."``); all texts are embedded, averaged (prompt ensembling) and the
mean is L2-normalised. With one prompt and one template this is exactly the text embedding
the reference pipeline uses.

Text embeddings are cached per exact text under ``<cache_dir>/<backend.cache_key>.npz``,
so a restart (or a changed label list) only encodes texts it has not seen with these
weights. A cache that cannot be read is ignored and rewritten; writes are atomic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from monitor.config import DEFAULT_TEMPLATE, LabelConfig
from monitor.files import atomic_savez
from monitor.models.backend import Backend, l2_normalise

if TYPE_CHECKING:
    from monitor.models.prototypes import PrototypeStore

log = logging.getLogger(__name__)

LabelLike = LabelConfig | str


def label_name(label: LabelLike) -> str:
    return label if isinstance(label, str) else label.name


def label_texts(label: LabelLike, templates: Sequence[str] = (DEFAULT_TEMPLATE,)) -> list[str]:
    """The texts whose mean embedding represents the label: every prompt in every template."""
    if isinstance(label, str):
        prompts: Sequence[str] = (label,)
    else:
        prompts = label.prompts or (label.name,)
    if not templates:
        raise ValueError("at least one template is needed")
    return [t.format(p) for p in prompts for t in templates]


class TextEmbeddingCache:
    """{text: embedding} for one backend (``cache_key``), persisted as one .npz file."""

    def __init__(self, cache_dir: str | os.PathLike, cache_key: str):
        self.path = Path(cache_dir).expanduser() / f"{cache_key}.npz"
        self._vectors: dict[str, np.ndarray] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            with np.load(self.path, allow_pickle=False) as z:
                texts, vectors = z["texts"], z["vectors"]
            if texts.ndim != 1 or vectors.ndim != 2 or len(texts) != len(vectors) or vectors.shape[1] == 0:
                raise ValueError(f"shape {vectors.shape} for {texts.shape} texts")
            if not np.isfinite(vectors).all():
                raise ValueError("non-finite vectors")
            self._vectors = {str(t): v.astype(np.float32) for t, v in zip(texts, vectors)}
        except Exception as e:  # noqa: BLE001 - any unreadable cache is just a miss
            log.warning("ignoring unreadable label cache %s: %s", self.path, e)
            self._vectors = {}

    def get(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {t: self._vectors[t] for t in texts if t in self._vectors}

    def discard(self) -> None:
        self._vectors = {}

    def put(self, new: dict[str, np.ndarray]) -> None:
        if not new:
            return
        self._vectors.update({t: np.asarray(v, dtype=np.float32) for t, v in new.items()})
        try:
            texts = list(self._vectors)
            atomic_savez(
                self.path,
                ".label-cache-",
                texts=np.array(texts, dtype=str),
                vectors=np.stack([self._vectors[t] for t in texts]),
            )
        except OSError as e:
            log.warning("cannot write label cache %s: %s", self.path, e)


def embed_texts(
    backend: Backend, texts: Sequence[str], cache_dir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
    """Embeddings of distinct texts, from the cache where possible; returns {text: [D]}."""
    unique = list(dict.fromkeys(texts))
    cache = TextEmbeddingCache(cache_dir, backend.cache_key) if cache_dir is not None else None
    found = cache.get(unique) if cache else {}
    if cache and found:
        dim = next(iter(found.values())).shape[-1]
        if dim != backend.embedding_dim:  # text vectors live in the audio embedding space
            log.warning(
                "label cache %s holds %d-d vectors, the model's are %d-d: embedding every text afresh",
                cache.path,
                dim,
                backend.embedding_dim,
            )
            cache.discard()
            found = {}
    missing = [t for t in unique if t not in found]
    if missing:
        vecs = backend.embed_text(missing)
        new = dict(zip(missing, vecs))
        if cache:
            cache.put(new)
        found.update(new)
    return found


def prompt_vectors(
    backend: Backend,
    prompts: Sequence[str],
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """{prompt: its vector} for bare prompts (veto sounds): every template, averaged and
    normalised like a text label's, never looked up among enrolled labels."""
    if not backend.prompt_templates:
        templates = ("{}",)
    per = {p: [t.format(p) for t in templates] for p in prompts}
    vectors = embed_texts(backend, [t for texts in per.values() for t in texts], cache_dir)
    out = {}
    for p, texts in per.items():
        v = np.mean([vectors[x] for x in texts], axis=0)
        out[p] = l2_normalise(v) if backend.normalise_labels else np.asarray(v, dtype=np.float32)
    return out


def label_embeddings(
    backend: Backend,
    labels: Sequence[LabelLike],
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """L2-normalised label embeddings [L, D], in the order of ``labels``.

    Labels taught by example clips (``examples:`` in the config, or enrolled with
    ``sound-monitor enroll`` into ``<state_dir>/prototypes``, found next to ``cache_dir``)
    use their audio prototype; a label with both explicit ``prompts`` and examples uses
    the normalised sum of its text and prototype vectors (see ``monitor.models.prototypes``).
    A backend with ``normalise_labels = False`` (a learned adapter) keeps vector norms;
    one with ``prompt_templates = False`` (the offline backend) gets each prompt bare.
    """
    if not labels:
        return np.zeros((0, backend.embedding_dim), dtype=np.float32)
    protos = _prototypes(backend, labels, cache_dir)
    if not backend.prompt_templates:
        templates = ("{}",)  # the backend matches the bare label text itself
    per_label = [
        label_texts(lab, templates) if (i not in protos or _has_prompts(lab)) else [] for i, lab in enumerate(labels)
    ]
    vectors = embed_texts(backend, [t for texts in per_label for t in texts], cache_dir)
    normalise = backend.normalise_labels
    proto_norm = float(backend.label_norm)
    out = []
    for i, texts in enumerate(per_label):
        t = np.mean([vectors[x] for x in texts], axis=0) if texts else None
        if t is not None and normalise:
            t = l2_normalise(t)
        p = protos[i] * proto_norm if i in protos else None
        if t is not None and p is not None:
            v = (t + p) / 2.0
        else:
            v = t if t is not None else p
        out.append(l2_normalise(v) if normalise else np.asarray(v, dtype=np.float32))
    return np.stack(out).astype(np.float32)


def label_offsets(
    backend: Backend,
    labels: Sequence[LabelLike],
    label_vecs: np.ndarray,
    background_vecs: np.ndarray | Callable[[], np.ndarray],
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Per label, the logit offset that makes a label taught by example score like a text label.

    An audio prototype is far closer to every clip than a text label is (audio vectors share
    much; a text label's is sparse), so uncalibrated it fires on almost anything. Its offset
    is chosen so that its *typical example* -- the median, over its example clips, of each
    clip's margin against the prototype made without it (leave-one-out) -- sits exactly at
    the background's level: margin(x, v) = logit_scale · x·v − log Σ_k exp(logit_scale · x·b_k)
    over the background prompts b_k (``scoring.background``), i.e. score 0.5 in vs-background
    scoring. Measured on uiowa-dev (scripts/measure_prototypes.py): false alarms on other
    classes' clips as rare as a text label's. Text labels get 0. A single example (one
    window) cannot be left out: its own margin is used. A stored prototype whose clips are
    gone keeps offset 0 (logged).
    """
    out = np.zeros(len(labels), dtype=np.float32)
    members = _prototype_members(backend, labels, templates, cache_dir)
    if not members:
        return out
    scale = float(backend.logit_scale)
    bg = np.asarray(background_vecs() if callable(background_vecs) else background_vecs, dtype=np.float64)

    def margin(x: np.ndarray, v: np.ndarray) -> float:
        z = scale * (x @ bg.T)
        m = z.max()
        return float(scale * (x @ v) - (m + np.log(np.exp(z - m).sum())))

    for i, (m_vecs, text_vec) in members.items():
        if m_vecs is None:
            log.warning(
                "label %r: its example clips are gone; its score is not calibrated (enroll it again)",
                label_name(labels[i]),
            )
            continue
        m_vecs = np.asarray(m_vecs, dtype=np.float64)
        margins = []
        for j in range(len(m_vecs)):
            rest = np.delete(m_vecs, j, axis=0) if len(m_vecs) > 1 else m_vecs
            v = l2_normalise(rest.mean(axis=0)).astype(np.float64)
            if text_vec is not None:
                v = l2_normalise((text_vec + v * float(backend.label_norm)) / 2.0).astype(np.float64)
            margins.append(margin(m_vecs[j], v))
        out[i] = -float(np.median(margins))
    return out


def _prototype_members(
    backend: Backend, labels: Sequence[LabelLike], templates: Sequence[str], cache_dir: str | os.PathLike | None
) -> dict[int, tuple[np.ndarray | None, np.ndarray | None]]:
    """{label index: (unit member vectors [m, D] or None, its unit text vector or None)} for
    labels taught by example: a member per example clip (its mean window embedding), or per
    window when there is one clip."""
    from monitor.models.prototypes import PrototypeStore, clip_windows, embed_files, store_dir_for_cache

    out: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {}
    state_dir = store_dir_for_cache(cache_dir)
    store = PrototypeStore(state_dir, backend.prototype_key) if state_dir is not None else None
    for i, lab in enumerate(labels):
        files: list[Path] = [Path(e).expanduser() for e in (() if isinstance(lab, str) else lab.examples)]
        if not files:
            entry = store.find(label_name(lab)) if store is not None else None
            if entry is None:
                continue
            files = [Path(f) for f in entry.get("files", ())]
            if not files or not all(f.is_file() for f in files):
                out[i] = (None, None)
                continue
        if len(files) > 1:
            m = embed_files(backend, files, "audio", cache_dir)
        else:
            from monitor.audio_io import read_audio

            x = read_audio(files[0], backend.sample_rate_hz).samples
            m = backend.embed_audio(clip_windows(x, backend.sample_rate_hz, backend.window_s))
        text = None
        if _has_prompts(lab):
            texts = label_texts(lab, templates if backend.prompt_templates else ("{}",))
            vecs = embed_texts(backend, texts, cache_dir)
            text = l2_normalise(np.mean([vecs[t] for t in texts], axis=0))
        out[i] = (l2_normalise(m), text)
    return out


def _has_prompts(label: LabelLike) -> bool:
    return not isinstance(label, str) and bool(label.prompts)


def _prototypes(
    backend: Backend, labels: Sequence[LabelLike], cache_dir: str | os.PathLike | None
) -> dict[int, np.ndarray]:
    """{label index: unit prototype} for labels with examples or an enrolled prototype."""
    from monitor.models.prototypes import PrototypeStore, prototype, store_dir_for_cache

    out: dict[int, np.ndarray] = {}
    state_dir = store_dir_for_cache(cache_dir)
    store = PrototypeStore(state_dir, backend.prototype_key) if state_dir is not None else None
    for i, lab in enumerate(labels):
        examples = () if isinstance(lab, str) else lab.examples
        if examples:
            missing = [e for e in examples if not Path(e).expanduser().is_file()]
            if missing:
                from monitor.errors import UserError

                raise UserError(f"label {label_name(lab)!r}: example clip not found: {missing[0]}")
            out[i] = prototype(backend, [Path(e).expanduser() for e in examples], cache_dir)
            continue
        entry = store.find(label_name(lab)) if store is not None else None
        if entry is None and store is not None:
            entry = _adopt(backend, store, label_name(lab), cache_dir)
        if entry is None:
            continue
        if backend.prototype_key == backend.cache_key:  # stored in this backend's own space
            v = np.asarray(entry.get("vector", ()), dtype=np.float32)
            if v.shape == (backend.embedding_dim,):
                out[i] = l2_normalise(v)
        else:
            files = [f for f in entry.get("files", ()) if Path(f).is_file()]
            if files:
                out[i] = prototype(backend, files, cache_dir)
    return out


def _adopt(backend: Backend, store: PrototypeStore, name: str, cache_dir: str | os.PathLike | None) -> dict | None:
    """A label enrolled for another model (e.g. before a model update) is made again in this
    model's space from its clips and kept in this model's store: enrolled labels survive."""
    from monitor.models.prototypes import embed_files

    found = store.find_elsewhere(name)
    if found is None:
        return None
    where, entry = found
    files = [str(f) for f in entry["files"]]
    vec = l2_normalise(embed_files(backend, files, "audio", cache_dir).mean(axis=0))
    store.put(name, vec, files, int(entry.get("n_windows", len(files))))
    log.info("label %r (enrolled for another model, %s) made again from its %d clip(s)", name, where.name, len(files))
    return store.find(name)


def softmax_scores(
    audio: np.ndarray, label_vectors: np.ndarray, logit_scale: float, offsets: np.ndarray | None = None
) -> np.ndarray:
    """Softmax over labels of ``logit_scale * cos`` (+ per-label ``offsets``, see
    ``label_offsets``): audio [B, D], labels [L, D] -> [B, L]."""
    from monitor.numeric import softmax

    logits = float(logit_scale) * (np.asarray(audio, dtype=np.float64) @ np.asarray(label_vectors, dtype=np.float64).T)
    if offsets is not None:
        logits = logits + np.asarray(offsets, dtype=np.float64)
    return softmax(logits)
