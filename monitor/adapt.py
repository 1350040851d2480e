"""Learned zero-shot adapters on frozen embeddings: bilinear (WARP) and nonlinear projections.

Notation of the papers: θ(x) ∈ R^d_a is the acoustic embedding of a clip, φ(y) ∈ R^d_s the
semantic embedding of a class label, F(x, y) their compatibility; a clip is assigned the
class with the highest F.

- ``bilinear``: F(x, y) = θ(x)ᵀ W φ(y), W ∈ R^{d_a × d_s}.
- ``nonlinear``: F(x, y) = θ(x)ᵀ Vᵀ tanh(Uᵀ φ(y)), U ∈ R^{d_s × r}, V ∈ R^{r × d_a}, r = d_s.

Both are trained on the seen classes with the weighted approximate-rank pairwise (WARP)
loss, exactly over all training classes (no sampling: class counts are small):

    L = 1/N Σ_n β(r_n)/r_n Σ_{y≠y_n} max(0, Δ + F(x_n, y) − F(x_n, y_n)) + λ‖params‖²

with Δ = 1, r_n the number of classes that violate the margin, β(r) = Σ_{i=1..r} 1/i
(α_i = 1/i), 0/0 = 0. β(r)/r is piecewise constant in the parameters, so the gradient
below is exact wherever no hinge is at its kink. Optimiser: minibatch SGD (batch 32); the
λ‖·‖² term is applied as an exact proximal shrink (stable for every λ). λ is chosen from
{0, 0.01, 1, 10} — and the number of epochs with it — on validation classes; the final
model is refit on training + validation classes with the chosen values.

Both adapters reduce, for a given label, to one vector in acoustic space, u_y = Wφ(y) or
Vᵀtanh(Uᵀφ(y)), so F(x, y) = θ(x)ᵀu_y: at run time an adapter is a backend wrapper
(``AdaptedBackend``) whose audio vectors are θ̂(x) and whose "text" vectors are u_y; the
scorer's ``logit_scale * (audio @ labels.T)`` then computes ``scale * F`` unchanged.
θ̂(x) is the L2-normalised acoustic embedding (the offline backend's 1024-d YAMNet
embedding, CLAP's audio embedding); φ is L2-normalised per source (concatenations are
scaled by 1/sqrt(k) so that they stay unit-norm).

Training runs in numpy (small matrices; no torch needed); scoring is one matrix product.
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

from monitor.backend import Backend, l2_normalise
from monitor.errors import UserError
from monitor.numeric import true_ranks

MARGIN = 1.0
LAMBDAS = (0.0, 0.01, 1.0, 10.0)
BATCH = 32
LEARNING_RATES = {"bilinear": 0.1, "nonlinear": 1e-2}
MAX_EPOCHS = {"bilinear": 100, "nonlinear": 200}
EVAL_EVERY = 10  # epochs between validation checks
PATIENCE = 30  # epochs without a better validation mAP before a λ's run stops
SEMANTIC_SOURCES = ("text", "minilm", "glove")
FORMAT_VERSION = 1


# -- the WARP loss ---------------------------------------------------------------------------------
def rank_weights(r: np.ndarray) -> np.ndarray:
    """β(r)/r with α_i = 1/i (β(r) = harmonic number H_r), and 0 for r = 0."""
    r = np.asarray(r, dtype=np.int64)
    h = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, max(int(r.max(initial=0)), 1) + 1))])
    out = np.zeros(r.shape, dtype=np.float64)
    nz = r > 0
    out[nz] = h[r[nz]] / r[nz]
    return out


def warp_loss(scores: np.ndarray, y: np.ndarray, margin: float = MARGIN) -> tuple[float, np.ndarray]:
    """WARP loss of a batch and its gradient w.r.t. the scores.

    scores [B, C] compatibilities, y [B] the true class index -> (mean loss, dL/dscores [B, C]).
    """
    s = np.asarray(scores, dtype=np.float64)
    b = s.shape[0]
    rows = np.arange(b)
    hinge = margin + s - s[rows, y][:, None]
    hinge[rows, y] = 0.0
    viol = hinge > 0
    r = viol.sum(axis=1)
    w = rank_weights(r)  # [B]
    loss = float((w * np.where(viol, hinge, 0.0).sum(axis=1)).sum() / b)
    grad = viol * (w / b)[:, None]
    grad[rows, y] = -(w * r) / b
    return loss, grad


# -- models ------------------------------------------------------------------------------------------
@dataclass
class Adapter:
    """A trained compatibility F(x, y) = θ̂(x)ᵀ u(φ(y)); ``params`` holds W or U, V."""

    kind: str  # bilinear | nonlinear
    params: dict[str, np.ndarray]
    meta: dict = field(default_factory=dict)

    @property
    def d_a(self) -> int:
        return int(self.params["W"].shape[0] if self.kind == "bilinear" else self.params["V"].shape[1])

    @property
    def d_s(self) -> int:
        return int(self.params["W"].shape[1] if self.kind == "bilinear" else self.params["U"].shape[0])

    def prep(self, theta: np.ndarray) -> np.ndarray:
        """Raw acoustic embeddings [N, d_a] -> θ̂: L2-normalised, centred on the training mean, L2-normalised."""
        t = l2_normalise(np.asarray(theta, dtype=np.float32))
        mu = self.params.get("mu")
        return t if mu is None else l2_normalise(t - mu.astype(np.float32))

    def label_vectors(self, phi: np.ndarray) -> np.ndarray:
        """φ [C, d_s] -> u [C, d_a] so that F(x, y) = θ̂(x)ᵀ u_y."""
        phi = np.asarray(phi, dtype=np.float64)
        if self.kind == "bilinear":
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
        need = {"bilinear": {"W"}, "nonlinear": {"U", "V"}}.get(kind)
        if need is None or not need <= set(params) or meta.get("format") != FORMAT_VERSION:
            raise UserError(f"{p}: unsupported adapter (kind {kind!r}, format {meta.get('format')!r})")
        return cls(kind, params, meta)

    def sha256(self) -> str:
        h = hashlib.sha256(self.kind.encode())
        for k in sorted(self.params):
            h.update(k.encode() + np.ascontiguousarray(self.params[k], dtype=np.float32).tobytes())
        return h.hexdigest()


def _init(kind: str, d_a: int, d_s: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if kind == "bilinear":
        return {"W": np.zeros((d_a, d_s))}  # convex: start at 0
    r = d_s
    return {"U": rng.normal(0.0, 1.0 / np.sqrt(d_s), (d_s, r)), "V": rng.normal(0.0, 1.0 / np.sqrt(r), (r, d_a))}


def _scores_and_grads(kind: str, params, theta: np.ndarray, phi: np.ndarray, y: np.ndarray):
    """Batch loss and parameter gradients (without the λ term)."""
    if kind == "bilinear":
        W = params["W"]
        s = theta @ W @ phi.T
        loss, g = warp_loss(s, y)
        return loss, {"W": theta.T @ g @ phi}
    U, V = params["U"], params["V"]
    h = np.tanh(phi @ U)  # [C, r]
    u = h @ V  # [C, d_a]
    s = theta @ u.T
    loss, g = warp_loss(s, y)
    du = g.T @ theta  # [C, d_a]
    dV = h.T @ du
    dpre = (du @ V.T) * (1.0 - h * h)
    dU = phi.T @ dpre
    return loss, {"U": dU, "V": dV}


def objective(kind: str, params, theta, phi, y, lam: float) -> float:
    """The full training objective (mean WARP loss + λ‖params‖²), for checks."""
    loss, _ = _scores_and_grads(kind, params, theta, phi, y)
    return loss + lam * sum(float((v * v).sum()) for v in params.values())


def gradient(kind: str, params, theta, phi, y, lam: float) -> dict[str, np.ndarray]:
    _, g = _scores_and_grads(kind, params, theta, phi, y)
    return {k: g[k] + 2.0 * lam * params[k] for k in g}


def mean_ap_of_scores(scores: np.ndarray, y: np.ndarray) -> float:
    """mAP of single-label samples = mean of 1/rank of the true class (ties count against)."""
    return float(np.mean(1.0 / true_ranks(scores, y)))


def train(
    kind: str,
    theta: np.ndarray,
    y: np.ndarray,
    phi: np.ndarray,
    lam: float,
    epochs: int,
    seed: int = 0,
    lr: float | None = None,
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    eval_every: int = EVAL_EVERY,
    center: bool = True,
    patience: int = PATIENCE,
) -> tuple[Adapter, list[tuple[int, float]]]:
    """SGD on the WARP objective. theta [N, d_a] raw, y [N] in 0..C-1, phi [C, d_s].

    θ is prepared as in ``Adapter.prep`` with μ = the mean of the training clips' unit θ
    (``center=False``: no centring)

    With ``val = (theta_v, y_v, phi_v)`` returns the validation mAP every ``eval_every`` epochs
    and stops once it has not improved for ``patience`` epochs. float32 throughout.
    """
    if kind not in LEARNING_RATES:
        raise ValueError(f"unknown adapter kind {kind!r}")
    rng = np.random.default_rng(seed)
    unit = l2_normalise(np.asarray(theta, dtype=np.float32))
    mu = unit.mean(axis=0) if center else None
    theta = unit if mu is None else l2_normalise(unit - mu)
    phi = np.asarray(phi, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    params = {k: v.astype(np.float32) for k, v in _init(kind, theta.shape[1], phi.shape[1], rng).items()}
    lr = LEARNING_RATES[kind] if lr is None else lr
    shrink = np.float32(1.0 / (1.0 + 2.0 * lr * lam))  # exact prox of lr·λ‖·‖²
    lr = np.float32(lr)
    best_ep, best_map = 0, -1.0
    curve: list[tuple[int, float]] = []
    n = len(y)
    for ep in range(1, epochs + 1):
        order = rng.permutation(n)
        for a in range(0, n, BATCH):
            idx = order[a : a + BATCH]
            _, g = _scores_and_grads(kind, params, theta[idx], phi, y[idx])
            for k in params:
                params[k] -= lr * g[k].astype(np.float32)
                if lam:
                    params[k] *= shrink
        if val is not None and (ep % eval_every == 0 or ep == epochs):
            ad = Adapter(kind, _with_mu(params, mu))
            curve.append((ep, mean_ap_of_scores(ad.scores(val[0], val[2]), val[1])))
            if curve[-1][1] > best_map + 1e-9:
                best_ep, best_map = ep, curve[-1][1]
            elif ep - best_ep >= patience:
                break
    return Adapter(kind, _with_mu({k: v.copy() for k, v in params.items()}, mu)), curve


def _with_mu(params: dict, mu: np.ndarray | None) -> dict:
    return params if mu is None else dict(params, mu=mu)


@dataclass(frozen=True)
class Fit:
    adapter: Adapter
    lam: float
    epochs: int
    val_map: float


def fit(
    kind: str,
    theta_train: np.ndarray,
    y_train: np.ndarray,
    phi_train: np.ndarray,
    theta_val: np.ndarray,
    y_val: np.ndarray,
    phi_val: np.ndarray,
    seed: int = 0,
    lambdas: Sequence[float] = LAMBDAS,
    max_epochs: int | None = None,
    center: bool = True,
) -> Fit:
    """Choose λ and the epoch count on the validation classes, then refit on train + val.

    Classes: y_train indexes phi_train, y_val indexes phi_val (disjoint class sets).
    """
    max_epochs = max_epochs or MAX_EPOCHS[kind]
    best = (-1.0, 0.0, max_epochs)
    for lam in lambdas:
        _, curve = train(
            kind,
            theta_train,
            y_train,
            phi_train,
            lam,
            max_epochs,
            seed=seed,
            val=(theta_val, y_val, phi_val),
            center=center,
        )
        for ep, m in curve:
            if m > best[0] + 1e-9:
                best = (m, lam, ep)
    val_map, lam, epochs = best
    theta_all = np.concatenate([theta_train, theta_val])
    y_all = np.concatenate([y_train, y_val + len(phi_train)])
    phi_all = np.concatenate([phi_train, phi_val])
    adapter, _ = train(kind, theta_all, y_all, phi_all, lam, epochs, seed=seed, center=center)
    adapter.meta.update(lam=lam, epochs=epochs, val_map=val_map)
    return Fit(adapter, lam, epochs, val_map)


def calibrate_scale(scores: np.ndarray, y: np.ndarray) -> float:
    """The softmax temperature (logit scale) that minimises the cross-entropy on (scores, y)."""
    s = np.asarray(scores, dtype=np.float64)
    best = (np.inf, 1.0)
    for scale in np.geomspace(0.05, 100.0, 60):
        z = scale * s
        z = z - z.max(axis=1, keepdims=True)
        nll = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
        if nll < best[0]:
            best = (nll, float(scale))
    return best[1]


# -- semantic embeddings φ(y) -----------------------------------------------------------------------
def parse_semantic(spec: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in spec.split("+") if p.strip())
    bad = [p for p in parts if p not in SEMANTIC_SOURCES]
    if not parts or bad:
        raise UserError(f"--semantic {spec!r}: use text, minilm, glove or a '+' combination such as minilm+glove")
    return parts


def default_semantic(backend) -> str:
    """MiniLM sentence embeddings for the offline backend, the model's own text encoder otherwise."""
    return "minilm" if backend.has_label_semantics else "text"


