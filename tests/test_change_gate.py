"""The change gate (monitor/stream/change_gate.py): unchanged quiet windows reuse the last real
scores; any change, a frame louder than the reference had settled, any score near a
threshold, an open event or age forces the model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from fault_helpers import RATE, ScriptSource, make_pipeline, noise
from stream_helpers import BandEnergyBackend

from monitor.config import ChangeGateConfig, EventsConfig, LabelConfig, StreamConfig
from monitor.stream.change_gate import FRAME, ChangeGate, _summary, signature

OFF = {"dog": 0.4, "alarm": 0.4}


def test_signature_is_level_and_spectrum_sensitive_but_stable_on_steady_noise():
    a, b = noise(5, 0.01, seed=1), noise(5, 0.01, seed=2)  # the same kind of noise, other samples
    sa, sb = signature(a, RATE), signature(b, RATE)
    assert sa.shape == (32,) and np.max(np.abs(sa - sb)) < 2.5  # under the default db (3 dB)
    louder = signature(a * 2.0, RATE)  # +6 dB
    assert np.max(np.abs(louder - sa)) > 5.0
    t = np.arange(5 * RATE) / RATE
    tone = signature(a + 0.05 * np.sin(2 * np.pi * 1000 * t).astype(np.float32), RATE)
    assert np.max(np.abs(tone - sa)) > 10.0  # a new sound in one band


def test_overlapping_windows_share_their_frames():
    """signature_at: each stream-aligned frame is computed once; every window's signature
    equals the one computed from scratch over the same frames; frames behind the windows go."""
    x = noise(12, 0.01, seed=3)
    x[5 * RATE : 6 * RATE] += 0.2 * np.sin(2 * np.pi * 700 * np.arange(RATE) / RATE).astype(np.float32)
    g = ChangeGate(ChangeGateConfig())
    win, hop = 5 * RATE, RATE // 2 + 7  # a hop that is no multiple of the frame
    for start in range(0, x.size - win + 1, hop):
        got = g.signature_at(x[start : start + win], RATE, start)
        k0, k1 = -(-start // FRAME), (start + win) // FRAME
        want = signature(x[k0 * FRAME : k1 * FRAME], RATE)
        np.testing.assert_allclose(got.sig, want, rtol=0, atol=1e-4)
        assert (got.k0, got.k1) == (k0, k1) and got.settled_end == k1 - round(g.p.settled_s * RATE / FRAME)
        full = [signature(x[k * FRAME : (k + 1) * FRAME], RATE)[:16] for k in range(k0, got.settled_end)]
        np.testing.assert_allclose(got.settled_max, np.max(full, axis=0), atol=1e-4)
        assert g._k_first == k0 and len(g._fdb) == k1 - k0  # nothing older is kept
    db = np.random.default_rng(0).normal(size=(77, 16)).astype(np.float32)
    np.testing.assert_allclose(_summary(db)[16:], np.percentile(db, 95, axis=0), atol=1e-5)


def test_reuse_rules():
    g = ChangeGate(ChangeGateConfig(db=3.0, max_age_s=5.0, margin=0.5, rise=0.2))
    s = g.signature_at(noise(5, 0.01), RATE, 0)
    moved = replace(s, sig=s.sig + 4.0)
    assert g.reuse(s, 0.0, OFF, False) is None  # nothing to reuse yet
    g.ran_on(s, 0.0, ("dog", "alarm"), (0.05, 0.1))
    assert g.reuse(s, 1.0, OFF, False) == {"dog": 0.05, "alarm": 0.1}
    assert g.reuse(s, 5.5, OFF, False) is None  # too old: the model runs at least every 5 s
    assert g.reuse(s, 1.0, OFF, True) is None  # an open event
    assert g.reuse(moved, 1.0, OFF, False) is None  # the sound changed
    g.ran_on(s, 2.0, ("dog", "alarm"), (0.05, 0.25))  # alarm at 0.25 >= 0.5 x 0.4: near
    assert g.reuse(s, 3.0, OFF, False) is None
    g.ran_on(s, 3.0, ("dog", "alarm"), (0.05, 0.02))
    g.ran_on(s, 4.0, ("dog", "alarm"), (0.05, 0.11))  # 0.11 < 0.2, but it rose by 0.09 > 0.2 x 0.4
    assert g.reuse(s, 4.5, OFF, False) is None
    g.ran_on(s, 5.0, ("dog", "alarm"), (0.05, 0.12))  # still low and no longer climbing
    assert g.reuse(s, 5.5, OFF, False) == {"dog": 0.05, "alarm": 0.12}
    g.forget()
    assert g.reuse(s, 3.0, OFF, False) is None
    assert g.why == {"first": 2, "near": 3, "age": 1, "change": 1, "novel": 0}  # why the model ran, counted


@pytest.mark.parametrize("settled_s", [1.0, 3.0])
def test_a_frame_louder_than_the_reference_settled_runs_the_model(settled_s):
    """A click moves a 5 s window's signature (band means and 95th percentiles over ~78
    frames) by far less than change_db, but its frames stand out over every frame the
    reference window had settled: the window that holds it runs the model, and so does every
    window after it while the click is in the newest ``settled_s`` of the window that ran
    (the model has heard little of what follows it yet)."""
    x = noise(20, 0.01, seed=7)
    click_at = 9 * RATE + 3000
    burst = np.random.default_rng(8).standard_normal(400) * np.hanning(400)  # 25 ms, broadband
    x[click_at : click_at + 400] += (0.3 * burst).astype(np.float32)
    p = ChangeGateConfig(db=3.0, max_age_s=30.0, margin=0.5, rise=0.2, novel_db=6.0, settled_s=settled_s)
    g = ChangeGate(p)
    win = 5 * RATE
    decisions = {}
    ref = None  # the window the model last ran on
    for k in range(0, 16):
        ws = g.signature_at(x[k * RATE : k * RATE + win], RATE, k * RATE)
        got = g.reuse(ws, float(k), OFF, False)
        decisions[k] = got is not None
        if k == 5:  # the first window with the click, in its newest second
            assert ref is not None and np.max(np.abs(ws.sig - ref.sig)) < 3.0  # the signature alone would reuse
        if got is None:
            g.ran_on(ws, float(k), ("dog", "alarm"), (0.05, 0.05))
            ref = ws
    # window 5 holds the click first; windows 6.. run while it was in the newest settled_s of the last run
    n = int(settled_s) + 1
    assert decisions[1] and decisions[4]  # steady noise reuses
    assert not any(decisions[k] for k in range(5, 5 + n))  # the click: never heard, the model runs
    assert decisions[5 + n] and decisions[6 + n]  # heard: the window that ran settled it
    assert g.why["novel"] == n and g.why["change"] == 0
    quiet = ChangeGate(ChangeGateConfig(novel_db=0.0, db=3.0))  # novel_db 0: the rule is off
    ws0 = quiet.signature_at(x[4 * RATE : 4 * RATE + win], RATE, 4 * RATE)
    quiet.ran_on(ws0, 4.0, ("dog", "alarm"), (0.05, 0.05))
    ws1 = quiet.signature_at(x[5 * RATE : 5 * RATE + win], RATE, 5 * RATE)
    assert quiet.reuse(ws1, 5.0, OFF, False) == {"dog": 0.05, "alarm": 0.05}  # the reference's scores


class CountingBackend(BandEnergyBackend):
    """Counts the windows the model runs on; a room that sounds like nothing in particular:
    every window embeds to the same vector, so its scores are steady and low."""

    def __init__(self):
        super().__init__()
        self.windows = 0

    def embed_audio(self, batch):
        b = np.atleast_2d(batch)
        self.windows += len(b)
        v = np.zeros((len(b), self.embedding_dim), np.float32)
        v[:, 0] = 1.0
        return v


def run(steps, change_gate: bool):
    b = CountingBackend()
    events = EventsConfig(threshold=0.95, hysteresis=0.05, min_windows=1, cooldown_s=0.0)  # scores 0.43: quiet
    labels = [LabelConfig(name="dog"), LabelConfig(name="alarm")]
    src = ScriptSource(steps, speed=0, realtime=False)
    stream = StreamConfig(change_gate=change_gate, gate_dbfs=-90, change_max_age_s=5.0)
    pipe, c = make_pipeline(src, backend=b, labels=labels, events=events, stream=stream)
    st = pipe.run()
    return b, c, st


def test_a_steady_room_runs_the_model_on_few_windows():
    steps = [("audio", noise(120, 0.003, seed=3))]
    b_off, c_off, _ = run(steps, False)
    b_on, c_on, st = run(steps, True)
    n = len(c_off.scores)
    assert len(c_on.scores) == n and b_off.windows == n
    assert b_on.windows <= n / 3, (b_on.windows, n)  # at most a third of the model runs
    assert st.inference.reused == n - b_on.windows
    assert c_on.scores[-1].reused and st.inference.inference_ms > 0  # the model's time, not a reused window's 0
    reused = [s for s in c_on.scores if s.reused]
    assert reused and all(s.inference_ms == 0.0 for s in reused)
    # a reused window carries the scores of the window the model last ran on
    last = None
    for s in c_on.scores:
        if s.reused:
            assert s.values == last
        else:
            last = s.values
    gaps = np.diff([s.window_index for s in c_on.scores if not s.reused])
    assert gaps.max() <= 6  # a real run at least every max_age_s (5 s at a 1 s hop)


def test_a_sound_that_appears_runs_the_model_at_once():
    quiet = noise(30, 0.003, seed=4)
    t = np.arange(8 * RATE) / RATE
    loud = (0.3 * np.sin(2 * np.pi * 700 * t)).astype(np.float32) + noise(8, 0.003, seed=5)
    steps = [("audio", quiet), ("audio", loud), ("audio", noise(30, 0.003, seed=6))]
    _, c, _ = run(steps, True)
    first_loud = 30  # the first window that holds part of the tone starts at 26 s; by 30 s all of it
    for s in c.scores:
        if 26 <= s.start_s <= first_loud:
            assert not s.reused, s  # every window that overlaps the new sound ran the model


def test_the_gate_settings_are_one_section_and_the_old_flat_keys_still_read(tmp_path):
    from monitor.config import load_config

    nested = tmp_path / "nested.yaml"
    nested.write_text("stream:\n  change_gate: {enabled: true, db: 3.5, max_age_s: 9}\n")
    flat = tmp_path / "flat.yaml"
    flat.write_text("stream: {change_gate: true, change_db: 3.5, change_max_age_s: 9}\n")
    off = tmp_path / "off.yaml"
    off.write_text("stream: {change_gate: false}\n")
    a, b = load_config(nested).stream.change_gate, load_config(flat).stream.change_gate
    assert a == b and a.db == 3.5 and a.max_age_s == 9 and a.novel_db == ChangeGateConfig().novel_db
    assert load_config(off).stream.change_gate.enabled is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("stream: {change_gate: {db: 99}}\n")
    with pytest.raises(Exception, match=r"stream\.change_gate\.db"):
        load_config(bad)
