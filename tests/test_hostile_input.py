"""Configs, caches, files and flags a hostile week produced (issue 15 items 8, 9, 11, 18,
19, 21): each is validated with a line that names where, or handled without a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_helpers import ROOT, cli, start, wait_until
from fixtures_mqtt import Subscriber
from test_reliability import LABELS, OWL, lines, no_traceback, run_owl


def one_line_error(r, *needles) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    no_traceback(r)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, r.stderr
    for n in needles:
        assert n in err[0], err[0]


# -- item 8: scoring.background: [] and a template with another field


@pytest.mark.parametrize(
    "yaml_text, where",
    [
        ("scoring:\n  background: []\n", "scoring.background"),
        ('scoring:\n  templates: ["a {} {x}"]\n', "scoring.templates"),
        ('scoring:\n  templates: ["a {0} {}"]\n', "scoring.templates"),
        ('scoring:\n  templates: ["a {} }"]\n', "scoring.templates"),
    ],
)
def test_scoring_config_is_validated_by_check_config(tmp_path, yaml_text, where):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    one_line_error(cli("check-config", cfg, state=tmp_path / "s"), str(cfg), where)


# -- item 9: a damaged label cache is a miss; a manifest of [] is one line


def test_bad_label_cache_is_a_miss(tiny_clap_export, tmp_path):
    state = tmp_path / "state"
    r = run_owl(tiny_clap_export, state, "--scores", tmp_path / "good.jsonl")
    assert r.returncode == 0, r.stderr
    cache = next((state / "label-cache").glob("*.npz"))
    with np.load(cache) as z:
        texts, vectors = z["texts"], z["vectors"]
    good = lines(tmp_path / "good.jsonl")
    for name, bad in (
        ("wrong-dim", vectors[:, :7]),
        ("nan", np.full_like(vectors, np.nan)),
        ("one-nan", np.where(np.arange(vectors.size).reshape(vectors.shape) == 3, np.nan, vectors)),
    ):
        np.savez(cache, texts=texts, vectors=bad)
        r = run_owl(tiny_clap_export, state, "--scores", tmp_path / f"{name}.jsonl")
        assert r.returncode == 0, (name, r.stderr)
        no_traceback(r)
        got = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]  # strict JSON
        assert len(got) == len(good)
        for a, b in zip(got, good):
            for k in a["scores"]:
                assert a["scores"][k] == pytest.approx(b["scores"][k], abs=1e-5), name


def test_scores_line_is_json_even_for_nan():
    from monitor.types import Scores

    line = Scores(0, 0.0, 5.0, -20.0, ("a", "b"), (float("nan"), 0.5)).to_json_line()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))["scores"]["a"] is None


@pytest.mark.parametrize("text", ["[]", "null", '{"files": []}', "{broken"])
def test_bad_manifest_is_one_line(tmp_path, text):
    model = tmp_path / "model"
    model.mkdir()
    (model / "manifest.json").write_text(text)
    r = cli("run", "--source", OWL, "--fast", "--no-tui", "--model", model, "--labels", LABELS, state=tmp_path / "s")
    one_line_error(r, "manifest.json")
    r = cli("classify", OWL, "--model", model, "--labels", LABELS, state=tmp_path / "s")
    one_line_error(r, "manifest.json")


# -- item 11: a configured monitor without its microphone waits; it never plays the demo


@pytest.mark.slow  # about 10-30 s: a whole model or a real device
def test_missing_microphone_is_waited_for_and_demo_never_published(mosquitto, tiny_clap_export, tmp_path):
    b = mosquitto()
    sub = Subscriber(b.port)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("source:\n  input: mic:no-such-microphone\n  retry_max_s: 1\n")
    err = tmp_path / "err.txt"
    p = start(
        "run",
        "--config",
        str(cfg),
        "--no-tui",
        "--model",
        str(tiny_clap_export),
        "--labels",
        "dog barking,owl",
        "--scoring",
        "softmax",
        "--threshold",
        "0.0",
        "--mqtt",
        f"mqtt://127.0.0.1:{b.port}",
        "--events",
        str(tmp_path / "e.jsonl"),
        state=tmp_path / "state",
        stdout=subprocess.DEVNULL,
        stderr=open(err, "wb"),
        start_new_session=True,
    )
    try:
        time.sleep(8)
        assert p.poll() is None, err.read_text()  # still waiting, not ended after a demo
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, err.read_text()
    finally:
        if p.poll() is None:
            p.kill()
    text = err.read_text()
    assert "waiting for mic:no-such-microphone" in text and "DEMO" not in text
    assert text.count("cannot reopen the source") == 1  # said once (the reason does not change) ...
    failed = int(text.split(" failed), ")[0].rsplit("(", 1)[1])
    assert failed >= 2  # ... and retried with backoff, counted in the summary
    assert not (tmp_path / "e.jsonl").exists() or (tmp_path / "e.jsonl").read_text() == ""
    assert not [t for t, _, _ in sub.messages if t.endswith("/events")]
    assert not any(t.endswith("/state") and pl == b"ON" for t, pl, _ in sub.messages)
    sub.close()


# -- item 18: config mistakes that used to pass


def test_hysteresis_duplicate_keys_and_missing_files(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("events:\n  threshold: 0.3\n  hysteresis: 0.3\nlabels: [dog barking]\n")
    one_line_error(cli("check-config", cfg, state=tmp_path / "s"), "hysteresis", "never end")
    cfg.write_text("labels:\n  - name: dog barking\n    threshold: 0.2\n    hysteresis: 0.25\n")
    one_line_error(cli("check-config", cfg, state=tmp_path / "s"), "labels[0]", "hysteresis")
    cfg.write_text("labels: [a]\nmqtt:\n  host: x\nlabels: [b]\n")
    one_line_error(cli("check-config", cfg, state=tmp_path / "s"), "'labels' is given twice", "line 4")
    cfg.write_text(
        f"labels:\n  - name: dog\n    examples: [{tmp_path}/gone.wav]\nmodel:\n  spec: {tmp_path}/nomodel\n"
        f"  adapter: {tmp_path}/a.npz\nmqtt:\n  host: h\n  password_file: {tmp_path}/pw\n"
    )
    r = cli("check-config", cfg, state=tmp_path / "s")
    one_line_error(r, "labels[0].examples[0]", "gone.wav", "model.spec", "model.adapter", "mqtt.password_file")


def test_check_config_prints_effective_device_and_dirs(tmp_path):
    import socket

    cfg = tmp_path / "c.yaml"
    cfg.write_text("labels: [dog barking]\n")
    r = cli("check-config", cfg, state=tmp_path / "s")
    assert r.returncode == 0, r.stderr
    import yaml

    data = yaml.safe_load(r.stdout)
    assert data["device_id"] == socket.gethostname()
    assert data["state_dir"] == str(tmp_path / "s")
    assert data["model"]["models_dir"].endswith("sound-monitor/models")


def test_reload_after_implicit_config_deleted_keeps_running_config(tiny_clap_export, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.yaml").write_text("labels: [owl, dog barking]\nscoring:\n  method: softmax\n")
    err = tmp_path / "err.txt"
    p = start(
        "run",
        "--source",
        "-",
        "--rate",
        "16000",
        "--no-tui",
        "--model",
        str(tiny_clap_export),
        "--scores",
        str(tmp_path / "s.jsonl"),
        state=tmp_path / "state",
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=open(err, "wb"),
        cwd=work,
        start_new_session=True,
    )
    try:
        p.stdin.write(np.zeros(16000 * 7, "<i2").tobytes())
        p.stdin.flush()
        wait_until(lambda: (tmp_path / "s.jsonl").exists() and (tmp_path / "s.jsonl").read_text(), 60, every_s=0.1)
        (work / "config.yaml").unlink()
        p.send_signal(signal.SIGHUP)
        time.sleep(2)
        p.stdin.write(np.zeros(16000 * 3, "<i2").tobytes())
        p.stdin.close()
        assert p.wait(60) == 0, err.read_text()
    finally:
        if p.poll() is None:
            p.kill()
    text = err.read_text()
    assert "config file not found" in text
    assert all(set(x["scores"]) == {"owl", "dog barking"} for x in lines(tmp_path / "s.jsonl"))


# -- item 19: empty, truncated and garbage files; no decoder noise


def test_empty_truncated_and_garbage_files(tmp_path):
    import soundfile as sf

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    trunc = tmp_path / "trunc.wav"
    sf.write(trunc, np.zeros(16000, np.float32), 16000)
    trunc.write_bytes(trunc.read_bytes()[:44])  # header only: says one second, holds nothing
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(os.urandom(5000))
    for f, needle in ((empty, "no samples"), (trunc, "cut off"), (garbage, "cannot decode")):
        for cmd in (
            ["run", "--source", f, "--fast", "--no-tui", "--model", "offline"],
            ["classify", f, "--model", "offline"],
        ):
            r = cli(*cmd, "--labels", "dog", state=tmp_path / "s", env_extra={"HF_ENDPOINT": "http://127.0.0.1:9"})
            one_line_error(r, needle, str(f))
            assert "does not exist" not in r.stderr and "mpg123" not in r.stderr


def test_bundled_demo_decodes_without_warnings():
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import soundfile as sf, glob\n[sf.read(p) for p in sorted(glob.glob('monitor/demo/*.mp3'))]",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr


# -- item 21: small ones


def test_verbose_after_subcommand_and_threshold_overrides_labels(tiny_clap_export, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("labels:\n  - name: owl\n    threshold: 0.99\n  - dog barking\nscoring:\n  method: softmax\n")
    r = cli("check-config", cfg, "-v", state=tmp_path / "s")
    assert r.returncode == 0, r.stderr
    r = cli(
        "run",
        "-v",
        "--config",
        cfg,
        "--source",
        OWL,
        "--fast",
        "--no-tui",
        "--model",
        tiny_clap_export,
        "--threshold",
        "0.0",
        "--events",
        tmp_path / "e.jsonl",
        state=tmp_path / "s",
    )
    assert r.returncode == 0, r.stderr
    evs = lines(tmp_path / "e.jsonl")
    assert {e["label"] for e in evs} == {"owl", "dog barking"}  # owl's 0.99 gave way to --threshold
    starts = sum(e["type"] == "start" for e in evs)
    assert f"{starts} event(s) ({len(evs)} start/end messages)" in r.stderr
    # one log format, UTC: every line starts with an ISO time ending in Z
    for line in r.stderr.strip().splitlines():
        assert line[:4].isdigit() and line[10] == "T" and line[23] == "Z", line


def test_one_label_classify_is_not_always_one(tiny_clap_export, tmp_path):
    r = cli("classify", OWL, "--model", tiny_clap_export, "--labels", "owl", "--json", state=tmp_path / "s")
    assert r.returncode == 0, r.stderr
    score = json.loads(r.stdout)[0]["scores"][0]["score"]
    assert 0.0 < score < 1.0 and "background" in r.stderr


def test_export_refuses_a_folder_with_unrelated_files(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "out"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    r = cli("export", "--model", tmp_path / "no-such-checkpoint", "--out", out, state=tmp_path / "s")
    assert r.returncode == 2 and "not empty" in r.stderr, r.stderr
    assert sorted(os.listdir(out)) == ["holiday.jpg"]


def test_models_list_verifies_hashes(tiny_clap_export, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_clap_export, models / "clap-tiny")
    r = cli("models", "list", "--models-dir", models, state=tmp_path / "s")
    assert r.returncode == 0 and "ok: every file matches" in r.stdout, r.stdout + r.stderr
    victim = next(p for p in (models / "clap-tiny").glob("*.onnx"))
    with open(victim, "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    r = cli("models", "list", "--models-dir", models, state=tmp_path / "s")
    assert "DAMAGED" in r.stdout and victim.name in r.stdout, r.stdout


# -- item 10: classify streams long files (same scores, memory of a few crops)


def test_long_file_classify_streams_crop_by_crop(tiny_clap_export, tmp_path):
    import soundfile as sf

    from monitor.audio_io import read_audio
    from monitor.commands import classify
    from monitor.models.clap.encoder import ClapBackend

    parts = [read_audio(p, 44100).samples for p in sorted((ROOT / "monitor" / "demo").glob("*.mp3"))]
    x = np.concatenate(parts * 3)[: int(75.3 * 44100)]
    f = tmp_path / "long.wav"
    sf.write(f, np.stack([x, 0.5 * x], 1), 44100)
    b = ClapBackend.from_dir(tiny_clap_export, threads=1)
    whole = b.embed_audio(read_audio(f, b.sample_rate_hz).samples[None, :])
    streamed, duration = classify.embed_streamed(f, b)
    assert duration == pytest.approx(75.3, abs=1e-3)
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    assert 75.3 > classify.STREAM_S
    r = cli("classify", f, "--model", tiny_clap_export, "--labels", "owl,dog", "--json", state=tmp_path / "s")
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)[0]["scores"]
    from monitor.models.labels import label_embeddings, softmax_scores

    want = softmax_scores(whole, label_embeddings(b, ["owl", "dog"]), b.logit_scale)[0]
    assert {s["label"]: s["score"] for s in top} == pytest.approx({"owl": want[0], "dog": want[1]}, abs=1e-5)


# -- item 20: the live view stays whole: logs above it, rows fit the terminal, backlog shown


def test_live_view_fits_and_shows_backlog():
    from rich.console import Console

    from monitor.sinks.terminal import ViewState, render

    labels = tuple(f"label number {i}" for i in range(30))
    st = ViewState(
        model="m",
        source="mic",
        labels=labels,
        thresholds={l: 0.5 for l in labels},
        scores={l: i / 30 for i, l in enumerate(labels)},
        active={"label number 3"},
        sinks={"mqtt": "connected, backlog 12 (40 s)"},
        source_status="ok",
    )
    con = Console(record=True, width=80, height=24, force_terminal=True)
    con.print(render(st, 24))
    text = con.export_text()
    assert len(text.rstrip("\n").splitlines()) <= 24, text
    assert "source: ok" in text and "backlog 12" in text
    assert "label number 3 " in text and "label number 29" in text  # active first, then the highest
    assert "more label(s)" in text


def test_logs_go_through_the_live_console(tmp_path):
    import io
    import logging
    import threading

    from monitor import logs
    from monitor.sinks.terminal import TerminalSink, ViewState

    err = io.StringIO()
    logs.setup(0, stream=err)
    out = io.StringIO()
    sink = TerminalSink(ViewState(labels=("a",)), live=True, stream=out)
    done = threading.Event()
    t = threading.Thread(target=sink.run_live, args=(lambda: None, done))
    t.start()
    time.sleep(0.5)
    logging.getLogger("monitor.test").warning("a warning during the live view")
    time.sleep(0.5)
    done.set()
    t.join(10)
    assert "a warning during the live view" in out.getvalue()
    assert "a warning during the live view" not in err.getvalue()  # not written across the view
    logging.getLogger("monitor.test").warning("after the view")
    assert "after the view" in err.getvalue()  # the plain handler is back
    line = [x for x in err.getvalue().splitlines() if "after the view" in x][0]
    assert line[10] == "T" and line[23] == "Z" and "WARNING monitor.test: after the view" in line