def semantic_embeddings(
    backend,
    names: Sequence[str],
    spec: str,
    templates: Sequence[str] = (),
    cache_dir=None,
    glove_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """φ for label names [C, d_s]: each source L2-normalised, concatenated, scaled to unit norm."""
    from monitor.config import DEFAULT_TEMPLATE
    from monitor.labels import label_embeddings

    parts = []
    sources = parse_semantic(spec)
    for src in sources:
        if src == "text":
            parts.append(
                label_embeddings(backend, list(names), tuple(templates) or (DEFAULT_TEMPLATE,), cache_dir=cache_dir)
            )
        elif src == "minilm":
            if not backend.has_label_semantics:
                raise UserError(
                    "--semantic minilm needs the offline backend (--model offline); use --semantic text with CLAP"
                )
            parts.append(backend.embed_label_semantics(list(names)))
        else:
            from monitor.offline.glove import Glove

            parts.append(Glove.load(glove_dir).embed(list(names)))
    phi = np.concatenate([l2_normalise(p) for p in parts], axis=1) / np.sqrt(len(parts))
    return phi.astype(np.float32)


# -- run time --------------------------------------------------------------------------------------
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

    def __init__(self, base, adapter: Adapter, glove_dir=None):
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
        self.label_norm = float(meta.get("label_norm", 1.0))
        self.cache_key = f"{base.cache_key}-{adapter.kind}-{adapter.sha256()[:16]}"
        self.has_label_semantics = base.has_label_semantics
        if self.theta_kind == "features" and not base.has_audio_features:
            raise UserError(f"this adapter needs {meta.get('backend_name')}'s audio features; {base.name} has none")

    @property
    def prototype_key(self) -> str:
        return self.base.prototype_key  # prototypes are the base model's audio embeddings

    def prepare(self, windows, stream: str) -> np.ndarray:
        if self.theta_kind == "audio":
            return self.base.prepare(windows, stream)
        return super().prepare(windows, stream)

    def embed_prepared(self, rows: np.ndarray) -> np.ndarray:
        if self.theta_kind == "audio":
            return self.adapter.prep(self.base.embed_prepared(rows))
        return self.embed_audio(rows)

    def end_stream(self, stream: str) -> None:
        self.base.end_stream(stream)

    def embed_label_semantics(self, texts: Sequence[str]) -> np.ndarray:
        return self.base.embed_label_semantics(texts)

    def embed_audio(self, batch: np.ndarray) -> np.ndarray:
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
        parts = []
        for src in parse_semantic(self.semantic):
            if src == "text":
                parts.append(self.base.embed_text(prompts))
            elif src == "minilm":
                parts.append(self.base.embed_label_semantics([self._label_of(p) for p in prompts]))
            else:
                from monitor.offline.glove import Glove

                parts.append(Glove.load(self._glove_dir).embed([self._label_of(p) for p in prompts]))
        phi = np.concatenate([l2_normalise(p) for p in parts], axis=1) / np.sqrt(len(parts))
        if phi.shape[1] != self.adapter.d_s:
            raise UserError(
                f"adapter expects {self.adapter.d_s}-d semantic vectors, {self.semantic} gives {phi.shape[1]}"
            )
        return self.adapter.label_vectors(phi)

    def release_text(self) -> None:
        self.base.release_text()


def maybe_adapt(backend, adapter_path: str | os.PathLike | None):
    """Wrap ``backend`` with the adapter at ``adapter_path`` (None: unchanged)."""
    if not adapter_path:
        return backend
    return AdaptedBackend(backend, Adapter.load(adapter_path))
