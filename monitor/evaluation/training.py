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
What ``run`` needs at run time (``Adapter`` files, ``AdaptedBackend``) lives in
monitor/models/adapter.py, apart from this training code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitor.errors import UserError
from monitor.models.adapter import (
    FORMAT_VERSION,
    SEMANTIC_SOURCES,
    AdaptedBackend,
    Adapter,
    maybe_adapt,
    parse_semantic,
)
from monitor.models.backend import l2_normalise
from monitor.numeric import true_ranks

__all__ = ["FORMAT_VERSION", "SEMANTIC_SOURCES", "Adapter", "AdaptedBackend", "maybe_adapt", "parse_semantic"]

MARGIN = 1.0
LAMBDAS = (0.0, 0.01, 1.0, 10.0)
BATCH = 32
LEARNING_RATES = {"bilinear": 0.1, "nonlinear": 1e-2}
MAX_EPOCHS = {"bilinear": 100, "nonlinear": 200}
EVAL_EVERY = 10  # epochs between validation checks
PATIENCE = 30  # epochs without a better validation mAP before a λ's run stops


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


# -- residual adapters: the zero-shot mapping plus a regularised correction -------------------------
# Learned from scratch on ~80 clips, the bilinear and nonlinear maps above lose to the
# untrained zero-shot mapping. These two start *at* it and learn only a correction, with
# "no adaptation" (λ = ∞) in the validation grid, so the chosen adapter is never worse than
# none on the validation classes. Z(x, y) = s0 · â(x)ᵀ t̂(y) is the zero-shot logit (â the
# backend's unit audio vector, t̂ its unit label vector, s0 its logit scale).
#
# - ``reweight``:  F(x, y) = s0 · (â(x) ⊙ e^v)ᵀ t̂(y), v ∈ R^D (per audio dimension: for the
#   offline backend a per-AudioSet-class re-weighting), penalty λ‖v‖².
# - ``residual``:  F(x, y) = Z(x, y) + θ̂(x)ᵀ W φ(y) (a bilinear term on the acoustic and
#   semantic embeddings, W = 0 at the start), penalty λ‖W‖².
RESIDUAL_KINDS = ("reweight", "residual")
RESIDUAL_LAMBDAS = (np.inf, 10.0, 1.0, 0.1, 0.01)  # ∞ first: ties keep "no adaptation"
RESIDUAL_LR = {"reweight": 0.05, "residual": 0.05}
RESIDUAL_EPOCHS = 100


@dataclass(frozen=True)
class ResidualData:
    """One set of clips and classes for a residual adapter: â [N, D] and θ (raw) [N, d_a] of
    the clips, y [N], t̂ [C, D] and φ [C, d_s] of the classes."""

    audio: np.ndarray
    theta: np.ndarray
    y: np.ndarray
    labels: np.ndarray
    phi: np.ndarray

    def part(self, classes: Sequence[int], y_all: np.ndarray) -> ResidualData:
        """The clips of ``classes`` (indices into labels/phi), y re-indexed 0..len-1."""
        m = np.isin(y_all, classes)
        rm = {c: j for j, c in enumerate(classes)}
        return ResidualData(
            self.audio[m], self.theta[m], np.array([rm[v] for v in y_all[m]]), self.labels[classes], self.phi[classes]
        )


def _residual_grad(kind: str, params: dict, a, th, t, phi, y, s0: float) -> dict[str, np.ndarray]:
    if kind == "reweight":
        w = np.exp(params["v"])
        _, g = warp_loss(s0 * (a * w) @ t.T, y)
        return {"v": s0 * w * ((a.T @ g) * t.T).sum(axis=1)}
    _, g = warp_loss(s0 * a @ t.T + th @ params["W"] @ phi.T, y)
    return {"W": th.T @ g @ phi}


