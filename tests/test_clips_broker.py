"""Clips sink (local audio around events, size/age budget) and a broker restart mid-run."""

from __future__ import annotations

import json
import os
import stat
import time
from datetime import datetime

import numpy as np
import soundfile as sf
from fault_helpers import RATE, ScriptSource, make_pipeline, noise, pairs_balanced
from fixtures_mqtt import Subscriber

from monitor.config import ClipsConfig, EventsConfig, MQTTConfig, StreamConfig
from monitor.sinks.clips import ClipsSink, enforce_budget
from monitor.sinks.jsonl import JsonlEventSink
from monitor.sinks.mqtt import MqttSink

BURSTY = EventsConfig(threshold=0.01, hysteresis=0.005, min_windows=1, cooldown_s=0.0)


def bursts(n, on_s=6, off_s=6):
    """Noise bursts separated by digital silence (gated -> scores 0 -> events end)."""
    steps = []
    for i in range(n):
        steps.append(("audio", noise(on_s, seed=i)))
        steps.append(("audio", np.zeros(off_s * RATE, np.float32)))
    return steps


def test_clips_written_around_events_local_private(tmp_path):
    clips = ClipsSink(ClipsConfig(enabled=True, dir=str(tmp_path / "clips"), max_total_mb=50, max_age_days=1))
    steps = bursts(2)
    full = np.concatenate([a for _, a in steps])
    src = ScriptSource(steps, speed=0, realtime=False)
    pipe, c = make_pipeline(src, sinks=[clips], events=BURSTY, stream=StreamConfig(gate_dbfs=-60))
    pipe.run()
    ends = [e for e in c.events if e.type == "end"]
    assert len(ends) == 6 and pairs_balanced(c.events)
    files = sorted((tmp_path / "clips").glob("clip-*.flac"))
    assert len(files) == 6 and clips.dropped == 0
    assert stat.S_IMODE((tmp_path / "clips").stat().st_mode) == 0o700
    t_run = time.time()
    for e in ends:
        f = [p for p in files if e.event_id[:8] in p.name]
        assert len(f) == 1 and stat.S_IMODE(f[0].stat().st_mode) == 0o600
        assert e.clip == str(f[0])  # the end event names its clip (and every sink got it so)
        start = next(s for s in c.events if s.type == "start" and s.event_id == e.event_id)
        assert start.clip is None and start.start_time == e.start_time
        t0 = datetime.fromisoformat(e.start_time.replace("Z", "+00:00")).timestamp()
        assert t_run - 120 < t0 - e.start_s < t_run  # stream time 0 on the wall clock, this run
        audio, rate = sf.read(f[0])
        assert rate == 16000
        # from start_s - 1 s (clamped at 0) to end_s + 1 s
        want = (e.end_s + 1.0) - max(0.0, e.start_s - 1.0)
        assert abs(audio.size / rate - want) < 0.01
        # exactly the stream's audio over that span (16-bit quantisation), burst included
        a = int(round(max(0.0, e.start_s - 1.0) * rate))
        np.testing.assert_allclose(audio, full[a : a + audio.size], atol=2 / 32768)
        assert np.abs(audio).max() > 0.2
    assert not list((tmp_path / "clips").glob(".*.part"))


def test_clip_budget_deletes_oldest_and_expired(tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    now = time.time()
    for i in range(6):
        p = d / f"clip-{i}.wav"
        p.write_bytes(b"\0" * 400_000)
        os.utime(p, (now - 100 * (6 - i), now - 100 * (6 - i)))
    old = d / "clip-old.flac"
    old.write_bytes(b"\0" * 10)
    os.utime(old, (now - 10 * 86400, now - 10 * 86400))
    other = d / "notes.txt"
    other.write_bytes(b"\0" * 5_000_000)  # not ours: never deleted
    deleted = enforce_budget(d, max_total_bytes=1_000_000, max_age_s=86400, now=now)
    assert sorted(p.name for p in deleted) == ["clip-0.wav", "clip-1.wav", "clip-2.wav", "clip-3.wav", "clip-old.flac"]
    assert sorted(p.name for p in d.iterdir()) == ["clip-4.wav", "clip-5.wav", "notes.txt"]


def test_broker_restart_midrun_events_in_equal_events_out(mosquitto, tmp_path):
    b = mosquitto(persistence=True)
    # one subscriber across the restart, with a persistent session: what the monitor replays
    # before the subscriber is back is queued for it by the broker (not lost to the test)
    sub = Subscriber(b.port, topics=("sound-monitor/dev1/events",), client_id="restart-sub", clean_session=False)
    cfg = MQTTConfig(host="127.0.0.1", port=b.port, reconnect_min_s=0.2, reconnect_max_s=0.5)
    mq = MqttSink.from_config(
        cfg,
        device_id="dev1",
        labels=["dog barking", "smoke alarm", "glass breaking"],
        state_dir=tmp_path / "state",
        model_name="m",
        source_name="s",
    )
    jl = JsonlEventSink(str(tmp_path / "events.jsonl"))
    src = ScriptSource(bursts(16), speed=60)  # 192 s of audio in about 3.2 s
    pipe, c = make_pipeline(src, sinks=[jl, mq], events=BURSTY, stream=StreamConfig(gate_dbfs=-60))
    import threading

    t = threading.Thread(target=pipe.run)
    t.start()
    time.sleep(0.8)
    n_before = len(c.events)
    b.stop()  # the broker goes away mid-run ...
    time.sleep(1.2)
    n_during = len(c.events)
    mosquitto(port=b.port, persistence=True)  # ... and comes back on the same port
    t.join(30)
    assert not t.is_alive()
    logged = [json.loads(l) for l in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(logged) == len(c.events) >= 16 * 6 and n_during < len(logged) and pairs_balanced(c.events)
    assert sub.wait_for(lambda s: len({json.loads(p)["seq"] for p in s.on("sound-monitor/dev1/events")}) >= len(logged))
    got = {}
    for p in sub.on("sound-monitor/dev1/events"):
        e = json.loads(p)
        got[e["seq"]] = e
    assert [got[k] for k in sorted(got)] == logged  # events in == events out, in seq order
    assert n_before < n_during  # events really happened while the broker was down
    import sqlite3

    db = sqlite3.connect(tmp_path / "state" / "outbox-dev1.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    db.close()
    sub.close()
