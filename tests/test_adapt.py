"""Adapters: WARP loss and gradients, a planted bilinear map recovered on unseen classes,
files, and the run-time wrapper through the Scorer."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.errors import UserError
from monitor.evaluation import training as adapt
from monitor.models.backend import Backend, l2_normalise


def test_warp_loss_on_a_hand_computed_case():
    # true class 0 with score 2; class 2 at 1.5 violates the margin by 0.5, class 1 does not
    loss, g = adapt.warp_loss(np.array([[2.0, 0.0, 1.5]]), np.array([0]))
    assert loss == pytest.approx(0.5)  # r = 1, β(1)/1 = 1
    assert g.tolist() == [[-1.0, 0.0, 1.0]]
    # two violators: r = 2, β(2)/2 = (1 + 1/2) / 2
    loss, g = adapt.warp_loss(np.array([[0.0, 0.5, 0.2]]), np.array([0]))
    assert loss == pytest.approx(0.75 * (1.5 + 1.2))
    assert g[0].tolist() == pytest.approx([-1.5, 0.75, 0.75])
    # top-ranked with margin: no loss (0/0 = 0)
    loss, g = adapt.warp_loss(np.array([[3.0, 0.5, 0.2]]), np.array([0]))
    assert loss == 0.0 and not g.any()


def _problem(rng, n=12, d_a=7, d_s=5, c=6):
    theta = l2_normalise(rng.normal(size=(n, d_a))).astype(np.float64)
    phi = l2_normalise(rng.normal(size=(c, d_s))).astype(np.float64)
    y = rng.integers(0, c, n)
    return theta, phi, y


@pytest.mark.parametrize("kind", ["bilinear", "nonlinear"])
@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_warp_gradient_matches_finite_differences(kind, lam):
    rng = np.random.default_rng(1)
    theta, phi, y = _problem(rng)
    if kind == "bilinear":
        params = {"W": rng.normal(scale=0.7, size=(7, 5))}
    else:
        params = {"U": rng.normal(scale=0.7, size=(5, 5)), "V": rng.normal(scale=0.7, size=(5, 7))}
    g = adapt.gradient(kind, params, theta, phi, y, lam)
    eps = 1e-6
    checked = 0
    for k, p in params.items():
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + eps
            up = adapt.objective(kind, params, theta, phi, y, lam)
            p[idx] = old - eps
            down = adapt.objective(kind, params, theta, phi, y, lam)
            p[idx] = old
            assert g[k][idx] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-6)
            checked += 1
    assert checked == sum(p.size for p in params.values())


def planted(seed=0, n_classes=40, per_class=12, d_a=24, d_s=16, noise=0.3):
    """θ(x) = W* φ(y) + noise for a random W*: a linear map relates the two spaces."""
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=(d_a, d_s))
    phi = l2_normalise(rng.normal(size=(n_classes, d_s))).astype(np.float64)
    y = np.repeat(np.arange(n_classes), per_class)
    theta = phi[y] @ w_true.T
    theta = theta + noise * np.linalg.norm(theta, axis=1, keepdims=True) * rng.normal(size=theta.shape) / np.sqrt(d_a)
    return theta, y, phi


def _part(theta, y, phi, classes):
    m = np.isin(y, classes)
    remap = {c: j for j, c in enumerate(classes)}
    return theta[m], np.array([remap[v] for v in y[m]]), phi[classes]


def test_bilinear_recovers_a_planted_map_on_unseen_classes():
    theta, y, phi = planted()
    train, val, test = list(range(0, 25)), list(range(25, 30)), list(range(30, 40))
    f = adapt.fit("bilinear", *_part(theta, y, phi, train), *_part(theta, y, phi, val), seed=0, max_epochs=40)
    th_t, y_t, phi_t = _part(theta, y, phi, test)
    s = f.adapter.scores(th_t, phi_t)
    top1 = float(np.mean(np.argmax(s, axis=1) == y_t))
    m = adapt.mean_ap_of_scores(s, y_t)
    # chance on 10 unseen classes: top-1 0.10, mAP 0.29
    assert top1 > 0.6, top1
    assert m > 0.75, m
    assert f.lam in adapt.LAMBDAS and 1 <= f.epochs <= 40
    # an untrained map (W = 0) is at chance or below: every class ties
    zero = adapt.Adapter("bilinear", {"W": np.zeros_like(f.adapter.params["W"])})
    assert adapt.mean_ap_of_scores(zero.scores(th_t, phi_t), y_t) < 0.2


def test_nonlinear_learns_the_planted_problem_too():
    theta, y, phi = planted(seed=1, n_classes=30, per_class=10)
    train, val, test = list(range(0, 20)), list(range(20, 25)), list(range(25, 30))
    f = adapt.fit(
        "nonlinear",
        *_part(theta, y, phi, train),
        *_part(theta, y, phi, val),
        seed=0,
        lambdas=(0.0, 0.01),
        max_epochs=60,
    )
    th_t, y_t, phi_t = _part(theta, y, phi, test)
    m = adapt.mean_ap_of_scores(f.adapter.scores(th_t, phi_t), y_t)
    assert m > 0.6, m  # chance on 5 classes: 0.457


class FakeBackend(Backend):
    """A linear 'model': audio and text vectors are fixed random projections (fast, exact)."""

    name = "fake"
    sample_rate_hz = 16000
    window_s = 1.0
    embedding_dim = 8
    logit_scale = 10.0
    cache_key = "fake-0"

    def __init__(self):
        rng = np.random.default_rng(5)
        self.pa = rng.normal(size=(4, 8))

    def embed_audio(self, batch):
        b = np.asarray(batch, dtype=np.float32)
        feats = np.stack([b[:, i::4].mean(axis=1) for i in range(4)], axis=1)
        return l2_normalise(feats @ self.pa)

    def embed_text(self, prompts):
        out = []
        for p in prompts:
            h = np.frombuffer(p.encode().ljust(8, b"_")[:8], dtype=np.uint8).astype(np.float32)
            out.append(h - h.mean())
        return l2_normalise(np.stack(out))


def test_adapter_file_round_trip_and_scorer_uses_f(tmp_path):
    from monitor.config import LabelConfig, ScoringConfig
    from monitor.scoring import Scorer

    base = FakeBackend()
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 8))
    ad = adapt.Adapter(
        "bilinear",
        {"W": w, "mu": np.zeros(8)},
        {
            "backend_cache_key": base.cache_key,
            "semantic": "text",
            "theta": "audio",
            "templates": ["This is a sound of {}."],
            "logit_scale": 3.0,
        },
    )
    path = ad.save(tmp_path / "a")
    assert path.suffix == ".npz"
    loaded = adapt.Adapter.load(path)
    assert loaded.sha256() == ad.sha256() and loaded.meta["logit_scale"] == 3.0

    wrapped = adapt.maybe_adapt(base, path)
    assert wrapped.cache_key != base.cache_key and wrapped.logit_scale == 3.0
    labels = [LabelConfig(name="dog"), LabelConfig(name="siren"), LabelConfig(name="rain")]
    scorer = Scorer(wrapped, labels, ScoringConfig(method="softmax"))
    audio = rng.normal(size=(3, 1600)).astype(np.float32)
    got = scorer.score(wrapped.embed_audio(audio))
    # by hand: F(x, y) = θ̂(x)ᵀ W φ(y), softmax of 3·F
    theta = l2_normalise(base.embed_audio(audio))
    phi = base.embed_text([f"This is a sound of {n}." for n in ("dog", "siren", "rain")])
    f = theta @ w @ phi.T
    e = np.exp(3.0 * (f - f.max(axis=1, keepdims=True)))
    assert got == pytest.approx(e / e.sum(axis=1, keepdims=True), abs=1e-5)


def test_adapter_for_another_model_and_bad_files_are_user_errors(tmp_path):
    ad = adapt.Adapter("bilinear", {"W": np.zeros((8, 8))}, {"backend_cache_key": "other", "backend_name": "clap"})
    p = ad.save(tmp_path / "x.npz")
    with pytest.raises(UserError, match="trained for model"):
        adapt.maybe_adapt(FakeBackend(), p)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a sound-monitor adapter"):
        adapt.Adapter.load(tmp_path / "junk.npz")
    with pytest.raises(UserError, match="not found"):
        adapt.Adapter.load(tmp_path / "missing.npz")
    with pytest.raises(UserError, match="--semantic"):
        adapt.parse_semantic("word2vec")
    assert adapt.parse_semantic("minilm+glove") == ("minilm", "glove")


def test_glove_label_embedding_is_the_mean_of_word_vectors():
    from monitor.models.offline.glove import Glove

    vocab = ["dog", "barking", "rain"]
    vecs = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=np.float32)
    g = Glove(vecs, vocab)
    e = g.embed(["Dog barking!", "rain"])
    assert e[0] == pytest.approx(np.array([1, 1, 0]) / np.sqrt(2))
    assert e[1] == pytest.approx([0, 0, 1])
    with pytest.raises(UserError, match="vocabulary"):
        g.embed(["zzzz"])


def test_calibrated_scale_fits_the_margin_of_the_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    s = rng.normal(size=(400, 5))
    s[np.arange(400), y] += 2.0
    scale = adapt.calibrate_scale(s, y)
    assert 0.5 < scale < 5.0


# -- residual adapters (start at the zero-shot mapping) -----------------------------------------------
def residual_problem(seed=0, n_classes=30, per_class=8, d0=24, d_a=12, d_s=10, junk=1.0):
    """Zero-shot audio â = class label vector t̂_y + noise, except on a few 'junk' dimensions
    where the audio is loud noise that has nothing to do with the class while the label
    vectors differ there: those dimensions confuse the classes, and a per-dimension
    re-weighting that turns them down helps on classes it never saw."""
    rng = np.random.default_rng(seed)
    t = l2_normalise(np.abs(rng.normal(size=(n_classes, d0))))
    y = np.repeat(np.arange(n_classes), per_class)
    a = t[y] + 0.1 * rng.normal(size=(len(y), d0))
    a[:, :4] = junk * np.abs(rng.normal(size=(len(y), 4)))
    phi = rng.normal(size=(n_classes, d_s))
    theta = phi[y] @ rng.normal(size=(d_s, d_a)) + 0.5 * rng.normal(size=(len(y), d_a))
    return adapt.ResidualData(l2_normalise(a), theta, y, t, phi)


@pytest.mark.parametrize("kind", adapt.RESIDUAL_KINDS)
def test_residual_adapter_at_lambda_infinity_is_the_zero_shot_mapping(kind):
    d = residual_problem()
    ad, _ = adapt.train_residual(kind, d, 10.0, np.inf, 50)
    expect = 10.0 * l2_normalise(d.audio) @ l2_normalise(d.labels).T
    assert np.allclose(ad.residual_scores(d.audio, d.theta, d.labels, d.phi), expect, atol=1e-5)


@pytest.mark.parametrize("kind", adapt.RESIDUAL_KINDS)
def test_residual_gradient_matches_finite_differences(kind):
    d = residual_problem(n_classes=6, per_class=3)
    rng = np.random.default_rng(2)
    a, t = l2_normalise(d.audio), l2_normalise(d.labels)
    th = l2_normalise(d.theta)
    p = {"v": 0.1 * rng.normal(size=a.shape[1])} if kind == "reweight" else {"W": 0.1 * rng.normal(size=(12, 10))}
    p = {k: v.astype(np.float64) for k, v in p.items()}

    def loss(params):
        if kind == "reweight":
            s = 10.0 * (a * np.exp(params["v"])) @ t.T
        else:
            s = 10.0 * a @ t.T + th @ params["W"] @ d.phi.T
        return adapt.warp_loss(s, d.y)[0]

    g = adapt._residual_grad(kind, p, a, th, t, d.phi, d.y, 10.0)
    k = next(iter(p))
    for idx in [tuple(rng.integers(s) for s in p[k].shape) for _ in range(8)]:
        e = np.zeros_like(p[k])
        e[idx] = 1e-6
        num = (loss({k: p[k] + e}) - loss({k: p[k] - e})) / 2e-6
        assert g[k][idx] == pytest.approx(num, rel=1e-3, abs=1e-6)


def test_reweight_helps_on_unseen_classes_and_is_never_worse_on_validation():
    d = residual_problem()
    y = d.y
    train, val, test = list(range(0, 18)), list(range(18, 24)), list(range(24, 30))
    none = adapt.train_residual("reweight", d, 10.0, np.inf, 0)[0]
    f = adapt.fit_residual("reweight", d.part(train, y), d.part(val, y), 10.0, seed=0)
    v = d.part(val, y)
    val_none = adapt.mean_ap_of_scores(none.residual_scores(v.audio, v.theta, v.labels, v.phi), v.y)
    assert f.val_map >= val_none - 1e-9  # "no adaptation" is in the grid
    tst = d.part(test, y)
    m_none = adapt.mean_ap_of_scores(none.residual_scores(tst.audio, tst.theta, tst.labels, tst.phi), tst.y)
    m_ad = adapt.mean_ap_of_scores(f.adapter.residual_scores(tst.audio, tst.theta, tst.labels, tst.phi), tst.y)
    assert np.isfinite(f.lam) and m_ad > m_none + 0.02, (m_none, m_ad, f.lam)


def test_residual_choice_falls_back_to_no_adaptation_when_nothing_helps():
    """Labels are already perfect and θ is noise: every correction is worse on validation."""
    rng = np.random.default_rng(4)
    d = residual_problem(junk=0.0)
    d = adapt.ResidualData(d.audio, rng.normal(size=d.theta.shape), d.y, d.labels, rng.normal(size=d.phi.shape))
    f = adapt.fit_residual("residual", d.part(list(range(18)), d.y), d.part(list(range(18, 24)), d.y), 10.0)
    if not np.isfinite(f.lam):
        assert f.epochs == 0 and not f.adapter.params["W"].any()
    else:  # a correction may only be kept when it beat "no adaptation" on validation
        none = adapt.train_residual("residual", d, 10.0, np.inf, 0)[0]
        v = d.part(list(range(18, 24)), d.y)
        assert f.val_map > adapt.mean_ap_of_scores(none.residual_scores(v.audio, v.theta, v.labels, v.phi), v.y)


@pytest.mark.parametrize("kind", adapt.RESIDUAL_KINDS)
def test_residual_adapter_file_runs_in_the_scorer_and_streams(kind, tmp_path):
    from monitor.config import LabelConfig, ScoringConfig
    from monitor.scoring import Scorer
    from monitor.types import Window

    base = FakeBackend()
    rng = np.random.default_rng(1)
    params = (
        {"v": 0.3 * rng.normal(size=8)}
        if kind == "reweight"
        else {"W": rng.normal(size=(8, 8)), "mu": 0.1 * rng.normal(size=8)}
    )
    meta = {
        "backend_cache_key": base.cache_key,
        "semantic": "text",
        "theta": "audio",
        "templates": [],
        "zero_shot_scale": 10.0,
    }
    path = adapt.Adapter(kind, params, meta).save(tmp_path / kind)
    wrapped = adapt.maybe_adapt(base, path)
    assert wrapped.logit_scale == 10.0  # the zero-shot scale: thresholds keep their meaning
    names = ["dog", "siren", "rain"]
    scorer = Scorer(wrapped, [LabelConfig(name=n) for n in names], ScoringConfig(method="softmax"))
    audio = rng.normal(size=(4, 1600)).astype(np.float32)
    got = scorer.score(wrapped.embed_audio(audio))
    ad = adapt.Adapter.load(path)
    a = base.embed_audio(audio)
    t = base.embed_text([f"This is a sound of {n}." for n in names])
    f = ad.residual_scores(a, a, t, t)  # θ is the base audio vector, φ its text vector (semantic "text")
    e = np.exp(f - f.max(axis=1, keepdims=True))
    assert got == pytest.approx(e / e.sum(axis=1, keepdims=True), abs=1e-5)
    wins = [Window(i, audio[i], 16000, float(i), float(i) + 0.1, -20.0) for i in range(4)]
    assert np.allclose(wrapped.embed_windows(wins, "s"), wrapped.embed_audio(audio), atol=1e-6)