def train_residual(
    kind: str,
    data: ResidualData,
    s0: float,
    lam: float,
    epochs: int,
    seed: int = 0,
    val: ResidualData | None = None,
    eval_every: int = EVAL_EVERY,
) -> tuple[Adapter, list[tuple[int, float]]]:
    """SGD on the WARP objective of a residual adapter; λ = ∞ returns "no adaptation"."""
    rng = np.random.default_rng(seed)
    a = l2_normalise(np.asarray(data.audio, dtype=np.float32))
    unit = l2_normalise(np.asarray(data.theta, dtype=np.float32))
    mu = unit.mean(axis=0)
    th = l2_normalise(unit - mu)
    t = l2_normalise(np.asarray(data.labels, dtype=np.float32))
    phi = np.asarray(data.phi, dtype=np.float32)
    d0, d_a, d_s = a.shape[1], th.shape[1], phi.shape[1]
    params = {"v": np.zeros(d0, np.float32)} if kind == "reweight" else {"W": np.zeros((d_a, d_s), np.float32)}

    def adapter() -> Adapter:
        p = {k: v.copy() for k, v in params.items()}
        return Adapter(kind, p if kind == "reweight" else dict(p, mu=mu), {"zero_shot_scale": float(s0)})

    def val_map() -> float:
        assert val is not None
        return mean_ap_of_scores(adapter().residual_scores(val.audio, val.theta, val.labels, val.phi), val.y)

    curve: list[tuple[int, float]] = []
    if not np.isfinite(lam) or epochs == 0:
        if val is not None:
            curve.append((0, val_map()))
        return adapter(), curve
    lr = np.float32(RESIDUAL_LR[kind])
    shrink = np.float32(1.0 / (1.0 + 2.0 * float(lr) * lam))
    n = len(data.y)
    best_ep, best_map = 0, -1.0
    for ep in range(1, epochs + 1):
        order = rng.permutation(n)
        for b0 in range(0, n, BATCH):
            idx = order[b0 : b0 + BATCH]
            g = _residual_grad(kind, params, a[idx], th[idx], t, phi, data.y[idx], s0)
            for k in params:
                params[k] -= lr * g[k].astype(np.float32)
                if lam:
                    params[k] *= shrink
        if val is not None and (ep % eval_every == 0 or ep == epochs):
            curve.append((ep, val_map()))
            if curve[-1][1] > best_map + 1e-9:
                best_ep, best_map = ep, curve[-1][1]
            elif ep - best_ep >= PATIENCE:
                break
    return adapter(), curve


def fit_residual(
    kind: str, train: ResidualData, val: ResidualData, s0: float, seed: int = 0, epochs: int = RESIDUAL_EPOCHS
) -> Fit:
    """Choose λ (∞ included) and the epochs on the validation classes, refit on train + val.

    A correction is kept only if it beats "no adaptation" on the validation classes."""
    _, none_curve = train_residual(kind, train, s0, np.inf, 0, seed, val=val)
    best = (none_curve[0][1], float(np.inf), 0)
    for lam in RESIDUAL_LAMBDAS[1:]:
        _, curve = train_residual(kind, train, s0, lam, epochs, seed, val=val)
        for ep, m in curve:
            if m > best[0] + 1e-9:
                best = (m, lam, ep)
    val_map, lam, ep = best
    both = ResidualData(
        np.concatenate([train.audio, val.audio]),
        np.concatenate([train.theta, val.theta]),
        np.concatenate([train.y, val.y + len(train.labels)]),
        np.concatenate([train.labels, val.labels]),
        np.concatenate([train.phi, val.phi]),
    )
    adapter, _ = train_residual(kind, both, s0, lam, ep, seed)
    adapter.meta.update(lam=lam if np.isfinite(lam) else "inf", epochs=ep, val_map=val_map)
    return Fit(adapter, lam, ep, val_map)


# -- semantic embeddings φ(y) -----------------------------------------------------------------------
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
    from monitor.models.labels import label_embeddings

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
            from monitor.models.offline.glove import Glove

            parts.append(Glove.load(glove_dir).embed(list(names)))
    phi = np.concatenate([l2_normalise(p) for p in parts], axis=1) / np.sqrt(len(parts))
    return phi.astype(np.float32)


# -- run time --------------------------------------------------------------------------------------
