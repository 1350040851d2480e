"""The numpy CLAP front-end equals transformers' ClapFeatureExtractor (unfused settings)."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.models.clap.frontend import ClapFrontend, FrontendParams, crop_starts

SR = 48000
L = 10 * SR

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def reference():
    return transformers.ClapFeatureExtractor(
        truncation="rand_trunc", padding="repeatpad", frequency_min=50, frequency_max=14000
    )


@pytest.fixture(scope="module")
def frontend():
    return ClapFrontend(FrontendParams())


def _ref(reference, x):
    return reference(x, sampling_rate=SR, return_tensors="np")["input_features"]


def _clip(n, seed=0):
    rng = np.random.default_rng(seed)
    x = (0.3 * rng.standard_normal(n)).astype(np.float32)
    x[: n // 3] *= 1e-4  # a quiet part: low mel energies are where precision bites
    x[n // 2 :] += 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n - n // 2) / SR).astype(np.float32)
    return x


def test_mel_filters_equal_reference(reference, frontend):
    assert frontend.mel_filters.shape == (513, 64)
    np.testing.assert_allclose(frontend.mel_filters, reference.mel_filters_slaney, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "n",
    [
        1000,  # shorter than one hop period: repeat-padded many times, zero tail
        SR // 2,  # 0.5 s
        146619,  # odd length (3.05 s), as the cat clip
        4 * SR,  # repeat twice + zero tail
        5 * SR,  # the monitor's window: exactly two copies
        5 * SR + 480,
        int(7.3 * SR),
        L - 1,
        L,  # exactly 10 s: no padding
    ],
)
def test_features_equal_reference(reference, frontend, n):
    x = _clip(n, seed=n)
    ref = _ref(reference, x)
    got = frontend.features(x)
    assert got.shape == ref.shape == (1, 1, 1001, 64)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4)


def test_silence_and_demo_clip(reference, frontend, demo_clips_48k):
    z = np.zeros(5 * SR, dtype=np.float32)
    np.testing.assert_allclose(frontend.features(z), _ref(reference, z), atol=1e-4)
    assert frontend.features(z).min() == pytest.approx(-100.0)
    cat = demo_clips_48k["cat"]
    np.testing.assert_allclose(frontend.features(cat), _ref(reference, cat), rtol=0, atol=1e-4)


def test_batch_equals_rows(frontend):
    batch = np.stack([_clip(5 * SR, seed=s) for s in range(3)])
    got = frontend.batch_features(batch)
    assert got.shape == (3, 1, 1001, 64)
    for i in range(3):
        np.testing.assert_array_equal(got[i], frontend.features(batch[i])[0])


def test_repeat_shortcut_is_exact(frontend):
    """A repeat-padded window reuses repeated frames: identical to computing them all."""
    x = _clip(5 * SR, seed=7)
    tiled = np.tile(x, 2)[None, :]
    full = frontend.log_mel(tiled)  # no period given: every frame computed
    np.testing.assert_array_equal(frontend.batch_features(x[None, :])[:, 0], full)


def test_long_clips_are_cropped_deterministically(reference, frontend):
    n = 25 * SR + 123
    x = _clip(n, seed=3)
    starts = crop_starts(n, L)
    assert starts == [0, L, n - L]
    got = frontend.features(x)
    assert got.shape == (3, 1, 1001, 64)
    np.testing.assert_array_equal(got, frontend.features(x))
    for k, s in enumerate(starts):
        np.testing.assert_allclose(got[k : k + 1], _ref(reference, x[s : s + L]), rtol=0, atol=1e-4)


def test_bad_input(frontend):
    with pytest.raises(ValueError):
        frontend.features(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError):
        frontend.features(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(ValueError):
        frontend.batch_features(np.zeros(100, dtype=np.float32))


# -- the incremental front-end (streaming windows share their STFT frames) -----------------


def _windows(x, window_n, hop_n):
    return [(s, x[s : s + window_n]) for s in range(0, x.size - window_n + 1, hop_n)]


@pytest.mark.parametrize("hop_s", [1.0, 0.5, 2.5])
def test_streaming_frontend_equals_full_and_reuses_frames(frontend, hop_s):
    from monitor.models.clap.frontend import StreamingFrontend

    x = _clip(14 * SR, seed=3)
    sf = StreamingFrontend(frontend)
    wins = _windows(x, 5 * SR, int(hop_s * SR))
    for s, w in wins:
        np.testing.assert_allclose(sf.window_features(w, s), frontend.batch_features(w[None])[0], atol=1e-4, rtol=0)
    # after the first window only the new hop's frames and the ~7 edge frames are computed
    first = 500 + 7
    per_window = (sf.frames_computed - first) / (len(wins) - 1)
    assert per_window <= hop_s * 100 + 8, per_window


def test_streaming_frontend_gaps_restart_and_odd_geometry(frontend):
    from monitor.models.clap.frontend import StreamingFrontend

    x = _clip(20 * SR, seed=4)
    sf = StreamingFrontend(frontend)
    cases = [
        (0, 5 * SR),  # first window
        (7 * SR, 5 * SR),  # a gap (windows gated or dropped in between): nothing stale used
        (8 * SR, 5 * SR),
        (2 * SR, 5 * SR),  # the stream restarted: the cache is cleared
        (3 * SR + 1, 5 * SR),  # start off the frame grid: computed in full
        (0, 3 * SR + 17),  # length off the grid (short tail window): in full
        (480 * 7, 417 * 480),  # repeat-padded with zeros after two copies
    ]
    for s, n in cases:
        w = x[s : s + n]
        np.testing.assert_allclose(sf.window_features(w, s), frontend.batch_features(w[None])[0], atol=1e-4, rtol=0)
