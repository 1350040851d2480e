"""Alerts you can trust (issue 29): veto sounds, k-of-n confirmation and why a sound did not
fire -- the tracker on scripted scores (its stream-time clock), the scorer's arithmetic on a
backend whose vectors are chosen, the config's refusals, the veto store and the reload that
picks a taught veto up. Real recordings: tests/test_vetoes_real.py."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from monitor.config import Config, EventsConfig, LabelConfig, ScoringConfig, load_config, parse_config
from monitor.errors import UserError
from monitor.events import EventTracker, rules_for
from monitor.models.vetoes import Veto, VetoStore, event_clip, vetoes_for
from monitor.runtime.control import ControlPlane, Controls
from monitor.runtime.reload import ConfigReloader
from monitor.scoring import Scorer
from monitor.types import Scores, VetoCheck


def tracker(labels=("dog",), **events_kw):
    rules = rules_for([LabelConfig(name=n) for n in labels], EventsConfig(**events_kw))
    n = itertools.count(1)
    return EventTracker(rules, device_id="d", source="s", model="m", next_seq=lambda: next(n))


def window(i, value, *, label="dog", hop=1.0, gated=False, vetoes=None):
    return Scores(i, i * hop, i * hop + 5.0, -20.0, (label,), (value,), gated=gated, vetoes=vetoes or {})


def run(tr, values, **kw):
    """Feed values (None: a gated window); -> [(window, event type, start_s)], [held per window]."""
    events, held = [], []
    for i, v in enumerate(values):
        sc = window(i, 0.0 if v is None else v, gated=v is None, **kw)
        events += [(i, e.type, e.start_s) for e in tr.update(sc)]
        held.append(dict(tr.held))
    return events, held


# -- k-of-n confirmation ---------------------------------------------------------------------
def test_default_within_windows_is_min_windows_in_a_row():
    tr = tracker(min_windows=2, cooldown_s=0.0)
    events, held = run(tr, [0.6, 0.1, 0.6, 0.1, 0.6, 0.6])
    assert events == [(5, "start", 4.0)]  # 2 of 2: a gap resets
    assert held[0] == {"dog": "confirming 1/2"} and held[2] == {"dog": "confirming 1/2"} and held[1] == {}


def test_two_of_three_starts_at_the_first_of_its_windows():
    tr = tracker(min_windows=2, within_windows=3, cooldown_s=0.0)
    events, held = run(tr, [0.1, 0.6, 0.1, 0.6, 0.6])
    assert events[0] == (3, "start", 1.0)  # windows 1 and 3 of 1..3: starts at window 1's start
    assert held[1] == {"dog": "confirming 1/2"} and held[3] == {}


def test_k_of_n_forgets_what_fell_out_of_the_last_n_windows():
    tr = tracker(min_windows=3, within_windows=4, cooldown_s=0.0)
    events, held = run(tr, [0.6, 0.1, 0.1, 0.6, 0.6, 0.1, 0.6])
    # window 0 is out of the last 4 by window 4; 3, 4, 6 are 3 of the last 4 at window 6
    assert events == [(6, "start", 3.0)]
    assert held[4] == {"dog": "confirming 2/3"}


def test_k_of_n_never_starts_inside_the_cooldown():
    tr = tracker(min_windows=2, within_windows=3, cooldown_s=3.0, hysteresis=0.1)
    events, held = run(tr, [0.6, 0.6, 0.1] + [0.6] * 8)
    # 0 and 1 start it; window 2 ends it at 6.0 (window 1's end); windows 3..8 begin before
    # 6.0 + 3.0 and never count; 9 and 10 confirm it, starting at 9.0
    assert [(i, t) for i, t, _ in events] == [(1, "start"), (2, "end"), (10, "start")]
    assert events[2][2] == 9.0
    assert all(held[i] == {"dog": "cooldown"} for i in range(3, 9))
    assert held[9] == {"dog": "confirming 1/2"} and held[10] == {}


def test_within_windows_below_min_windows_is_refused_with_its_path():
    with pytest.raises(UserError, match=r"events.*within_windows \(1\) must be at least min_windows \(2\)"):
        parse_config({"events": {"min_windows": 2, "within_windows": 1}})
    with pytest.raises(UserError, match=r"labels\[0\].*within_windows \(2\) must be at least min_windows \(3\)"):
        parse_config({"labels": [{"name": "dog", "min_windows": 3, "within_windows": 2}]})


# -- held reasons ----------------------------------------------------------------------------
def test_held_paused_switched_off_below_gate_and_rearming(tmp_path):
    cfg = Config(labels=["dog"], events=EventsConfig(min_windows=1, cooldown_s=0.0, max_event_s=3.0))
    controls = Controls(tmp_path, "dev")
    controls.set_enabled(False)
    rules = controls.rules(cfg)
    assert rules["dog"].off_reason == "paused"
    tr = EventTracker(rules, device_id="d", source="s", model="m", next_seq=lambda: 1)
    assert tr.update(window(0, 0.9)) == [] and tr.held == {"dog": "paused"}
    assert tr.update(window(1, 0.2)) == [] and tr.held == {}  # below its threshold: nothing to say
    controls.set_enabled(True)
    controls.set_label_enabled("dog", False)
    tr.set_rules(controls.rules(cfg), end_s=0.0)
    tr.update(window(2, 0.9))
    assert tr.held == {"dog": "switched off"}
    controls.set_label_enabled("dog", True)
    tr.set_rules(controls.rules(cfg), end_s=0.0)
    assert [e.type for e in tr.update(window(3, 0.9))] == ["start"] and tr.held == {}
    assert tr.update(window(4, 0.0, gated=True))[0].type == "end"  # a gated window scores 0
    assert tr.held == {"dog": "below gate"}  # the last scored window was at/above the threshold
    tr.update(window(5, 0.0, gated=True))
    assert tr.held == {"dog": "below gate"}
    tr.update(window(6, 0.1))
    assert tr.held == {}
    # max_event_s: forced end, then re-arming until it falls below the off level
    ev = [e.type for i in range(7, 12) for e in tr.update(window(i, 0.9))]
    assert ev == ["start", "end"] and tr.held == {"dog": "re-arming"}


def test_held_veto_when_the_veto_takes_the_label_below_its_threshold_or_beats_it():
    tr = tracker(min_windows=1, cooldown_s=0.0, threshold=0.5)
    # the veto lowered the score below the threshold: held, naming the veto
    check = {"dog": VetoCheck("vacuum cleaner", raw=0.7, beats=False)}
    assert tr.update(window(0, 0.4, vetoes=check)) == [] and tr.held == {"dog": "veto:vacuum cleaner"}
    # the veto is more like the window than the label: the window does not count, whatever the score
    beats = {"dog": VetoCheck("false-alarm.wav", raw=0.8, beats=True)}
    assert tr.update(window(1, 0.55, vetoes=beats)) == [] and tr.held == {"dog": "veto:false-alarm.wav"}
    # a veto that changes nothing: the label fires
    calm = {"dog": VetoCheck("vacuum cleaner", raw=0.9, beats=False)}
    assert [e.type for e in tr.update(window(2, 0.88, vetoes=calm))] == ["start"] and tr.held == {}


def test_held_travels_in_the_scores_line():
    sc = dataclasses.replace(window(0, 0.7), held={"dog": "confirming 1/2"})
    line = json.loads(sc.to_json_line())
    assert line["held"] == {"dog": "confirming 1/2"}
    assert json.loads(window(0, 0.1).to_json_line())["held"] == {}


# -- the scorer's arithmetic --------------------------------------------------------------------
class VectorBackend:
    """A backend whose text vectors are chosen per text (the test's geometry); audio vectors
    come from the test directly."""

    name = "vectors"
    cache_key = "vectors-test"
    prototype_key = "vectors-test"
    embedding_dim = 3
    logit_scale = 10.0
    prompt_templates = False
    normalise_labels = True
    label_norm = 1.0
    sample_rate_hz = 16000
    window_s = 1.0

    def __init__(self, vectors):
        self.vectors = {k: np.asarray(v, np.float32) / np.linalg.norm(v) for k, v in vectors.items()}
        self.text_calls: list[list[str]] = []

    def embed_text(self, texts):
        self.text_calls.append(list(texts))
        return np.stack([self.vectors[t] for t in texts])

    def release_text(self):
        pass


def unit(*v):
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


GEOMETRY = {"smoke alarm": [1, 0, 0], "microwave beep": [0.2, 1, 0], "silence": [0, 0, 1], "noise": [0, 0.2, 1]}


@pytest.mark.parametrize("method", ["vs-background", "softmax"])
def test_a_veto_marks_the_windows_like_it_and_with_veto_competes_joins_the_competitors(method):
    be = VectorBackend(GEOMETRY)
    labels = [LabelConfig(name="smoke alarm", veto=("microwave beep",))]
    bg = ("silence", "noise")
    plain = Scorer(be, [LabelConfig(name="smoke alarm")], ScoringConfig(method=method, background=bg))
    beep, alarm = unit(0.45, 0.9, 0.05), unit(1, 0.02, 0.02)
    raw_beep, raw_alarm = float(plain.score(beep)[0, 0]), float(plain.score(alarm)[0, 0])
    for competes in (False, True):
        scoring = ScoringConfig(method=method, background=bg, veto_competes=competes)
        vetoed = Scorer(be, labels, scoring, vetoes=vetoes_for(Config(labels=labels, scoring=scoring)))
        v_beep, checks_beep = vetoed.score_window(beep)
        v_alarm, checks_alarm = vetoed.score_window(alarm)
        # the beep: more like the veto than the label -> marked (the tracker does not count it)
        assert checks_beep["smoke alarm"] == VetoCheck("microwave beep", pytest.approx(raw_beep, abs=1e-5), True)
        # the alarm itself: the veto is far, not marked, and the score hardly moves
        assert not checks_alarm["smoke alarm"].beats
        assert v_alarm[0] == pytest.approx(raw_alarm, abs=0.002)
        if competes:  # the veto joins the competitors: the beep's score falls
            assert v_beep[0] < raw_beep - 0.05
        else:  # the score is the label's own; only the mark says "vetoed"
            assert v_beep[0] == pytest.approx(raw_beep, abs=1e-6)
        final, raw, best, beats = vetoed.score_detail(np.stack([beep, alarm]))
        assert np.allclose(final[:, 0], [v_beep[0], v_alarm[0]]) and beats[:, 0].tolist() == [True, False]
        assert np.allclose(vetoed.score(np.stack([beep, alarm])), final)


def test_the_margin_decides_how_near_a_veto_may_come():
    """A window a little more like the label than like the veto: counted with margin 0,
    vetoed with a margin larger than the difference (cosine units)."""
    be = VectorBackend(GEOMETRY)
    labels = [LabelConfig(name="smoke alarm", veto=("microwave beep",))]
    w = unit(0.8, 0.6, 0.0)  # cos 0.8 to the label, ~0.75 to the veto
    for margin, vetoed in ((0.0, False), (0.1, True)):
        scoring = ScoringConfig(background=("silence", "noise"), veto_margin=margin)
        sc = Scorer(be, labels, scoring, vetoes=vetoes_for(Config(labels=labels, scoring=scoring)))
        assert sc.score_window(w)[1]["smoke alarm"].beats is vetoed


def test_without_vetoes_the_scores_are_exactly_todays():
    be = VectorBackend(GEOMETRY)
    labels = [LabelConfig(name="smoke alarm"), LabelConfig(name="microwave beep")]
    for method in ("vs-background", "softmax"):
        sc = Scorer(be, labels, ScoringConfig(method=method, background=("silence", "noise")), vetoes={})
        x = np.stack([unit(1, 0.3, 0.1), unit(0.2, 1, 0.4)])
        assert not sc.has_vetoes
        # the detail path (used when there are vetoes) is the same formula: same numbers
        final, raw, _, _ = sc.score_detail(x)
        assert np.allclose(raw, sc.score(x), atol=1e-6) and np.allclose(final, raw)


def test_global_vetoes_apply_to_every_label_but_never_to_the_label_they_name():
    cfg = parse_config(
        {
            "scoring": {"veto": ["speech", "television"]},
            "labels": [{"name": "dog barking", "veto": ["cat meowing"]}, {"name": "speech"}],
        }
    )
    v = vetoes_for(cfg)
    assert [x.name for x in v["dog barking"]] == ["cat meowing", "speech", "television"]
    assert [x.name for x in v["speech"]] == ["television"]


# -- config refusals -------------------------------------------------------------------------
def test_empty_veto_lists_and_bad_paths_are_refused_with_their_yaml_path(tmp_path):
    with pytest.raises(UserError, match=r"labels\[0\]\.veto: an empty list"):
        parse_config({"labels": [{"name": "dog", "veto": []}]})
    with pytest.raises(UserError, match=r"labels\[0\]\.veto_examples: an empty list"):
        parse_config({"labels": [{"name": "dog", "veto_examples": []}]})
    with pytest.raises(UserError, match=r"scoring\.veto: an empty list"):
        parse_config({"scoring": {"veto": []}})
    with pytest.raises(UserError, match=r"given twice"):
        parse_config({"scoring": {"veto": ["speech", "Speech"]}})
    p = tmp_path / "cfg.yaml"
    p.write_text(f"labels:\n  - name: dog\n    veto_examples: [{tmp_path}/nope.wav]\n")
    cfg = load_config(p)
    from monitor.config import missing_files
    from monitor.models.vetoes import check_veto_clips

    assert missing_files(cfg) == [f"labels[0].veto_examples[0]: file not found: {tmp_path}/nope.wav"]
    with pytest.raises(UserError, match=r"labels\[0\]\.veto_examples\[0\]: file not found"):
        check_veto_clips(cfg)


# -- the store -------------------------------------------------------------------------------
def test_store_copies_clips_privately_dedupes_and_undoes(tmp_path):
    clip = tmp_path / "beep.wav"
    clip.write_bytes(b"RIFF....WAVEfake")
    store = VetoStore(tmp_path / "state")
    e1, new1 = store.add("Smoke alarm", clip, "event 0123abcd")
    e2, new2 = store.add("smoke alarm", clip)
    assert new1 and not new2 and e1 == e2
    copy = store.dir / e1["clip"]
    assert copy.read_bytes() == clip.read_bytes() and (copy.stat().st_mode & 0o777) == 0o600
    assert (store.dir.stat().st_mode & 0o777) == 0o700
    clip.unlink()  # the original may go (an event clip deleted by the clips budget): the veto stays
    cfg = Config(labels=["smoke alarm"])
    [veto] = vetoes_for(cfg, store)["smoke alarm"]
    assert veto == Veto("beep.wav", clip=copy, taught=True) and veto.describe() == "clip beep.wav (taught)"
    assert store.remove("smoke alarm", "beep.wav") and not copy.exists()
    assert vetoes_for(cfg, store)["smoke alarm"] == () and not store.remove("smoke alarm", "beep.wav")


def test_event_clip_is_found_by_event_id(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    (d / "clip-20261207T101010Z-smoke-alarm-0123abcd.flac").write_bytes(b"x")
    assert event_clip([d], "0123abcd4567ef").name.endswith("0123abcd.flac")
    with pytest.raises(UserError, match="no kept clip"):
        event_clip([d], "ffffffff")
    with pytest.raises(UserError, match="at least the first 8 hex"):
        event_clip([d], "0123")


# -- a taught veto reaches a running monitor on reload ------------------------------------------
def test_a_taught_veto_is_picked_up_by_the_reloader(tmp_path):
    cfg = Config(labels=["smoke alarm"], state_dir=str(tmp_path / "state"))
    store = VetoStore(cfg.state_path)
    plane = ControlPlane(cfg, Controls(cfg.state_path, "dev"), veto_store=store)
    applied: list[Config] = []
    r = ConfigReloader(lambda: cfg, applied.append, cfg, threading.Event(), extra_paths=[store.path])
    assert r.reload_once() == "config reloaded: no live change" and not applied
    clip = tmp_path / "beep.wav"
    clip.write_bytes(b"RIFF-fake")
    store.add("smoke alarm", clip)
    assert r.reload_once() == "config reloaded: taught clips changed" and len(applied) == 1
    assert [v.name for v in plane.vetoes()["smoke alarm"]] == ["beep.wav"]
    assert r.reload_once() == "config reloaded: no live change"  # applied once


def test_a_veto_clips_window_embeddings_are_cached(tmp_path):
    import soundfile as sf
    from stream_helpers import BandEnergyBackend

    from monitor.models.prototypes import clip_window_embeddings

    wav = tmp_path / "beep.wav"
    sf.write(wav, np.random.default_rng(0).standard_normal(16000 * 12).astype(np.float32) * 0.1, 16000)
    be = BandEnergyBackend()
    first = clip_window_embeddings(be, wav, tmp_path / "cache")
    assert first.shape == (3, be.embedding_dim) and be.calls == 1  # 12 s: windows at 0, 5 and 7 s
    again = clip_window_embeddings(be, wav, tmp_path / "cache")
    assert be.calls == 1 and np.allclose(first, again)


def test_the_live_view_shows_why_a_label_is_held():
    from rich.console import Console

    from monitor.sinks.terminal import TerminalSink, ViewState, render

    term = TerminalSink(
        ViewState(labels=("smoke alarm", "dog"), thresholds={"smoke alarm": 0.5, "dog": 0.5}), live=False
    )
    sc = Scores(0, 0.0, 5.0, -20.0, ("smoke alarm", "dog"), (0.7, 0.1), held={"smoke alarm": "veto:microwave beep"})
    term.on_scores(sc)
    c = Console(record=True, width=140)
    c.print(render(term.state))
    line = [x for x in c.export_text().splitlines() if "smoke alarm" in x][0]
    assert "held: veto:microwave beep" in line
    term.on_scores(dataclasses.replace(sc, held={}))  # the next window: nothing held, nothing shown
    c = Console(record=True, width=140)
    c.print(render(term.state))
    assert "held:" not in c.export_text()


def _shaped_noise(gains, seed: int, n: int = 80000) -> np.ndarray:
    """Noise whose 16 bands (BandEnergyBackend's) carry ``gains``: a sound with its own colour."""
    x = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    for g, band in zip(gains, np.array_split(np.arange(len(x)), 16)):
        x[band] *= g
    return (np.fft.irfft(x, n) * 0.05).astype(np.float32)


def test_a_veto_clip_wins_only_where_it_is_nearer_than_the_labels_own_examples(tmp_path):
    """One nearest neighbour between the two sides: a window of the label's own sound that is
    somewhat like a taught false alarm is vetoed while the label has no example clips, and
    counts once it has one ("this was"); the false alarm heard again is vetoed either way."""
    import soundfile as sf
    from stream_helpers import BandEnergyBackend

    def colour(**bands):
        g = np.ones(16)
        for k, v in bands.items():
            g[int(k[1:])] = v
        return g

    false_alarm, own, own_like_it = colour(b3=6, b4=6), colour(b3=6, b5=6), colour(b3=6, b4=2.5, b5=4)
    veto_wav, own_wav = tmp_path / "freewheel.wav", tmp_path / "this-was-ratchet.wav"
    sf.write(veto_wav, _shaped_noise(false_alarm, 1), 16000)
    sf.write(own_wav, _shaped_noise(own, 2), 16000)
    be = BandEnergyBackend()
    window = be.embed_audio(_shaped_noise(own_like_it, 3)[None])[0]  # 0.74 like the veto, 0.91 like the example
    again = be.embed_audio(_shaped_noise(false_alarm, 4)[None])[0]  # the false alarm heard again
    scoring = ScoringConfig(background=("silence", "room tone"), veto_clip_margin=0.3)  # a clip vetoes from 0.7 on
    beats, scores = {}, {}
    own_clip = (str(own_wav),)
    for name, kw in (("no examples", {}), ("examples", {"examples": own_clip}), ("confirmed", {"confirmed": own_clip})):
        labels = [LabelConfig(name="ratchet", veto_examples=(str(veto_wav),), **kw)]
        sc = Scorer(be, labels, scoring, cache_dir=tmp_path / name, vetoes=vetoes_for(Config(labels=labels)))
        beats[name] = [sc.score_window(x)[1]["ratchet"].beats for x in (window, again)]
        scores[name] = [sc.score_window(x)[0][0] for x in (window, again)]
    assert beats == {"no examples": [True, True], "examples": [False, True], "confirmed": [False, True]}
    # a confirmed clip changes nothing in the label's score (an example clip joins its vector)
    assert scores["confirmed"] == scores["no examples"] != scores["examples"]


def test_a_confirmation_goes_through_the_control_plane_into_the_labels_confirmed_clips(tmp_path):
    """ "Yes, that was LABEL" (the web page): a Command the plane keeps in the confirmed store;
    the label's ``confirmed`` clips (not its examples) carry it; taken back, it is gone."""
    from monitor.models.vetoes import ConfirmedStore, ExampleStore, with_taught_examples
    from monitor.runtime.control import Command

    cfg = Config(labels=["ratchet"], state_dir=str(tmp_path / "state"))
    sure, examples = ConfirmedStore(cfg.state_path), ExampleStore(cfg.state_path)
    plane = ControlPlane(cfg, Controls(cfg.state_path, "dev"), example_store=examples, confirmed_store=sure)
    clip = tmp_path / "clip-ratchet-0123abcd.wav"
    clip.write_bytes(b"RIFF-fake")
    assert plane.apply(Command("confirm", "ratchet", str(clip), via="web", origin="event 0123abcd")) is None
    [lab] = with_taught_examples(cfg, examples, sure).labels
    assert lab.examples == () and [Path(p).parent.name for p in lab.confirmed] == ["clips"]
    assert sure.entries("ratchet")[0]["from"] == "event 0123abcd"
    assert plane.apply(Command("forget_confirm", "ratchet", clip.name, via="web")) is None
    assert with_taught_examples(cfg, examples, sure).labels[0].confirmed == ()
    assert "no taught confirmation" in plane.apply(Command("forget_confirm", "ratchet", "nope.wav", via="web"))


def test_check_config_lists_the_clips_taught_on_the_web_page(tmp_path):
    from cli_helpers import cli

    from monitor.models.vetoes import ConfirmedStore, ExampleStore

    state = tmp_path / "state"
    clip = tmp_path / "clip-ratchet-0123abcd.wav"
    clip.write_bytes(b"RIFF-fake")
    ConfirmedStore(state).add("ratchet", clip, "event 0123abcd")
    ExampleStore(state).add("dog barking", clip, "event 0123abcd")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("labels: [ratchet, dog barking]\n")
    r = cli("check-config", cfg, state=state)
    assert r.returncode == 0, r.stderr
    assert "#   ratchet: clip-ratchet-0123abcd.wav" in r.stdout.split('"yes, that was LABEL"')[1]
    assert "#   dog barking: clip-ratchet-0123abcd.wav" in r.stdout.split('"this was LABEL"')[1]


def test_enroll_confirm_stores_a_confirmation_and_takes_it_back(tmp_path):
    """`enroll LABEL --confirm CLIP` = the web page's "Yes, that was LABEL" from the command line."""
    import soundfile as sf
    from cli_helpers import cli

    state = tmp_path / "state"
    clip = tmp_path / "our-ratchet.wav"
    sf.write(clip, np.zeros(16000, np.float32), 16000)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("labels: [ratchet]\n")
    r = cli("enroll", "ratchet", "--confirm", clip, "--config", cfg, state=state)
    assert r.returncode == 0, r.stderr
    assert "confirmation of 'ratchet' taught: our-ratchet.wav" in r.stdout
    assert (state / "confirmed" / "confirmed.json").is_file() and not (state / "vetoes").exists()
    r = cli("check-config", cfg, state=state)
    assert "#   ratchet: our-ratchet.wav" in r.stdout.split('"yes, that was LABEL"')[1], r.stdout
    r = cli("enroll", "ratchet", "--confirm", clip, "--veto", clip, state=state)
    assert r.returncode == 2 and "one of them in one call" in r.stderr
    r = cli("enroll", "ratchet", "--forget-confirm", "our-ratchet.wav", "--config", cfg, state=state)
    assert r.returncode == 0 and "confirmation 'our-ratchet.wav' of 'ratchet' taken back" in r.stdout, r.stderr
    r = cli("enroll", "ratchet", "--forget-confirm", "our-ratchet.wav", state=state)
    assert r.returncode == 2 and "has no taught confirmation" in r.stderr
