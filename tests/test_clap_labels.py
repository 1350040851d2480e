"""Label embeddings: prompt x template ensembling, and the on-disk cache keyed by model + text."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.config import LabelConfig
from monitor.models.backend import Backend
from monitor.models.labels import label_embeddings, label_texts, softmax_scores


class CountingBackend(Backend):
    """A deterministic fake backend that records which texts it had to encode."""

    name = "fake"
    sample_rate_hz = 48000
    window_s = 5.0
    embedding_dim = 8
    logit_scale = 10.0

    def __init__(self, cache_key="k1"):
        self.cache_key = cache_key
        self.encoded: list[str] = []

    def embed_text(self, prompts):
        self.encoded.extend(prompts)
        out = []
        for p in prompts:
            rng = np.random.default_rng(abs(hash(p)) % (2**32))
            v = rng.standard_normal(self.embedding_dim)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)

    def embed_audio(self, batch):  # pragma: no cover - not used here
        raise NotImplementedError


def test_texts_prompts_times_templates():
    lab = LabelConfig(name="alarm", prompts=("smoke alarm", "fire alarm beeping"))
    assert label_texts(lab, ["a {}", "the sound of {}"]) == [
        "a smoke alarm",
        "the sound of smoke alarm",
        "a fire alarm beeping",
        "the sound of fire alarm beeping",
    ]
    assert label_texts("dog", ["This is a sound of {}."]) == ["This is a sound of dog."]
    assert label_texts(LabelConfig(name="cat"), ["{}"]) == ["cat"]


def test_ensemble_is_normalised_mean():
    b = CountingBackend()
    lab = LabelConfig(name="alarm", prompts=("smoke alarm", "siren"))
    templates = ["a {}", "the sound of {}"]
    got = label_embeddings(b, [lab, "dog"], templates)
    texts = label_texts(lab, templates)
    mean = b.embed_text(texts).mean(axis=0)
    np.testing.assert_allclose(got[0], mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_allclose(
        got[1],
        b.embed_text(["a dog", "the sound of dog"]).mean(0)
        / np.linalg.norm(b.embed_text(["a dog", "the sound of dog"]).mean(0)),
        atol=1e-6,
    )
    assert got.shape == (2, 8)


def test_cache_avoids_reencoding(tmp_path):
    b = CountingBackend()
    first = label_embeddings(b, ["dog", "cat"], cache_dir=tmp_path)
    assert sorted(b.encoded) == ["This is a sound of cat.", "This is a sound of dog."]
    # a "restart": new backend object, same weights -> nothing re-encoded
    b2 = CountingBackend()
    again = label_embeddings(b2, ["dog", "cat"], cache_dir=tmp_path)
    assert b2.encoded == []
    np.testing.assert_array_equal(again, first)
    # one new label: only its text is encoded
    label_embeddings(b2, ["dog", "owl"], cache_dir=tmp_path)
    assert b2.encoded == ["This is a sound of owl."]
    # other weights (cache_key) -> a separate cache
    b3 = CountingBackend(cache_key="k2")
    label_embeddings(b3, ["dog"], cache_dir=tmp_path)
    assert b3.encoded == ["This is a sound of dog."]
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["k1.npz", "k2.npz"]


def test_corrupt_cache_is_ignored(tmp_path):
    (tmp_path / "k1.npz").write_bytes(b"garbage")
    b = CountingBackend()
    out = label_embeddings(b, ["dog"], cache_dir=tmp_path)
    assert b.encoded == ["This is a sound of dog."] and out.shape == (1, 8)
    b2 = CountingBackend()
    label_embeddings(b2, ["dog"], cache_dir=tmp_path)
    assert b2.encoded == []


def test_real_backend_cache_roundtrip(tiny_clap_export, tmp_path):
    from monitor.models.clap.encoder import ClapBackend

    b = ClapBackend.from_dir(tiny_clap_export, threads=1)
    direct = label_embeddings(b, ["dog", "rain"])
    np.testing.assert_allclose(direct, b.embed_text(["This is a sound of dog.", "This is a sound of rain."]), atol=1e-6)
    label_embeddings(b, ["dog", "rain"], cache_dir=tmp_path)
    fresh = ClapBackend.from_dir(tiny_clap_export, threads=1)
    cached = label_embeddings(fresh, ["dog", "rain"], cache_dir=tmp_path)
    assert fresh._text is None  # the text encoder was never loaded
    np.testing.assert_array_equal(cached, direct)


def test_softmax_scores():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = np.array([[1.0, 0.0], [0.6, 0.8]])
    s = softmax_scores(a, labels, 10.0)
    e = np.exp(10 * (a @ labels.T))
    np.testing.assert_allclose(s, e / e.sum(axis=1, keepdims=True))
    assert softmax_scores(a, labels, 1e4).max() == pytest.approx(1.0)  # no overflow
