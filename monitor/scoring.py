"""Scorer: audio embeddings -> per-label scores in [0, 1].

- ``softmax``: softmax of ``logit_scale * cos`` over the labels (the reference pipeline's
  exclusive semantics: scores sum to 1).
- ``vs-background``: each label on its own, softmax over [label, background prompts...];
  the label's share. Several sounds can be active at once and a threshold means the same
  for every label.

Label and background embeddings are computed once (prompt ensembling, disk cache).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from monitor.config import LabelConfig, ScoringConfig
from monitor.models.backend import Backend
from monitor.numeric import softmax


class Scorer:
    def __init__(
        self,
        backend: Backend,
        labels: Sequence[LabelConfig],
        cfg: ScoringConfig,
        cache_dir: str | os.PathLike | None = None,
        label_matrix: np.ndarray | None = None,
    ):
        from monitor.models.labels import label_embeddings, label_offsets

        self.method = cfg.method
        self.labels = tuple(l.name for l in labels)
        self.logit_scale = float(backend.logit_scale)
        self.label_emb = (
            label_matrix
            if label_matrix is not None
            else label_embeddings(backend, list(labels), cfg.templates, cache_dir=cache_dir)
        )
        self.background_emb = None
        if self.method == "vs-background":
            self.background_emb = label_embeddings(backend, list(cfg.background), cfg.templates, cache_dir=cache_dir)

        def background() -> np.ndarray:
            if self.background_emb is not None:
                return self.background_emb
            return label_embeddings(backend, list(cfg.background), cfg.templates, cache_dir=cache_dir)

        # labels taught by example are calibrated to score like text labels (monitor/models/labels.py)
        self.label_offsets = (
            np.zeros(len(self.labels), np.float32)
            if label_matrix is not None
            else label_offsets(backend, list(labels), self.label_emb, background, cfg.templates, cache_dir)
        )
        # the text encoder only builds these vectors; a monitor that keeps it resident pays
        # ~1 GB of RSS for nothing (a reload with new labels loads it again)
        backend.release_text()

    def score(self, audio_emb: np.ndarray) -> np.ndarray:
        """[N, D] normalised audio embeddings -> [N, L] scores."""
        a = np.atleast_2d(np.asarray(audio_emb, dtype=np.float32))
        logits = self.logit_scale * (a @ self.label_emb.T) + self.label_offsets  # [N, L]
        if self.method == "softmax":
            return softmax(logits).astype(np.float32)
        assert self.background_emb is not None  # made for vs-background
        bg = self.logit_scale * (a @ self.background_emb.T)  # [N, K]
        # per label: softmax over [label, bg_1..bg_K] -> the label's probability
        logits = logits.astype(np.float64)
        bg = bg.astype(np.float64)
        m = np.maximum(logits, bg.max(axis=1, keepdims=True))  # [N, L], for stability
        num = np.exp(logits - m)
        den = num + np.exp(bg[:, None, :] - m[:, :, None]).sum(axis=2)
        return (num / den).astype(np.float32)
