"""Veto sounds on real recordings (issue 29): the real command on a scene built from uiowa-dev
clips (room tone, a confusable sound, then the label's own sound), with the offline backend's
real weights; and the same code path through a CLAP export (the tiny random one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from cli_helpers import cli

RATE = 16000


def clip(uiowa_dir: Path, label: str, i: int) -> Path:
    return uiowa_dir / label.replace(" ", "-") / f"{label.replace(' ', '-')}-{i}.flac"


def heard_again(path: Path, p: Path, seed: int) -> Path:
    """``p`` recorded once more: quieter, 1.5 s into its own few seconds of another room tone."""
    return scene(path, [(p, 1.5, -33)], int(sf.info(str(p)).duration) + 4, seed)


def scene(path: Path, parts: list[tuple[Path, float, float]], seconds: int, seed: int) -> Path:
    """Room tone (seeded) with each clip at ``(start_s, RMS dBFS)``."""
    from monitor.audio_io import read_audio
    from monitor.bench import room_tone

    y = room_tone(seconds, RATE, np.random.default_rng(seed))[: seconds * RATE].astype(np.float32)
    for p, t0, db in parts:
        x = read_audio(p, RATE).samples.astype(np.float32)
        x *= np.float32(10 ** (db / 20) / np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        a = int(t0 * RATE)
        y[a : a + len(x)] += x[: len(y) - a]
    sf.write(path, y, RATE, subtype="PCM_16")
    return path


def run(
    tmp_path: Path, source: Path, label: dict, env: dict, name: str, threshold: float = 0.3, min_windows=2, **scoring
):
    d = tmp_path / name
    d.mkdir()
    cfg = {"labels": [label], "events": {"threshold": threshold, "min_windows": min_windows}}
    if scoring:
        cfg["scoring"] = scoring
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    args = ["run", "--source", source, "--fast", "--no-tui", "--config", d / "config.yaml"]
    args += ["--events", d / "events.jsonl", "--scores", d / "scores.jsonl"]
    r = cli(*args, "--model", env["model"], state=d / "state", env_extra=env.get("extra"))
    assert r.returncode == 0, r.stderr
    starts = [json.loads(x) for x in (d / "events.jsonl").read_text().splitlines()]
    starts = [e["start_s"] for e in starts if e["type"] == "start"]
    held = [json.loads(x)["held"] for x in (d / "scores.jsonl").read_text().splitlines()]
    return starts, held


@pytest.fixture()
def offline_env(offline_model_dir):
    return {"model": "offline", "extra": {"SOUND_MONITOR_OFFLINE_DIR": str(offline_model_dir)}}


def test_a_veto_prompt_silences_a_confusable_sound_and_keeps_the_labels_own(tmp_path, uiowa_dir, offline_env):
    # "ratchet" fires on this bicycle freewheel recording (5 s in) and on a ratchet (25 s in)
    src = scene(
        tmp_path / "scene.wav",
        [(clip(uiowa_dir, "bicycle freewheel", 4), 5, -30), (clip(uiowa_dir, "ratchet", 1), 25, -30)],
        40,
        seed=3,
    )
    starts, _ = run(tmp_path, src, {"name": "ratchet"}, offline_env, "plain")
    assert any(s < 15 for s in starts) and any(s >= 18 for s in starts), starts
    starts, held = run(tmp_path, src, {"name": "ratchet", "veto": ["bicycle freewheel"]}, offline_env, "veto")
    assert not any(s < 15 for s in starts) and any(s >= 18 for s in starts), starts
    assert {"ratchet": "veto:bicycle freewheel"} in held  # and it says why


def test_a_veto_example_silences_the_same_sound_heard_again(tmp_path, uiowa_dir, offline_env):
    coin = clip(uiowa_dir, "coin drop", 1)
    src = scene(tmp_path / "scene.wav", [(coin, 5, -30), (clip(uiowa_dir, "ratchet", 3), 25, -30)], 40, seed=0)
    # the recorded false alarm: the same coin drop heard before
    taught = heard_again(tmp_path / "false-alarm.wav", coin, seed=100)
    starts, _ = run(tmp_path, src, {"name": "ratchet"}, offline_env, "plain")
    assert any(s < 15 for s in starts) and any(s >= 18 for s in starts), starts
    label = {"name": "ratchet", "veto_examples": [str(taught)]}
    starts, held = run(tmp_path, src, label, offline_env, "veto")
    assert not any(s < 15 for s in starts) and any(s >= 18 for s in starts), starts
    assert {"ratchet": "veto:false-alarm.wav"} in held


def test_enroll_veto_then_run_uses_it(tmp_path, uiowa_dir, offline_env):
    """`enroll LABEL --veto CLIP` stores the clip in the state dir; a run with that state dir
    (and a running monitor on its next reload, tests/test_vetoes.py) uses it."""
    coin = clip(uiowa_dir, "coin drop", 1)
    src = scene(tmp_path / "scene.wav", [(coin, 5, -30), (clip(uiowa_dir, "ratchet", 3), 25, -30)], 40, seed=0)
    taught = heard_again(tmp_path / "false-alarm.wav", coin, seed=100)
    state = tmp_path / "state"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"labels": [{"name": "ratchet"}], "events": {"threshold": 0.3}}))
    r = cli("enroll", "ratchet", "--veto", taught, "--config", cfg, state=state, env_extra=offline_env["extra"])
    assert r.returncode == 0, r.stderr
    assert "veto of 'ratchet' taught: false-alarm.wav" in r.stdout
    copy = next((state / "vetoes" / "clips").iterdir())
    taught.unlink()  # the store keeps its own copy
    r = cli("check-config", cfg, state=state)
    assert r.returncode == 0 and "ratchet: clip false-alarm.wav (taught)" in r.stdout, r.stdout + r.stderr
    ev = tmp_path / "events.jsonl"
    args = ["run", "--source", src, "--fast", "--no-tui", "--config", cfg, "--events", ev, "--model", "offline"]
    r = cli(*args, state=state, env_extra=offline_env["extra"])
    assert r.returncode == 0, r.stderr
    starts = [json.loads(x)["start_s"] for x in ev.read_text().splitlines() if '"start"' in x]
    assert not any(s < 15 for s in starts) and any(s >= 18 for s in starts), starts
    # taken back: the confusable sound fires again
    r = cli("enroll", "ratchet", "--forget-veto", "false-alarm.wav", "--config", cfg, state=state)
    assert r.returncode == 0 and not copy.exists(), r.stderr
    ev.unlink()
    r = cli(*args, state=state, env_extra=offline_env["extra"])
    starts = [json.loads(x)["start_s"] for x in ev.read_text().splitlines() if '"start"' in x]
    assert any(s < 15 for s in starts), starts


def test_enroll_veto_refuses_what_it_cannot_use(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not audio")
    r = cli("enroll", "dog", "--veto", bad, state=tmp_path / "state")
    assert r.returncode == 2 and "not a readable audio file" in r.stderr, r.stderr
    assert not (tmp_path / "state" / "vetoes").exists()
    r = cli("enroll", "dog", "--veto-event", "0123abcd", state=tmp_path / "state")
    assert r.returncode == 2 and "no kept clip of event 0123abcd" in r.stderr, r.stderr
    r = cli("enroll", "dog", state=tmp_path / "state")
    assert r.returncode == 2 and "--veto CLIP" in r.stderr


def test_vetoes_run_the_same_code_path_through_clap(tmp_path, tiny_clap_export, demo_dir):
    """A CLAP export (tiny, random weights) with a veto prompt and a veto clip: the clip
    itself is vetoed (it ties with the label on its own audio, less the margin), and the
    `held` reason is in every scores line at or above the threshold."""
    dog = demo_dir / "dog.mp3"
    env = {"model": str(tiny_clap_export)}
    one = {"threshold": 0.0, "min_windows": 1}  # threshold 0 marks every window; the clip is one window
    starts, held = run(tmp_path, dog, {"name": "dog"}, env, "plain", **one)
    assert starts
    label = {"name": "dog", "veto_examples": [str(dog)]}
    starts, held = run(tmp_path, dog, label, env, "clip", **one, veto_clip_margin=0.05)
    assert starts == [] and held and all(h == {"dog": "veto:dog.mp3"} for h in held), held
    # with a text veto too (random weights: either may be the one that decides)
    label["veto"] = ["cat meowing"]
    starts, held = run(tmp_path, dog, label, env, "both", **one, veto_clip_margin=0.05)
    assert starts == [] and held and all(h["dog"] in ("veto:dog.mp3", "veto:cat meowing") for h in held), held
