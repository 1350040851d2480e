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
import tempfile
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from monitor.backend import Backend, l2_normalise
from monitor.config import DEFAULT_TEMPLATE, LabelConfig

log = logging.getLogger(__name__)

LabelLike = Union[LabelConfig, str]


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
            self._vectors = {str(t): v for t, v in zip(texts, vectors)}
        except Exception as e:  # noqa: BLE001 - any unreadable cache is just a miss
            log.warning("ignoring unreadable label cache %s: %s", self.path, e)
            self._vectors = {}

    def get(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {t: self._vectors[t] for t in texts if t in self._vectors}

    def put(self, new: dict[str, np.ndarray]) -> None:
        if not new:
            return
        self._vectors.update({t: np.asarray(v, dtype=np.float32) for t, v in new.items()})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            texts = list(self._vectors)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".label-cache-", suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, texts=np.array(texts, dtype=str), vectors=np.stack([self._vectors[t] for t in texts]))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("cannot write label cache %s: %s", self.path, e)


def embed_texts(backend: Backend, texts: Sequence[str], cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Embeddings of distinct texts, from the cache where possible; returns {text: [D]}."""
    unique = list(dict.fromkeys(texts))
    cache = TextEmbeddingCache(cache_dir, backend.cache_key) if cache_dir is not None else None
    found = cache.get(unique) if cache else {}
    missing = [t for t in unique if t not in found]
    if missing:
        vecs = backend.embed_text(missing)
        new = dict(zip(missing, vecs))
        if cache:
            cache.put(new)
        found.update(new)
    return found


def label_embeddings(
    backend: Backend,
    labels: Sequence[LabelLike],
    templates: Sequence[str] = (DEFAULT_TEMPLATE,),
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """L2-normalised label embeddings [L, D], in the order of ``labels``."""
    per_label = [label_texts(lab, templates) for lab in labels]
    vectors = embed_texts(backend, [t for texts in per_label for t in texts], cache_dir)
    if not per_label:
        return np.zeros((0, backend.embedding_dim), dtype=np.float32)
    means = np.stack([np.mean([vectors[t] for t in texts], axis=0) for texts in per_label])
    return l2_normalise(means)


def softmax_scores(audio: np.ndarray, label_vectors: np.ndarray, logit_scale: float) -> np.ndarray:
    """Softmax over labels of ``logit_scale * cos``: audio [B, D], labels [L, D] -> [B, L]."""
    logits = float(logit_scale) * (np.asarray(audio, dtype=np.float64) @ np.asarray(label_vectors, dtype=np.float64).T)
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)
