"""Labels taught by example score like text labels: the calibration offset (monitor/models/labels.py),
and enrolled labels that survive a model change."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from stream_helpers import BandEnergyBackend

from monitor.config import DEFAULT_BACKGROUND, LabelConfig, ScoringConfig
from monitor.models.backend import l2_normalise
from monitor.models.labels import label_embeddings, label_offsets
from monitor.models.prototypes import PrototypeStore
from monitor.scoring import Scorer

RATE = 16000


def clips(tmp_path, n=3, seed=0, freq=900.0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = np.arange(int(2.0 * RATE)) / RATE
        x = 0.3 * np.sin(2 * np.pi * (freq + 40 * i) * t) + 0.02 * rng.standard_normal(t.size)
        p = tmp_path / f"ex{seed}-{i}.wav"
        sf.write(p, x.astype(np.float32), RATE)
        out.append(p)
    return out


def margin(backend, x, v, bg):
    z = backend.logit_scale * (x @ bg.T)
    return backend.logit_scale * (x @ v) - np.log(np.exp(z).sum())


def test_text_labels_get_no_offset_and_a_prototype_its_median_example_at_the_background(tmp_path):
    b = BandEnergyBackend()
    ex = clips(tmp_path)
    labels = [LabelConfig(name="dog"), LabelConfig(name="our tone", examples=tuple(map(str, ex)))]
    cache = tmp_path / "state" / "label-cache"
    vecs = label_embeddings(b, labels, cache_dir=cache)
    bg = label_embeddings(b, list(DEFAULT_BACKGROUND), cache_dir=cache)
    off = label_offsets(b, labels, vecs, bg, cache_dir=cache)
    assert off[0] == 0.0 and off[1] < -1.0  # an uncalibrated prototype sits far above the background
    # by hand: each example against the prototype of the others; the median margin is moved to 0
    from monitor.audio_io import read_audio
    from monitor.models.prototypes import embed_windows_mean

    m = l2_normalise(np.stack([embed_windows_mean(b, read_audio(p, RATE).samples)[0] for p in ex]))
    loo = [margin(b, m[j], l2_normalise(np.delete(m, j, axis=0).mean(axis=0)), bg) for j in range(3)]
    assert off[1] == pytest.approx(-np.median(loo), abs=1e-4)


def test_the_scorer_applies_the_offset_in_both_scoring_methods(tmp_path):
    b = BandEnergyBackend()
    ex = clips(tmp_path)
    labels = [LabelConfig(name="our tone", examples=tuple(map(str, ex))), LabelConfig(name="cat")]
    cache = tmp_path / "state" / "label-cache"
    for method in ("vs-background", "softmax"):
        s = Scorer(b, labels, ScoringConfig(method=method), cache_dir=cache)
        assert s.label_offsets[0] < -1.0 and s.label_offsets[1] == 0.0
        a = b.embed_audio(np.zeros((1, 8000), np.float32) + 0.01)
        logits = b.logit_scale * (a @ s.label_emb.T) + s.label_offsets
        if method == "softmax":
            e = np.exp(logits - logits.max())
            assert s.score(a) == pytest.approx(e / e.sum(), abs=1e-5)


def test_an_enrolled_label_survives_a_model_change(tmp_path):
    """Enrolled for model A; model B (another cache key) finds it, makes it again from its
    clips in its own space and keeps it in its own store."""
    a, b = BandEnergyBackend(), BandEnergyBackend()
    b.cache_key = "band-energy-test-v2"
    state = tmp_path / "state"
    ex = clips(tmp_path, seed=3)
    PrototypeStore(state, a.cache_key).put("our tone", np.ones(16, np.float32), [str(p) for p in ex], 3)
    v = label_embeddings(b, [LabelConfig(name="our tone")], cache_dir=state / "label-cache")
    text = label_embeddings(b, [LabelConfig(name="our tone", prompts=("our tone",))], cache_dir=state / "label-cache")
    assert not np.allclose(v, text)  # the prototype, not the label's text
    entry = PrototypeStore(state, b.cache_key).find("our tone")
    assert entry is not None and entry["files"] == [str(p) for p in ex]
    ex[0].unlink()  # clips gone: the other model's entry cannot be made again (and is not guessed)
    c = BandEnergyBackend()
    c.cache_key = "band-energy-test-v3"
    w = label_embeddings(c, [LabelConfig(name="our tone")], cache_dir=state / "label-cache")
    assert np.allclose(w, label_embeddings(c, ["our tone"], cache_dir=state / "label-cache"))  # text label
