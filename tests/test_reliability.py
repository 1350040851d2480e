"""Nothing lost, nothing false (issue 15): real files, real full / read-only directories
(small tmpfs mounts), real `kill -9`, a real broker. Each test names the item it covers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import ROOT, cli, start, wait_until
from fixtures_mqtt import Subscriber, free_port

OWL = ROOT / "monitor" / "demo" / "owl.mp3"
LABELS = "owl,dog barking,smoke alarm"


def run_owl(model: Path, state: Path, *extra, **kw):
    return cli(
        "run",
        "--source",
        OWL,
        "--fast",
        "--no-tui",
        "--model",
        model,
        "--labels",
        LABELS,
        "--scoring",
        "softmax",
        "--threshold",
        "0.0",
        *extra,
        state=state,
        **kw,
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def no_traceback(r) -> None:
    assert "Traceback" not in r.stderr, r.stderr


@pytest.fixture
def tmpfs(tmp_path):
    """Factory: a small tmpfs (size bytes, optionally read-only) mounted under tmp_path."""
    mounts = []

    def mount(name: str, size: int = 1 << 20, ro: bool = False) -> Path:
        mnt = tmp_path / name
        mnt.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs for the full/read-only directory tests ({r.stderr.strip() or 'not root'})"
            )
        mounts.append(mnt)
        return mnt

    yield mount
    for m in mounts:
        subprocess.run(["umount", "-l", str(m)], check=False)


def fill(mnt: Path, leave: int = 0) -> Path:
    """Fill a tmpfs up to ``leave`` bytes free."""
    filler = mnt / "filler"
    free = shutil.disk_usage(mnt).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


# -- item 1: seq never repeats, an undelivered row is never replaced, one instance per state dir


def test_corrupt_seq_file_continues_after_outbox(tiny_clap_export, tmp_path):
    state = tmp_path / "state"
    dead = f"mqtt://127.0.0.1:{free_port()}"  # no broker: everything stays in the outbox
    r = run_owl(tiny_clap_export, state, "--mqtt", dead, "--events", tmp_path / "a.jsonl")
    assert r.returncode == 0, r.stderr
    first = lines(tmp_path / "a.jsonl")
    assert [e["seq"] for e in first] == list(range(1, len(first) + 1))
    seq_file = next(state.glob("seq-*.json"))
    seq_file.write_text("garbage{")
    r = run_owl(tiny_clap_export, state, "--mqtt", dead, "--events", tmp_path / "b.jsonl")
    assert r.returncode == 0, r.stderr
    assert "corrupt" in r.stderr
    second = lines(tmp_path / "b.jsonl")
    assert second[0]["seq"] == first[-1]["seq"] + 1
    db = sqlite3.connect(next(state.glob("outbox-*.sqlite3")))
    rows = db.execute("SELECT seq, payload FROM outbox ORDER BY seq").fetchall()
    assert [json.loads(p) for _, p in rows] == first + second  # nothing replaced
    assert [s for s, _ in rows] == [e["seq"] for e in first + second]
    # and without the seq file at all (deleted): the events file alone tells where to go on
    seq_file.unlink()
    r = run_owl(tiny_clap_export, tmp_path / "other-state", "--events", tmp_path / "b.jsonl")
    assert lines(tmp_path / "b.jsonl")[len(second)]["seq"] == second[-1]["seq"] + 1


def test_outbox_never_replaces_an_undelivered_row(tmp_path):
    from monitor.outbox import Outbox

    ob = Outbox(tmp_path / "o.sqlite3")
    ob.add(1, "t", "first")
    ob.add(1, "t", "second")  # a seq that is taken (it must not happen; if it does, keep both)
    assert [p for _, _, p in ob.after(0)] == ["first", "second"]
    assert ob.high_seq == 2
    ob.remove(1)
    ob.close()
    assert Outbox(tmp_path / "o.sqlite3").high_seq == 2  # remembered after delivery and restart


def test_second_instance_on_same_state_dir_is_refused(tiny_clap_export, tmp_path):
    state = tmp_path / "state"
    first = start(
        "run",
        "--source",
        "-",
        "--rate",
        "16000",
        "--no-tui",
        "--model",
        str(tiny_clap_export),
        "--labels",
        LABELS,
        state=state,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: list(state.glob("lock-*")), 60, every_s=0.1)
        time.sleep(0.5)
        r = run_owl(tiny_clap_export, state)
        assert r.returncode == 2, r.stderr
        assert f"pid {first.pid}" in r.stderr and "already running" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        # another device id in the same state dir is a different monitor: allowed
        (tmp_path / "c.yaml").write_text("device_id: kitchen\n")
        r = run_owl(tiny_clap_export, state, "--config", tmp_path / "c.yaml")
        assert r.returncode == 0, r.stderr
    finally:
        first.stdin.close()
        first.wait(60)
    r = run_owl(tiny_clap_export, state)  # the lock goes with the process
    assert r.returncode == 0, r.stderr


# -- item 2: a full state dir: events still go out, loudly, no litter


def test_full_state_dir_still_delivers(mosquitto, tiny_clap_export, tmp_path, tmpfs):
    b = mosquitto()
    sub = Subscriber(b.port)
    state = tmpfs("state", size=256 * 1024)
    fill(state)
    r = run_owl(tiny_clap_export, state, "--mqtt", f"mqtt://127.0.0.1:{b.port}", "--events", tmp_path / "e.jsonl")
    assert r.returncode == 0, r.stderr
    no_traceback(r)
    logged = lines(tmp_path / "e.jsonl")
    assert logged
    topic = f"sound-monitor/{_dev(logged)}/events"
    assert sub.wait_for(lambda s: len(s.on(topic)) == len(logged))
    assert [json.loads(p) for p in sub.on(topic)] == logged
    assert "kept in memory" in r.stderr
    litter = [p.name for p in state.iterdir() if p.name.startswith(".")]
    assert litter == [], litter
    sub.close()


def _dev(events) -> str:
    from monitor.topics import device_slug

    return device_slug(events[0]["device_id"])


# -- items 3 and 6: a full disk never leaves half a line; --scores on a full disk is no crash


def test_full_disk_events_and_scores_whole_lines(tiny_clap_export, tmp_path, tmpfs):
    out = tmpfs("out", size=64 * 1024)
    ev, sc = out / "events.jsonl", out / "scores.jsonl"
    old = '{"schema":1,"type":"start","seq":0,"note":"from before"}\n'
    ev.write_text(old * (3900 // len(old)))  # most of one page: the next lines cross into a page that is not there
    sc.write_text("")
    fill(out)
    r = run_owl(tiny_clap_export, tmp_path / "state", "--events", ev, "--scores", sc)
    assert r.returncode == 0, r.stderr
    no_traceback(r)
    assert "cannot write events" in r.stderr and "cannot write scores" in r.stderr
    assert ev.read_bytes().endswith(b"\n")
    [json.loads(x) for x in ev.read_text().splitlines()]  # every line is whole JSON
    (out / "filler").unlink()
    r = run_owl(tiny_clap_export, tmp_path / "state", "--events", ev)
    assert r.returncode == 0, r.stderr
    evs = [json.loads(x) for x in ev.read_text().splitlines()]
    assert evs[-1]["type"] == "end" and evs[-1]["label"]


def test_half_line_from_earlier_run_is_ended(tiny_clap_export, tmp_path):
    ev = tmp_path / "events.jsonl"
    ev.write_text('{"schema":1,"type":"start","seq":1}\n{"schema":1,"type":"en')
    r = run_owl(tiny_clap_export, tmp_path / "state", "--events", ev)
    assert r.returncode == 0, r.stderr
    text = ev.read_text().splitlines()
    assert text[1] == '{"schema":1,"type":"en'
    new = [json.loads(x) for x in text[2:]]
    assert new and new[0]["type"] == "start"
    assert "incomplete line" in r.stderr


# -- item 5: kill -9 during an open event: the next start ends it (reason restart)


def test_kill9_open_event_is_ended_on_next_start(tiny_clap_export, tmp_path):
    state = tmp_path / "state"
    ev = tmp_path / "events.jsonl"
    p = start(
        "run",
        "--source",
        "-",
        "--rate",
        "16000",
        "--no-tui",
        "--model",
        str(tiny_clap_export),
        "--labels",
        LABELS,
        "--scoring",
        "softmax",
        "--threshold",
        "0.0",
        "--events",
        str(ev),
        state=state,
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    stop = threading.Event()

    def feed():
        rng = np.random.default_rng(0)
        try:
            while not stop.is_set():
                p.stdin.write((rng.standard_normal(1600) * 3000).astype("<i2").tobytes())
                p.stdin.flush()
                time.sleep(0.02)
        except (BrokenPipeError, ValueError):
            pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    wait_until(lambda: ev.exists() and '"start"' in ev.read_text(), 120)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    stop.set()
    before = lines(ev)
    opened = {e["event_id"]: e for e in before if e["type"] == "start"}
    for e in before:
        if e["type"] == "end":
            opened.pop(e["event_id"], None)
    assert opened, before
    r = run_owl(tiny_clap_export, state, "--events", ev)
    assert r.returncode == 0, r.stderr
    after = lines(ev)[len(before) :]
    ends = after[: len(opened)]
    assert {e["event_id"] for e in ends} == set(opened)
    for e in ends:
        assert e["type"] == "end" and e["reason"] == "restart" and e["end_s"] is None
        assert e["label"] == opened[e["event_id"]]["label"]
    assert [e["seq"] for e in after] == list(range(before[-1]["seq"] + 1, before[-1]["seq"] + 1 + len(after)))
    assert all("reason" not in e for e in after[len(opened) :])  # ordinary events unchanged
    r = run_owl(tiny_clap_export, state, "--events", tmp_path / "third.jsonl")  # ended once only
    assert all(e.get("reason") != "restart" for e in lines(tmp_path / "third.jsonl"))


# -- item 7: a corrupt outbox or an unusable state dir at start


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_outbox_is_moved_aside(tiny_clap_export, tmp_path, damage):
    state = tmp_path / "state"
    dead = f"mqtt://127.0.0.1:{free_port()}"
    r = run_owl(tiny_clap_export, state, "--mqtt", dead)
    assert r.returncode == 0, r.stderr
    ob = next(state.glob("outbox-*.sqlite3"))
    for side in state.glob("outbox-*.sqlite3-*"):
        side.unlink()
    data = ob.read_bytes()
    ob.write_bytes(b"this is not a database" * 100 if damage == "garbage" else data[: len(data) // 3])
    damaged = ob.read_bytes()
    r = run_owl(tiny_clap_export, state, "--mqtt", dead, "--events", tmp_path / "e.jsonl")
    assert r.returncode == 0, r.stderr
    no_traceback(r)
    aside = list(state.glob("outbox-*.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged
    assert str(aside[0]) in r.stderr
    assert sqlite3.connect(ob).execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == len(lines(tmp_path / "e.jsonl"))


def test_read_only_state_dir_is_one_line(tiny_clap_export, tmp_path, tmpfs):
    state = tmpfs("ro-state", ro=True)
    r = run_owl(tiny_clap_export, state)
    assert r.returncode == 2, r.stderr
    no_traceback(r)
    assert len(r.stderr.strip().splitlines()) == 1 and "not writable" in r.stderr and str(state) in r.stderr


# -- item 16: the terminal closing is not a reload


def test_terminal_hangup_stops_a_monitor_started_from_a_terminal(tiny_clap_export, tmp_path):
    import pty

    master, slave = pty.openpty()
    slave_name = os.ttyname(slave)
    os.close(slave)

    def take_terminal():  # a new session whose controlling terminal is the pty (a shell's child)
        os.setsid()
        fd = os.open(slave_name, os.O_RDWR)
        os.close(fd)

    p = start(
        "run",
        "--source",
        "-",
        "--rate",
        "16000",
        "--no-tui",
        "--model",
        str(tiny_clap_export),
        "--labels",
        LABELS,
        "--events",
        str(tmp_path / "e.jsonl"),
        state=tmp_path / "state",
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "err.txt", "wb"),
        preexec_fn=take_terminal,
    )
    try:
        wait_until(lambda: "labels:" in (tmp_path / "err.txt").read_text(), 60, every_s=0.1)
        p.stdin.write(np.zeros(16000 * 2, "<i2").tobytes())
        p.stdin.flush()
        time.sleep(1.0)
        os.close(master)  # the terminal goes away: the kernel sends SIGHUP to the session
        rc = p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    err = (tmp_path / "err.txt").read_text()
    assert rc == 0, err
    assert "terminal closed" in err and "reload" not in err.lower()


# -- item 17: one models folder, whatever the working directory


def test_models_dir_does_not_depend_on_the_working_directory(tiny_clap_export, tmp_path):
    data = tmp_path / "xdg"
    shutil.copytree(tiny_clap_export, data / "sound-monitor" / "models" / "clap-tiny")
    for cwd in (tmp_path, ROOT / "monitor"):
        r = cli(
            "run",
            "--source",
            OWL,
            "--fast",
            "--no-tui",
            "--model",
            "auto",
            "--labels",
            LABELS,
            state=tmp_path / "state",
            env_extra={"XDG_DATA_HOME": str(data), "HF_ENDPOINT": "http://127.0.0.1:9"},
            cwd=cwd,
        )
        assert r.returncode == 0, r.stderr
        assert str(data / "sound-monitor" / "models" / "clap-tiny") in r.stderr, r.stderr


def test_shipped_config_uses_the_fixed_models_dir_and_allows_the_demo():
    from monitor.config import default_models_dir, load_config

    cfg = load_config(ROOT / "config.yaml")
    assert cfg.model.models_path == default_models_dir()
    assert "input" not in cfg.source.model_fields_set and cfg.mqtt.host is None  # a bare `make run` may play the demo
