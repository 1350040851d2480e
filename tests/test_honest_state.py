"""What a hostile week found (issue 27), in-process: thresholds set at run time obey the
config's rules, events of a label never overlap, a loss forgets the runs, pause and
switches are visible in /healthz and /metrics, strict payloads, bounded floods and idle
connections, truncated WAVs, private state, a kept int8 decision that was edited by hand."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import stat
import struct
import threading
import time
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from cli_helpers import cli
from fixtures_mqtt import free_port

from monitor.config import Config, EventsConfig, LabelConfig
from monitor.events import EventTracker, lowest_threshold, rules_for
from monitor.logs import Throttle
from monitor.runtime.control import ControlError, Controls, parse_threshold
from monitor.runtime.metrics import MetricsServer, Snapshot, SourceHealth, health, render
from monitor.sources import redact_url, url_has_secret
from monitor.topics import Topics
from monitor.types import Scores


def tracker(**events_kw):
    rules = rules_for([LabelConfig(name="dog")], EventsConfig(**events_kw))
    n = itertools.count(1)
    return EventTracker(rules, device_id="d", source="s", model="m", next_seq=lambda: next(n))


def window(i, score, hop=1.0, length=5.0):
    return Scores(i, i * hop, i * hop + length, -20.0, ("dog",), (score,))


# -- 1: a threshold set at run time obeys the config's rule --------------------------------
def test_a_threshold_at_or_below_the_hysteresis_is_refused_with_the_configs_message(tmp_path):
    cfg = Config(labels=["dog"], events={"threshold": 0.5, "hysteresis": 0.1})
    c = Controls(tmp_path, "dev")
    rule = c.rules(cfg)["dog"]
    for bad in (0.05, 0.1):
        with pytest.raises(ControlError, match=r"hysteresis \(0.1\) must be below the threshold .* never end"):
            c.set_threshold("dog", bad, rule)
    assert c.rules(cfg)["dog"].threshold == 0.5 and not c.path.exists()  # nothing applied, nothing written
    assert c.set_threshold("dog", 0.11, rule) == "threshold 0.5 -> 0.11"
    r = c.rules(cfg)["dog"]
    assert r.threshold == 0.11 and r.off_level == pytest.approx(0.01)
    # the config's own rule, in the same words (check-config and run)
    with pytest.raises(Exception, match=r"hysteresis \(0.1\) must be below the threshold \(0.05\)"):
        Config(labels=[{"name": "dog", "threshold": 0.05}], events={"hysteresis": 0.1})


def test_the_number_entity_announces_the_lowest_threshold_the_hysteresis_allows():
    assert lowest_threshold(0.1) == 0.11 and lowest_threshold(0.0) == 0.0 and lowest_threshold(0.25) == 0.26
    t = Topics("sound-monitor", "dev")
    ents = t.label_entities("dog", "dog", "m", "1", min_threshold=0.11)
    assert ents["homeassistant/number/dev/dog_threshold/config"]["min"] == 0.11
    # remote control off: no number, no switch (only the event entity)
    assert list(t.label_entities("dog", "dog", "m", "1", control=False)) == ["homeassistant/event/dev/dog/config"]
    assert "homeassistant/switch/dev/enabled/config" not in t.device_entities("m", "1", control=False)


def test_a_threshold_kept_from_before_that_the_config_no_longer_allows_is_not_used(tmp_path, caplog):
    c = Controls(tmp_path, "dev")
    c.set_threshold("dog", 0.2, rules_for([LabelConfig(name="dog")], EventsConfig(hysteresis=0.1))["dog"])
    cfg = Config(labels=["dog"], events={"threshold": 0.5, "hysteresis": 0.3})  # edited since
    with caplog.at_level(logging.WARNING):
        r = Controls(tmp_path, "dev").rules(cfg)["dog"]
    assert r.threshold == 0.5 and r.off_level == pytest.approx(0.2)
    assert "does not hold" in caplog.text


# -- 2 and 3: events never overlap; a loss forgets every run --------------------------------
def test_a_quick_refire_never_starts_before_the_last_end_plus_cooldown():
    tr = tracker(threshold=0.5, hysteresis=0.1, min_windows=2, cooldown_s=1.0)
    trace = [0.9, 0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    evs = [e for i, s in enumerate(trace) for e in tr.update(window(i, s))]
    kinds = [(e.type, e.start_s, e.end_s) for e in evs]
    assert kinds[:2] == [("start", 0.0, None), ("end", 0.0, 7.0)]  # windows 0-2 ([0,5]..[2,7])
    second = evs[2]
    # today's tracker started it at window 4 (start 4.0 < end 7.0); now windows count from 7 + 1
    assert second.type == "start" and second.start_s >= 7.0 + 1.0, kinds
    assert second.start_s == 8.0


def test_after_a_pause_the_next_event_starts_after_the_forced_end():
    tr = tracker(threshold=0.5, hysteresis=0.1, min_windows=2, cooldown_s=1.0)
    evs = [e for i in range(4) for e in tr.update(window(i, 0.9))]  # open from 0
    paused = {k: r.__class__(**{**r.__dict__, "enabled": False}) for k, r in tr.rules.items()}
    evs += tr.set_rules(paused, end_s=9.0)
    resumed = {k: r.__class__(**{**r.__dict__, "enabled": True}) for k, r in tr.rules.items()}
    tr.set_rules(resumed, end_s=9.0)
    evs += [e for i in range(4, 16) for e in tr.update(window(i, 0.9))]
    ends = [e for e in evs if e.type == "end"]
    starts = [e for e in evs if e.type == "start"]
    assert len(starts) == 2 and starts[1].start_s >= ends[0].end_s + 1.0, [(e.type, e.start_s, e.end_s) for e in evs]


def test_a_source_loss_forgets_a_run_one_window_short_of_starting():
    tr = tracker(threshold=0.5, hysteresis=0.1, min_windows=3, cooldown_s=0.0)
    assert tr.update(window(0, 0.9)) == [] and tr.update(window(1, 0.9)) == []  # 2 of 3
    assert tr.close_all() == []  # the source was lost: nothing open, the run is forgotten
    assert tr.update(window(10, 0.9)) == []  # after the gap: 1 of 3, not 3 of 3
    assert tr.update(window(11, 0.9)) == []
    (start,) = tr.update(window(12, 0.9))
    assert start.start_s == 10.0  # never a start_s before the loss


# -- 4 and 5: what /healthz and /metrics say ------------------------------------------------
def source(**kw):
    base = dict(
        name="mic",
        status="ok",
        detail="",
        alive=True,
        windows=10,
        gated=0,
        dropped_windows=0,
        dropped_frames=0,
        inference_ms=None,
        level_dbfs=-30.0,
    )
    return SourceHealth(**{**base, **kw})


def test_health_says_paused_and_switched_off_and_metrics_have_gauges():
    snap = Snapshot((source(),), detection_enabled=False, labels_enabled={"dog": True, "smoke alarm": False})
    code, body = health(snap)
    assert code == 200 and body.startswith("ok\n")
    assert "paused: detection is switched off" in body and "label 'smoke alarm': switched off" in body
    text = render(snap).decode()
    assert "sound_monitor_detection_enabled 0.0" in text
    assert 'sound_monitor_label_enabled{label="smoke alarm"} 0.0' in text
    assert 'sound_monitor_label_enabled{label="dog"} 1.0' in text
    assert 'sound_monitor_inference_ms{source="mic"} NaN' in text  # not measured yet: not a false 0
    on = health(Snapshot((source(),), labels_enabled={"dog": True}))
    assert on == (200, "ok\n")


def test_health_reports_a_source_that_falls_behind():
    code, body = health(Snapshot((source(recent_dropped_frames=48000, recent_dropped_windows=3),)))
    assert code == 503 and "falling behind (3 window(s) and 48000 samples dropped in the last minute)" in body


def test_drop_counts_age_out_of_the_last_minute():
    from monitor.stream.feed import DropStats

    st = DropStats()
    st.recent.append((100.0, 2, 0))
    st.recent.append((150.0, 0, 4800))
    assert st.dropped_recently(60.0, now=155.0) == (2, 4800)
    assert st.dropped_recently(60.0, now=200.0) == (0, 4800)
    assert st.dropped_recently(60.0, now=300.0) == (0, 0)


# -- 11 and 15: strict payloads, floods cost a counter -------------------------------------
def test_threshold_payloads_are_parsed_strictly():
    assert parse_threshold(b"0.35") == 0.35 and parse_threshold(b" 1 ") == 1.0 and parse_threshold(b".5") == 0.5
    for bad in ("0.2_5", "\uff10.\uff15", "-0", "+0.5", "5e-1", "0x1", "1.5", "", "0.5\x00", "inf"):
        with pytest.raises(ControlError):
            parse_threshold(bad)


def test_the_same_value_again_writes_nothing(tmp_path):
    cfg = Config(labels=["dog"])
    c = Controls(tmp_path, "dev")
    assert c.set_threshold("dog", 0.6, c.rules(cfg)["dog"]) == "threshold 0.5 -> 0.6"
    before = c.path.stat().st_mtime_ns
    time.sleep(0.01)
    for _ in range(100):
        assert c.set_threshold("dog", 0.6, c.rules(cfg)["dog"]) is None
        assert c.set_enabled(True) is None and c.set_label_enabled("dog", True) is None
    assert c.path.stat().st_mtime_ns == before
    assert c.set_enabled(False) == "detection paused" and c.set_label_enabled("dog", False) == "detection on -> off"


def test_throttle_lets_one_line_a_minute_through_and_counts_the_rest():
    now = [0.0]
    t = Throttle(60.0, clock=lambda: now[0])
    assert t.take("threshold") == 0
    assert [t.take("threshold") for _ in range(5000)] == [None] * 5000
    assert t.take("enabled") == 0  # another kind has its own line
    now[0] = 61.0
    assert t.take("threshold") == 5000


# -- 12: the metrics server holds no connection forever -------------------------------------
def test_metrics_server_drops_idle_connections_and_caps_how_many_it_serves(monkeypatch):
    import monitor.runtime.metrics as m

    monkeypatch.setattr(m, "CONNECTION_TIMEOUT_S", 2.0)
    monkeypatch.setattr(m, "MAX_CONNECTIONS", 2)
    server = MetricsServer(f"127.0.0.1:{free_port()}", lambda: Snapshot((source(),)))
    host, port = server.address.rsplit(":", 1)
    base = threading.active_count()
    held = [socket.create_connection((host, int(port))) for _ in range(2)]  # send nothing: both slots taken
    try:
        time.sleep(0.3)
        assert threading.active_count() == base + 2
        t0 = time.monotonic()
        third = socket.create_connection((host, int(port)))
        third.settimeout(5.0)
        assert third.recv(1) == b"" and time.monotonic() - t0 < 1.0  # turned away at once, no thread
        third.close()
        assert server.httpd.turned_away == 1
        for s in held:  # the idle ones are dropped after the timeout
            s.settimeout(5.0)
            assert s.recv(1) == b""
        assert 1.5 < time.monotonic() - t0 < 4.0
        with urllib.request.urlopen(f"http://{server.address}/healthz", timeout=5) as r:
            assert r.status == 200 and r.read() == b"ok\n"
        time.sleep(0.2)
        assert threading.active_count() == base
    finally:
        for s in held:
            s.close()
        server.close()


def test_metrics_outside_loopback_is_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        server = MetricsServer(f"0.0.0.0:{free_port()}", lambda: Snapshot((source(),)))
        server.close()
    assert "outside this machine's loopback" in caplog.text and "no login" in caplog.text


# -- 13: passwords and tokens in URLs -------------------------------------------------------
def test_query_string_secrets_are_redacted():
    url = "http://cam.local/audio.cgi?user=admin&pwd=hunter2&token=abc123&channel=1"
    assert redact_url(url) == "http://cam.local/audio.cgi?user=admin&pwd=***&token=***&channel=1"
    assert redact_url("rtsp://a:b@c/s?password=x") == "rtsp://a:***@c/s?password=***"
    assert url_has_secret(url) and url_has_secret("rtsp://a:b@c/s") and not url_has_secret("rtsp://a@c/s?ch=1")


# -- 6: a WAV cut off mid-data --------------------------------------------------------------
def cut_wav(path, declared_s=6.0, present_s=0.03, rate=16000):
    sf.write(path, np.zeros(int(declared_s * rate), np.float32), rate, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: 44 + int(present_s * rate) * 2])
    assert struct.unpack("<I", data[40:44])[0] == int(declared_s * rate) * 2  # the header still says 6 s


def test_a_truncated_wav_is_one_line_and_exit_2(tmp_path):
    wav = tmp_path / "cut.wav"
    cut_wav(wav)
    for args in (
        ("run", "--source", wav, "--fast", "--no-tui", "--model", "offline", "--labels", "dog"),
        ("classify", wav, "--model", "offline", "--labels", "dog,cat"),
    ):
        r = cli(*args, state=tmp_path / "s")
        assert r.returncode == 2, r.stderr
        err = [line for line in r.stderr.splitlines() if "error" in line]
        assert err == [
            f"error: audio file is cut off: {wav}: its header declares 192000 bytes of audio, the file holds 960"
        ]
        assert "Traceback" not in r.stderr
    # a streaming writer's placeholder size (0xFFFFFFFF) is not a truncation
    ok = tmp_path / "stream.wav"
    sf.write(ok, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    d = bytearray(ok.read_bytes())
    d[40:44] = struct.pack("<I", 0xFFFFFFFF)
    ok.write_bytes(bytes(d))
    from monitor.audio_io import wav_truncation

    assert wav_truncation(ok) is None
    assert wav_truncation(wav) == "its header declares 192000 bytes of audio, the file holds 960"


# -- 9: check-config and run agree ----------------------------------------------------------
def test_check_config_refuses_an_events_section_that_cannot_end_even_without_labels(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("events: {threshold: 0.3, hysteresis: 0.3}\n")
    for args in (("check-config", cfg), ("run", "--config", cfg, "--source", "x.wav", "--no-tui")):
        r = cli(*args, state=tmp_path / "s")
        assert r.returncode == 2 and f"{cfg}: events: hysteresis (0.3) must be below the threshold (0.3)" in r.stderr
        assert "command line" not in r.stderr


# -- 14: private state ---------------------------------------------------------------------
def test_the_state_dir_is_private_after_a_start(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    old = state / "outbox-dev.sqlite3"
    old.write_text("")
    os.chmod(old, 0o644)
    (state / "label-cache").mkdir(mode=0o755)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    r = cli("run", "--source", wav, "--fast", "--no-tui", "--model", "offline", "--labels", "dog", state=state)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for p in state.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        assert stat.S_IMODE(p.stat().st_mode) == want, (p, oct(p.stat().st_mode))


def test_a_new_outbox_is_created_private(tmp_path):
    from monitor.outbox import Outbox

    box = Outbox(tmp_path / "outbox.sqlite3")
    box.add(1, "t", "{}")
    for p in tmp_path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    box.close()


# -- 8: a hand-edited int8 decision ---------------------------------------------------------
def test_a_hand_edited_int8_decision_is_not_trusted(tmp_path, caplog):
    from monitor.models.clap.int8_auto import _kept

    store = tmp_path / "int8-choice.json"
    with caplog.at_level(logging.WARNING):
        assert _kept({"int8": "yes", "why": "fp32: int8 is not clearly faster here"}, store) is None
        assert _kept({"int8": True, "why": "fp32: int8 is not clearly faster here"}, store) is None
        assert _kept(["int8"], store) is None
    assert "not a decision this program wrote" in caplog.text
    kept = _kept({"int8": True, "why": "int8: 60 ms vs fp32 100 ms", "when": "2026-12-07"}, store)
    assert kept is not None and kept.int8 and kept.why.startswith("int8: ")
