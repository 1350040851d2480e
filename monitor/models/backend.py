"""The interface every model backend implements, with its optional abilities declared.

A backend maps audio and text into one embedding space:

- ``embed_audio(batch)``: float32 [B, n] mono at ``sample_rate_hz`` -> [B, D], L2-normalised
- ``embed_text(prompts)``: list of P strings -> [P, D], L2-normalised

A label's logit against a window is ``logit_scale * cos(audio, label)``; the scorer turns
logits into scores. Prototype labels (``enroll``) are means of ``embed_audio`` vectors, so
they live in the same space. Heavy imports (onnxruntime, tokenizers) stay in the backend
modules.

Every backend subclasses ``Backend``. What only some can do is declared here once, with a
default that works, so callers ask the backend instead of probing it:

- streaming: ``prepare(windows, stream)`` turns consecutive windows of one stream into the
  model's input rows (CLAP: log-mel features from its per-stream frame cache; default: the
  samples), ``embed_prepared(rows)`` embeds rows of any streams in one call,
  ``end_stream(stream)`` forgets a stream's state;
- ``release_text()`` frees the text encoder once the label vectors are made (no-op default);
- ``has_audio_features`` / ``embed_audio_features(batch)``: pre-projection audio features
  for learned adapters and prototypes; ``has_label_semantics`` /
  ``embed_label_semantics(texts)``: sentence vectors of label names;
- ``crop_s``: long clips are embedded as the mean of consecutive crops of this length
  (None: whole clips); ``normalise_labels`` / ``label_norm``: how label vectors are scaled;
  ``prototype_key``: the cache key prototypes are stored under.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.models.level import LevelNorm
    from monitor.types import Window

import numpy as np


class Backend:
    name: str  # appears in events ("model") and manifests
    sample_rate_hz: int
    window_s: float
    embedding_dim: int
    logit_scale: float
    cache_key: str  # changes whenever the weights change (e.g. sha256 of the ONNX files)
    crop_s: float | None = None
    has_audio_features: bool = False
    has_label_semantics: bool = False
    normalise_labels: bool = True  # a learned adapter keeps its label vectors' norms
    label_norm: float = 1.0  # prototypes are scaled to this norm when labels are not normalised
    # prompts are rendered with the label templates ("This is a sound of {}."); False: the
    # backend maps the bare label text itself (the offline backend's class-text matching)
    prompt_templates: bool = True
    # the level stage (monitor/models/level.py): whether the backend can take one, and whether
    # ``model.level.normalise: auto`` gives it one
    supports_level_norm: bool = False
    level_norm_default: bool = False
    level: LevelNorm | None = None  # the level stage this backend applies to its input
    int8_choice: str = ""  # which encoder ``model.int8: auto`` chose, and why (empty: not asked)

    def embed_audio(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    # -- streaming (the encoder stage) -------------------------------------------------------
    def prepare(self, windows: Sequence[Window], stream: str) -> np.ndarray:
        """Consecutive windows of ``stream`` (``monitor.types.Window``) -> model input rows."""
        return np.stack([np.asarray(w.samples, np.float32) for w in windows])

    def embed_prepared(self, rows: np.ndarray) -> np.ndarray:
        """Rows from ``prepare`` (of one or several streams, equal shape) -> [n, D]."""
        return self.embed_audio(rows)

    def embed_windows(self, windows: Sequence[Window], stream: str = "main") -> np.ndarray:
        """Consecutive windows of one stream -> [n, D] (``embed_audio`` of their samples)."""
        return self.embed_prepared(self.prepare(windows, stream))

    def end_stream(self, stream: str) -> None:
        """``stream`` is over: drop what ``prepare`` kept for it."""

    # -- optional abilities ------------------------------------------------------------------
    def release_text(self) -> None:
        """The label vectors are made: free the text encoder (loaded again when needed)."""

    def embed_audio_features(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no audio features (has_audio_features is False)")

    def embed_audio_and_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(``embed_audio``, ``embed_audio_features``) of one batch; a backend that computes
        both in one pass (the offline backend) overrides this."""
        return self.embed_audio(batch), self.embed_audio_features(batch)

    def embed_label_semantics(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no label semantics (has_label_semantics is False)")

    @property
    def prototype_key(self) -> str:
        return self.cache_key


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)
