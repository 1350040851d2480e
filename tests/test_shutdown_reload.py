"""The CLI as a subprocess: clean SIGINT/SIGTERM shutdown with a real broker, SIGHUP reload."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import start, wait_until
from fixtures_mqtt import Subscriber

ROOT = Path(__file__).resolve().parents[1]


def start_monitor(tmp_path, cfg_text, *extra):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(cfg_text)
    err = open(tmp_path / "stderr.txt", "wb")
    p = start(
        "run",
        "--config",
        str(cfg),
        "--source",
        "-",
        "--rate",
        "16000",
        "--model",
        "offline",
        "--no-tui",
        *extra,
        state=tmp_path / "state",
        clean=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,
    )  # detached, as under systemd: SIGHUP reloads
    return p, cfg


class Feeder(threading.Thread):
    """Writes s16le noise to the monitor's stdin: ``burst_s`` at once, then ``rate_x`` x real time."""

    def __init__(self, proc, burst_s=8.0, rate_x=10.0):
        super().__init__(daemon=True)
        self.proc, self.burst_s, self.rate_x = proc, burst_s, rate_x
        self.stop = threading.Event()
        self.sent_s = 0.0

    def run(self):
        rng = np.random.default_rng(0)
        try:
            x = (rng.standard_normal(int(16000 * self.burst_s)) * 3000).astype("<i2")
            self.proc.stdin.write(x.tobytes())
            self.proc.stdin.flush()
            self.sent_s += self.burst_s
            while self.rate_x and not self.stop.wait(0.1 / self.rate_x):
                self.proc.stdin.write((rng.standard_normal(1600) * 3000).astype("<i2").tobytes())
                self.proc.stdin.flush()
                self.sent_s += 0.1
        except (BrokenPipeError, ValueError, OSError):
            pass


def lines(path):
    try:
        return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_events_flushes_outbox_and_goes_offline(sig, mosquitto, tmp_path):
    b = mosquitto()
    sub = Subscriber(b.port)
    ev_path = tmp_path / "events.jsonl"
    cfg = (
        "device_id: dev1\nlabels: [dog barking, smoke alarm]\n"
        "events: {threshold: 0.0, hysteresis: 0.0, min_windows: 1, cooldown_s: 0}\n"
        f"output: {{events_path: {ev_path}, tui: false}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {b.port}}}\n"
    )
    p, _ = start_monitor(tmp_path, cfg)
    feed = Feeder(p, burst_s=8.0, rate_x=0)  # 8 s of audio, then the pipe stays open and quiet
    feed.start()
    try:
        assert wait_until(lambda: len(lines(ev_path)) == 2), (tmp_path / "stderr.txt").read_text()
        assert sub.wait_for(lambda s: len(s.on("sound-monitor/dev1/events")) == 2)
        p.send_signal(sig)
        rc = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    err = (tmp_path / "stderr.txt").read_text()
    assert rc == 0, err
    assert "Traceback" not in err and "Fatal Python error" not in err
    evs = lines(ev_path)
    assert sorted((e["label"], e["type"]) for e in evs) == [
        ("dog barking", "end"),
        ("dog barking", "start"),
        ("smoke alarm", "end"),
        ("smoke alarm", "start"),
    ]
    assert sub.wait_for(lambda s: len(s.on("sound-monitor/dev1/events")) == 4)
    assert [json.loads(x) for x in sub.on("sound-monitor/dev1/events")] == evs  # in == out
    assert sub.wait_for(lambda s: s.on("sound-monitor/dev1/availability")[-1:] == [b"offline"])
    for slug in ("dog_barking", "smoke_alarm"):
        assert sub.on(f"sound-monitor/dev1/label/{slug}/state")[-1] == b"OFF"
    db = sqlite3.connect(tmp_path / "state" / "outbox-dev1.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
    db.close()
    sub.close()


def test_sighup_reload_labels_reject_invalid_report_restart(tmp_path):
    scores = tmp_path / "scores.jsonl"
    ev_path = tmp_path / "events.jsonl"

    def cfg_text(labels, extra=""):
        return (
            f"labels: {labels}\n"
            "events: {threshold: 0.0, hysteresis: 0.0, min_windows: 1, cooldown_s: 0}\n"
            f"output: {{events_path: {ev_path}, scores_path: {scores}, tui: false}}\n" + extra
        )

    p, cfg = start_monitor(tmp_path, cfg_text("[dog barking, smoke alarm]"))
    feed = Feeder(p, burst_s=6.0, rate_x=8.0)
    feed.start()
    err_path = tmp_path / "stderr.txt"

    def err():
        return err_path.read_text()

    try:
        assert wait_until(lambda: len(lines(ev_path)) == 2), err()
        cfg.write_text(
            cfg_text(
                "[smoke alarm, doorbell]",
                "events: {threshold: 0.0, hysteresis: 0.0, min_windows: 1, cooldown_s: 0, max_event_s: 100}\n",
            ).replace("events: {threshold: 0.0, hysteresis: 0.0, min_windows: 1, cooldown_s: 0}\n", "", 1)
        )
        p.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "config reloaded: labels, events changed" in err()), err()
        # the removed label's event ends, the new label's starts
        assert wait_until(lambda: any(e["label"] == "doorbell" for e in lines(ev_path))), err()
        assert [e["type"] for e in lines(ev_path) if e["label"] == "dog barking"] == ["start", "end"]
        # an invalid config is rejected and the monitor keeps running on the old one
        cfg.write_text(cfg_text("[smoke alarm, '']"))
        p.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "config reload rejected, the running config stays" in err()), err()
        assert "labels[1].name" in err()
        cfg.write_text("labels: [smoke alarm\n")
        p.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "malformed YAML" in err()), err()
        # a change that cannot be applied live is reported
        cfg.write_text(
            cfg_text(
                "[smoke alarm, doorbell]",
                "source: {block_frames: 512}\nevents: {threshold: 0.0, "
                "hysteresis: 0.0, min_windows: 1, cooldown_s: 0, max_event_s: 100}\n",
            ).replace("events: {threshold: 0.0, hysteresis: 0.0, min_windows: 1, cooldown_s: 0}\n", "", 1)
        )
        p.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "changes to source need a restart" in err()), err()
        sent_before = feed.sent_s
        assert wait_until(lambda: feed.sent_s > sent_before + 2.0)
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        feed.stop.set()
        rc = p.wait(timeout=30)
    finally:
        feed.stop.set()
        if p.poll() is None:
            p.kill()
    assert rc == 0, err()
    assert "Traceback" not in err()
    sc = lines(scores)
    t = [s["t_s"] for s in sc]
    assert t == [float(k) for k in range(len(t))]  # no window lost across the reloads
    keys = [tuple(s["scores"]) for s in sc]
    k = keys.index(("smoke alarm", "doorbell"))
    assert set(keys[:k]) == {("dog barking", "smoke alarm")} and set(keys[k:]) == {("smoke alarm", "doorbell")}
    evs = lines(ev_path)
    ids = {}
    for e in evs:
        ids.setdefault(e["event_id"], []).append(e["type"])
    assert all(v == ["start", "end"] for v in ids.values())
    assert "1 config reload(s)" in err()
