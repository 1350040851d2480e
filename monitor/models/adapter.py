"""Learned adapters at run time: the adapter file (``Adapter``) and the backend wrapper
(``AdaptedBackend``) that ``run``, ``classify`` and ``eval`` use. Training (WARP, the
nonlinear projection, λ selection) is in monitor/evaluation/training.py; see its docstring for the
notation: F(x, y) = θ̂(x)ᵀ u_y with u_y = Wφ(y) (bilinear) or Vᵀtanh(Uᵀφ(y)) (nonlinear).

The residual kinds keep the backend's zero-shot logit Z(x, y) = s0 · â(x)ᵀ t̂(y) and add a
learned correction: ``reweight`` F = s0 · (â ⊙ e^v)ᵀ t̂, ``residual`` F = Z + θ̂ᵀ W φ(y).
At run time both are again one dot product (times s0): audio â ⊙ e^v against t̂, or the
concatenation [â, θ̂ / s0] against [t̂, Wφ(y)].
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monitor.errors import UserError
from monitor.models.backend import Backend, l2_normalise
from monitor.types import Window

SEMANTIC_SOURCES = ("text", "minilm", "glove")
RESIDUAL_KINDS = ("reweight", "residual")
FORMAT_VERSION = 1


@dataclass
class Adapter:
    """A trained compatibility F(x, y) = θ̂(x)ᵀ u(φ(y)); ``params`` holds W or U, V."""

    kind: str  # bilinear | nonlinear | reweight | residual
    params: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def residual(self) -> bool:
        """Starts from the backend's zero-shot mapping (reweight, residual)."""
        return self.kind in RESIDUAL_KINDS

    @property
    def d_a(self) -> int:
        """Dimension of the acoustic input (for reweight: of the zero-shot audio vector)."""
        if self.kind == "reweight":
            return int(self.params["v"].shape[0])
        return int(self.params["W"].shape[0] if self.kind in ("bilinear", "residual") else self.params["V"].shape[1])

    @property
    def d_s(self) -> int:
        """Dimension of the semantic label input φ (0: reweight uses none)."""
        if self.kind == "reweight":
            return 0
        return int(self.params["W"].shape[1] if self.kind in ("bilinear", "residual") else self.params["U"].shape[0])

    @property
    def zero_shot_scale(self) -> float:
        return float(self.meta.get("zero_shot_scale", 1.0))

    def residual_scores(self, audio: np.ndarray, theta: np.ndarray, labels: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """F [N, C] of a residual adapter: clips' zero-shot audio â and raw θ, classes' t̂ and φ."""
        s0 = self.zero_shot_scale
        a = l2_normalise(np.asarray(audio, dtype=np.float32))
        t = l2_normalise(np.asarray(labels, dtype=np.float32))
        if self.kind == "reweight":
            return s0 * (a * np.exp(self.params["v"]).astype(np.float32)) @ t.T
        return s0 * a @ t.T + self.prep(theta) @ self.label_vectors(phi).T

    def prep(self, theta: np.ndarray) -> np.ndarray:
        """Raw acoustic embeddings [N, d_a] -> θ̂: L2-normalised, centred on the training mean, L2-normalised."""
        t = l2_normalise(np.asarray(theta, dtype=np.float32))
        mu = self.params.get("mu")
        return t if mu is None else l2_normalise(t - mu.astype(np.float32))

    def label_vectors(self, phi: np.ndarray) -> np.ndarray:
        """φ [C, d_s] -> u [C, d_a] so that F(x, y) = θ̂(x)ᵀ u_y."""
        phi = np.asarray(phi, dtype=np.float64)
        if self.kind in ("bilinear", "residual"):
            return (phi @ self.params["W"].T).astype(np.float32)
        return (np.tanh(phi @ self.params["U"]) @ self.params["V"]).astype(np.float32)

    def scores(self, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Raw acoustic embeddings [N, d_a] x φ [C, d_s] -> F [N, C]."""
        return self.prep(theta) @ self.label_vectors(phi).T

    # -- files -------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        if p.suffix != ".npz":
            p = p.with_suffix(".npz")
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.meta, kind=self.kind, format=FORMAT_VERSION, d_a=self.d_a, d_s=self.d_s)
        with open(p, "wb") as f:
            np.savez(
                f,
                meta_json=np.array(json.dumps(meta)),
                **{k: np.asarray(v, np.float32) for k, v in self.params.items()},  # type: ignore[arg-type]  # numpy's stub types **kwds like allow_pickle
            )
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Adapter:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(
                f"adapter file not found: {p} (make one with `sound-monitor eval DATASET --adapter bilinear --save-adapter {p}`)"
            )
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta_json"]))
                params = {k: np.asarray(z[k], dtype=np.float64) for k in z.files if k != "meta_json"}
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
            raise UserError(f"{p} is not a sound-monitor adapter file ({type(e).__name__}: {e})") from None
        kind = meta.get("kind")
        need = {"bilinear": {"W"}, "nonlinear": {"U", "V"}, "reweight": {"v"}, "residual": {"W", "mu"}}.get(kind)
        if need is None or not need <= set(params) or meta.get("format") != FORMAT_VERSION:
            raise UserError(f"{p}: unsupported adapter (kind {kind!r}, format {meta.get('format')!r})")
        return cls(kind, params, meta)

    def sha256(self) -> str:
        h = hashlib.sha256(self.kind.encode())
        for k in sorted(self.params):
            h.update(k.encode() + np.ascontiguousarray(self.params[k], dtype=np.float32).tobytes())
        return h.hexdigest()


def parse_semantic(spec: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in spec.split("+") if p.strip())
    bad = [p for p in parts if p not in SEMANTIC_SOURCES]
    if not parts or bad:
        raise UserError(f"--semantic {spec!r}: use text, minilm, glove or a '+' combination such as minilm+glove")
    return parts


def _template_regex(template: str) -> re.Pattern:
    a, b = template.split("{}", 1)
    return re.compile("^" + re.escape(a) + "(.+?)" + re.escape(b) + "$", re.DOTALL)


class AdaptedBackend(Backend):
    """A backend whose audio vectors are θ̂(x) and whose label vectors are u_y (see module doc).

    Drop-in for the Scorer, ``run`` and ``classify``: ``logit_scale * (θ̂ @ u.T)`` is the
    calibrated compatibility. Prompts rendered with a template the adapter was trained
    with are reduced to the label itself for the minilm/glove sources. Streaming goes
    through the base backend's ``prepare`` (its per-stream front-end) when θ is the base's
    audio embedding; θ from audio features embeds the windows' samples.
    """

    normalise_labels = False

    def __init__(self, base: Backend, adapter: Adapter, glove_dir: str | os.PathLike | None = None):
        meta = adapter.meta
        if meta.get("backend_cache_key") not in (None, base.cache_key):
            raise UserError(
                f"this adapter was trained for model {meta.get('backend_name', '?')} "
                f"({str(meta.get('backend_cache_key'))[:16]}…), not {base.name}; train one for this model with `eval --save-adapter`"
            )
        self.base = base
        self.adapter = adapter
        self.semantic = meta.get("semantic", "text")
        self.theta_kind = meta.get("theta", "audio")
        self.templates = tuple(meta.get("templates", ()))
        self._regexes = [_template_regex(t) for t in self.templates]
        self._glove_dir = glove_dir
        self.name = f"{base.name}+{adapter.kind}"
        self.sample_rate_hz = base.sample_rate_hz
        self.window_s = base.window_s
        self.crop_s = base.crop_s
        self.embedding_dim = adapter.d_a
        self.logit_scale = float(meta.get("logit_scale", 1.0))
        if adapter.kind == "reweight":
            self.embedding_dim = base.embedding_dim
        elif adapter.kind == "residual":
            self.embedding_dim = base.embedding_dim + adapter.d_a
        if adapter.residual:  # scores stay on the zero-shot scale: thresholds keep their meaning
            self.logit_scale = adapter.zero_shot_scale
        self.label_norm = float(meta.get("label_norm", 1.0))
        self.cache_key = f"{base.cache_key}-{adapter.kind}-{adapter.sha256()[:16]}"
        self.has_label_semantics = base.has_label_semantics
        self.prompt_templates = base.prompt_templates
        if self.theta_kind == "features" and not base.has_audio_features:
            raise UserError(f"this adapter needs {meta.get('backend_name')}'s audio features; {base.name} has none")

    @property
    def prototype_key(self) -> str:
        return self.base.prototype_key  # prototypes are the base model's audio embeddings

    def prepare(self, windows: Sequence[Window], stream: str) -> np.ndarray:
        if self.theta_kind == "audio" or self.adapter.kind == "reweight":
            return self.base.prepare(windows, stream)
        return super().prepare(windows, stream)

    def embed_prepared(self, rows: np.ndarray) -> np.ndarray:
        if self.adapter.residual and (self.theta_kind == "audio" or self.adapter.kind == "reweight"):
            return self._residual_audio(self.base.embed_prepared(rows), None)
        if self.theta_kind == "audio":
            return self.adapter.prep(self.base.embed_prepared(rows))
        return self.embed_audio(rows)

    def _residual_audio(self, audio: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """The run-time audio vector of a residual adapter (see the module doc)."""
        a = l2_normalise(audio)
        if self.adapter.kind == "reweight":
            return a * np.exp(self.adapter.params["v"]).astype(np.float32)
        theta = self.adapter.prep(a if features is None else features) / np.float32(self.adapter.zero_shot_scale)
        return np.concatenate([a, theta], axis=1).astype(np.float32)

    def end_stream(self, stream: str) -> None:
        self.base.end_stream(stream)

    def embed_label_semantics(self, texts: Sequence[str]) -> np.ndarray:
        return self.base.embed_label_semantics(texts)

    def embed_audio(self, batch: np.ndarray) -> np.ndarray:
        if self.adapter.kind == "reweight" or (self.adapter.residual and self.theta_kind == "audio"):
            return self._residual_audio(self.base.embed_audio(batch), None)
        if self.adapter.residual:
            audio, features = self.base.embed_audio_and_features(batch)
            return self._residual_audio(audio, features)
        if self.theta_kind == "features":
            return self.adapter.prep(self.base.embed_audio_features(batch))
        return self.adapter.prep(self.base.embed_audio(batch))

    def _label_of(self, text: str) -> str:
        for rx in self._regexes:
            m = rx.match(text)
            if m:
                return m.group(1)
        return text

    def embed_text(self, prompts: Sequence[str]) -> np.ndarray:
        prompts = list(prompts)
        if not prompts:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        if self.adapter.residual:
            t = l2_normalise(self.base.embed_text(prompts))
            if self.adapter.kind == "reweight":
                return t
            return np.concatenate([t, self.adapter.label_vectors(self._phi(prompts))], axis=1).astype(np.float32)
        return self.adapter.label_vectors(self._phi(prompts))

    def _phi(self, prompts: list[str]) -> np.ndarray:
        """The semantic label vectors φ the adapter was trained with."""
        parts = []
        for src in parse_semantic(self.semantic):
            if src == "text":
                parts.append(self.base.embed_text(prompts))
            elif src == "minilm":
                parts.append(self.base.embed_label_semantics([self._label_of(p) for p in prompts]))
            else:
                from monitor.models.offline.glove import Glove

                parts.append(Glove.load(self._glove_dir).embed([self._label_of(p) for p in prompts]))
        phi = np.concatenate([l2_normalise(p) for p in parts], axis=1) / np.sqrt(len(parts))
        if phi.shape[1] != self.adapter.d_s:
            raise UserError(
                f"adapter expects {self.adapter.d_s}-d semantic vectors, {self.semantic} gives {phi.shape[1]}"
            )
        return phi

    def release_text(self) -> None:
        self.base.release_text()


def maybe_adapt(backend: Backend, adapter_path: str | os.PathLike | None) -> Backend:
    """Wrap ``backend`` with the adapter at ``adapter_path`` (None: unchanged)."""
    if not adapter_path:
        return backend
    return AdaptedBackend(backend, Adapter.load(adapter_path))
