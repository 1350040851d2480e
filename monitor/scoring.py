"""Scorer: audio embeddings -> per-label scores in [0, 1].

- ``softmax``: softmax of ``logit_scale * cos`` over the labels (the reference pipeline's
  exclusive semantics: scores sum to 1).
- ``vs-background``: each label on its own, softmax over [label, background prompts...];
  the label's share. Several sounds can be active at once and a threshold means the same
  for every label.

Vetoes (monitor/models/vetoes.py): a window does not count for a label (``VetoCheck.beats``,
monitor/events.py) when one of its vetoes matches it. A text veto matches when it is as like
the window as the label is, less ``scoring.veto_margin`` (cosine; 0: a tie is enough); it is
scored like a label. A veto clip matches when the window is the same sound heard again: at
least ``1 - scoring.veto_clip_margin`` like one of the clip's windows (cut at the run's hop,
so one of them is the window that fired) on which the label was on (at least half its peak
on the clip: not the room tone around the sound), and ``scoring.veto_own_margin`` nearer to it
than every such window of the label's own clips (``examples``, and ``confirmed``: "yes, that
was LABEL" on the web page), when it has any -- one nearest neighbour between the two sides.
Audio is far closer to audio than to text,
so a clip is compared with windows, not with the label. With ``scoring.veto_competes`` the
text vetoes also join the label's competitors (its share of [label, background prompts...,
vetoes...], or with ``softmax`` of [labels..., vetoes...]), so its score falls as a veto
comes near. A veto far from the window changes nothing: a threshold keeps its meaning. A
veto is one more vector: it adds no model run per window.

Label, background and veto embeddings are computed once (prompt ensembling, disk cache).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from monitor.config import LabelConfig, ScoringConfig
from monitor.models.backend import Backend
from monitor.models.vetoes import Veto
from monitor.numeric import softmax
from monitor.types import VetoCheck

# a veto clip is cut into windows this far apart (the run's default hop), so that one of
# them is the window that fired; the veto ties with the label on the most label-like one
VETO_CLIP_HOP_S = 1.0


class Scorer:
    def __init__(
        self,
        backend: Backend,
        labels: Sequence[LabelConfig],
        cfg: ScoringConfig,
        cache_dir: str | os.PathLike | None = None,
        label_matrix: np.ndarray | None = None,
        vetoes: Mapping[str, Sequence[Veto]] | None = None,
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
        self._veto_setup(backend, labels, vetoes or {}, cfg, cache_dir)
        # the text encoder only builds these vectors; a monitor that keeps it resident pays
        # ~1 GB of RSS for nothing (a reload with new labels loads it again)
        backend.release_text()

    def _veto_setup(
        self,
        backend: Backend,
        labels: Sequence[LabelConfig],
        vetoes: Mapping[str, Sequence[Veto]],
        cfg: ScoringConfig,
        cache_dir: str | os.PathLike | None,
    ) -> None:
        """The vetoes of every label as one matrix [M, D] (each veto once), which label each
        one applies to ([L, M]) and its logit offset for that label ([L, M]: clips only)."""
        from monitor.models.labels import prompt_vectors
        from monitor.models.prototypes import clip_window_embeddings

        unique: dict[str, Veto] = {}
        for name in self.labels:
            for v in vetoes.get(name, ()):
                unique.setdefault(v.key, v)
        items = list(unique.values())
        dim = self.label_emb.shape[1] if self.label_emb.ndim == 2 else backend.embedding_dim
        # every veto clip's windows at the run's hop (one of them is the window that fired),
        # side by side [K, D]; ``clip_starts`` marks where each clip's rows begin
        rows: list[np.ndarray] = []
        starts: list[int] = []
        owners: list[int] = []
        for j, v in enumerate(items):
            if v.clip is not None:
                starts.append(int(sum(r.shape[0] for r in rows)))
                owners.append(j)
                rows.append(clip_window_embeddings(backend, v.clip, cache_dir, hop_s=VETO_CLIP_HOP_S))
        self.vetoes: tuple[Veto, ...] = ()
        self.clip_windows = np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, dim))
        self.clip_starts = np.array(starts, dtype=np.intp)
        self.clip_owner = np.array(owners, dtype=np.intp)  # the veto column of each clip
        # per label, the clip windows that are the false alarm: those where the label scores
        # at least half its peak on that clip (not the room tone before and after it)
        raw = self.score(self.clip_windows) if rows else np.zeros((0, len(self.labels)))  # [K, L]
        ends = [*starts[1:], len(self.clip_windows)]
        self.clip_window_on = np.zeros((len(self.labels), len(self.clip_windows)), dtype=bool)  # [L, K]
        for a, b in zip(starts, ends):
            self.clip_window_on[:, a:b] = _on(raw[a:b]).T
        # per label, what it is known to sound like: the windows of its own clips (examples,
        # and confirmed: "yes, that was LABEL") on which it is on. A clip veto wins only where
        # it is nearer than all of them (one nearest neighbour between the two sides)
        pos_rows: list[np.ndarray] = []
        pos_owner: list[int] = []
        if rows:
            for i, lab in enumerate(labels):
                own = (*lab.examples, *lab.confirmed)
                if not own or not any(v.clip is not None for v in vetoes.get(lab.name, ())):
                    continue
                for path in own:
                    w = clip_window_embeddings(backend, path, cache_dir, hop_s=VETO_CLIP_HOP_S)
                    keep = w[_on(self.score(w)[:, i])]
                    pos_rows.append(keep)
                    pos_owner.extend([i] * len(keep))
        self.own_windows = np.concatenate(pos_rows).astype(np.float64) if pos_rows else np.zeros((0, dim))
        self.own_window_of = np.zeros((len(self.labels), len(self.own_windows)), dtype=bool)  # [L, P]
        self.own_window_of[np.array(pos_owner, dtype=np.intp), np.arange(len(pos_owner))] = True
        self.vetoes = tuple(items)
        self.veto_margin = np.array(
            [cfg.veto_margin if v.clip is None else cfg.veto_clip_margin for v in items], dtype=np.float64
        )  # [M] cosine
        self.veto_competes = bool(cfg.veto_competes)
        self.veto_own_margin = float(cfg.veto_own_margin)
        col = {v.key: j for j, v in enumerate(items)}
        self.veto_mask = np.zeros((len(self.labels), len(items)), dtype=bool)
        for i, name in enumerate(self.labels):
            for v in vetoes.get(name, ()):
                self.veto_mask[i, col[v.key]] = True
        self.veto_emb = np.zeros((len(items), dim), np.float32)  # text vetoes' vectors (clips: 0)
        self.veto_is_clip = np.array([v.clip is not None for v in items], dtype=bool)  # [M]
        texts = [v.text for v in items if v.text is not None]
        if texts:
            tv = prompt_vectors(backend, texts, cfg.templates, cache_dir)
            for j, v in enumerate(items):
                if v.text is not None:
                    self.veto_emb[j] = tv[v.text]

    @property
    def has_vetoes(self) -> bool:
        return bool(self.vetoes)

    def score_window(self, audio_emb: np.ndarray) -> tuple[tuple[float, ...], dict[str, VetoCheck]]:
        """One window's [D] embedding -> (its scores, per label with vetoes its ``VetoCheck``)."""
        if not self.has_vetoes:
            return tuple(float(x) for x in self.score(audio_emb[None, :])[0]), {}
        final, raw, best, beats = self.score_detail(audio_emb[None, :])
        checks = {}
        for i, name in enumerate(self.labels):
            if self.veto_mask[i].any():
                v = self.vetoes[int(best[0, i])]
                checks[name] = VetoCheck(v.name, round(float(raw[0, i]), 6), bool(beats[0, i]))
        return tuple(float(x) for x in final[0]), checks

    def score(self, audio_emb: np.ndarray) -> np.ndarray:
        """[N, D] normalised audio embeddings -> [N, L] scores (vetoes included)."""
        if self.has_vetoes:
            return self.score_detail(audio_emb)[0]
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

    def score_detail(self, audio_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """[N, D] -> (scores with the vetoes [N, L], scores without them [N, L], each label's
        strongest veto (index into ``vetoes``) [N, L], whether it beats the label [N, L]).

        Every score is the label's share against its competitors C (the background prompts,
        or the other labels with ``softmax``), in logs: sigmoid(l - log sum exp C); the
        vetoes only add to C."""
        a = np.atleast_2d(np.asarray(audio_emb, dtype=np.float32)).astype(np.float64)
        scale = self.logit_scale
        logits = scale * (a @ self.label_emb.T.astype(np.float64)) + self.label_offsets  # [N, L]
        with np.errstate(divide="ignore"):
            if self.method == "softmax":
                m = logits.max(axis=1, keepdims=True)
                e = np.exp(logits - m)
                comp = np.log(np.maximum(e.sum(axis=1, keepdims=True) - e, 0.0)) + m  # the other labels
            else:
                assert self.background_emb is not None
                bg = scale * (a @ self.background_emb.T.astype(np.float64))  # [N, K]
                comp = np.broadcast_to(_logsumexp(bg, axis=1)[:, None], logits.shape)
            best, beats, with_vetoes = self._veto_terms(a, logits, comp)
        raw = _sigmoid(logits - comp)
        final = _sigmoid(logits - with_vetoes)
        return final.astype(np.float32), raw.astype(np.float32), best, beats

    def _veto_terms(
        self, a: np.ndarray, logits: np.ndarray, comp: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (each label's strongest veto [N, L], whether a veto beats it [N, L], its
        competitors' log-sum, with the text vetoes when they compete [N, L]).

        How far each veto reaches past what it needs, in cosine units (>= 0: it beats the
        label): a text veto, its similarity less the label's plus ``veto_margin``; a clip, its
        nearest window's similarity less ``1 - veto_clip_margin`` or, when higher, less the
        similarity of the label's own nearest example window plus ``veto_own_margin``."""
        shape = logits.shape
        if not self.vetoes:
            return np.zeros(shape, int), np.zeros(shape, bool), comp
        scale = self.logit_scale
        v = scale * (a @ self.veto_emb.T.astype(np.float64))  # [N, M] (text vetoes)
        reach = (v[:, None, :] - logits[:, :, None]) / scale + self.veto_margin[None, None, :]  # [N, L, M]
        if len(self.clip_owner):
            cos = np.where(self.clip_window_on[None, :, :], (a @ self.clip_windows.T)[:, None, :], -np.inf)
            near = np.maximum.reduceat(cos, self.clip_starts, axis=2)  # [N, L, clips]
            need = np.broadcast_to((1.0 - self.veto_margin[self.clip_owner])[None, None, :], near.shape)
            if len(self.own_windows):
                own = np.where(self.own_window_of[None, :, :], (a @ self.own_windows.T)[:, None, :], -np.inf)
                # nearer than the label's own sound, by veto_own_margin
                need = np.maximum(need, own.max(axis=2)[:, :, None] + self.veto_own_margin)
            reach[:, :, self.clip_owner] = near - need
        reach = np.where(self.veto_mask[None, :, :], reach, -np.inf)
        beats = reach.max(axis=2) >= 0.0
        with_vetoes = comp
        if self.veto_competes:
            text = self.veto_mask & ~self.veto_is_clip[None, :]
            masked = np.where(text[None, :, :], v[:, None, :], -np.inf)
            with_vetoes = np.logaddexp(comp, _logsumexp(masked, axis=2))
        return reach.argmax(axis=2), beats, with_vetoes


def _on(raw: np.ndarray) -> np.ndarray:
    """The windows of one clip (rows of ``raw``, scores [W] or [W, L]) on which a label is on:
    at least half its peak on that clip (the sound, not the room tone around it)."""
    return raw >= 0.5 * raw.max(axis=0, keepdims=True)


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m).squeeze(axis)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))
