"""The local event store (monitor/eventstore.py) and its writer (monitor/sinks/store.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from monitor.eventstore import EventStore, parse_since, to_csv
from monitor.sinks.store import StoreSink
from monitor.types import Event, Scores


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ev(kind: str, eid: str, label: str, at: float, seq: int, source: str = "mic", end_s=None, clip=None) -> Event:
    return Event(
        type=kind,  # type: ignore[arg-type]
        event_id=eid,
        seq=seq,
        label=label,
        score=0.7,
        peak_score=0.8,
        start_s=10.0,
        end_s=end_s,
        duration_s=None if end_s is None else end_s - 10.0,
        wall_time=iso(at + (0 if kind == "start" else 5)),
        device_id="dev",
        source=source,
        model="m",
        start_time=iso(at),
        clip=clip,
    )


def test_events_newest_first_with_filters_counts_and_csv(tmp_path):
    st = EventStore(tmp_path / "e.sqlite")
    now = time.time()
    st.put_event(ev("start", "a" * 32, "dog", now - 7200, 1), run="r1")
    st.put_event(ev("end", "a" * 32, "dog", now - 7200, 2, end_s=15.0, clip="/x/clip.wav"), run="r1")
    st.put_event(ev("start", "b" * 32, "smoke alarm", now - 60, 3, source="kitchen"), run="r1")
    st.put_event(ev("start", "c" * 32, "dog", now - 5 * 86400, 4), run="r0")
    got = st.events()
    assert [e["event_id"][0] for e in got] == ["b", "a", "c"]  # newest first
    assert got[1]["type"] == "end" and got[1]["clip"] == "/x/clip.wav"  # the latest record
    assert [e["event_id"][0] for e in st.events(label="dog")] == ["a", "c"]
    assert [e["event_id"][0] for e in st.events(source="kitchen")] == ["b"]
    assert [e["event_id"][0] for e in st.events(since=parse_since("24h"))] == ["b", "a"]
    assert len(st.events(limit=1)) == 1
    days = dict(st.counts("day"))
    assert sum(days.values()) == 3 and len(days) >= 2
    csv_text = to_csv(got)
    assert csv_text.splitlines()[0].startswith("schema,type,event_id") and len(csv_text.splitlines()) == 4
    # an end without its start (a restart's end) is kept too
    st.put_event(ev("end", "d" * 32, "dog", now - 30, 5, end_s=None), run="r2")
    assert st.event("d" * 32) is not None and st.event("d" * 32).record["type"] == "end"
    st.close()
    again = EventStore(tmp_path / "e.sqlite", create=False)  # survives a restart
    assert len(again.events()) == 4
    assert oct((tmp_path / "e.sqlite").stat().st_mode & 0o777) == "0o600"


def test_parse_since():
    assert abs(parse_since("24h", now=1000.0) - (1000.0 - 86400)) < 1e-6
    assert parse_since("30m", now=1000.0) == 1000.0 - 1800
    assert parse_since("2026-12-07T00:00:00Z") == datetime(2026, 12, 7, tzinfo=timezone.utc).timestamp()
    with pytest.raises(ValueError, match="use a duration"):
        parse_since("yesterday-ish")


def test_the_sink_writes_windows_minutes_and_the_curve_of_an_event(tmp_path):
    clock = [1_700_000_000.0]
    st = EventStore(tmp_path / "e.sqlite")
    sink = StoreSink(st, clock=lambda: clock[0])
    labels = ("dog", "cat")
    for i in range(150):  # 150 windows, one a second: three minutes
        clock[0] += 1.0
        v = 0.9 if 60 <= i < 65 else 0.1
        sink.on_scores(Scores(i, float(i), i + 5.0, -30.0, labels, (v, 0.2), source="mic"))
    start = ev("start", "e" * 32, "dog", 1_700_000_000.0 + 61, 1)
    start = Event(**{**start.__dict__, "start_s": 60.0})
    sink.publish(start)
    sink.publish(Event(**{**start.__dict__, "type": "end", "end_s": 66.0, "duration_s": 6.0, "seq": 2}))
    sink.close()
    st = EventStore(tmp_path / "e.sqlite")
    stored = st.event("e" * 32)
    assert stored is not None and stored.run == sink.run
    curve = st.curve(stored, pad_s=10.0)
    assert curve["t_s"][0] == 50.0 and curve["t_s"][-1] == 76.0
    assert max(curve["scores"]["dog"]) == 0.9 and set(curve["scores"]["cat"]) == {0.2}
    mins = st.db.execute("SELECT COUNT(*), MAX(max) FROM minutes WHERE label = 'dog'").fetchone()
    assert mins[0] >= 3 and mins[1] == 0.9


def test_suggested_threshold_from_the_homes_own_minutes(tmp_path):
    st = EventStore(tmp_path / "e.sqlite")
    base = 28_000_000  # minutes since the epoch
    rows = []
    for m in range(3 * 1440):  # three days of minutes
        v = 0.2
        if m % 1440 == 600:
            v = 0.55  # once a day something scores 0.55 (a false alarm waiting to happen)
        if m % 1440 in (700, 900):
            v = 0.45  # twice a day 0.45
        rows.append((base + m, "mic", "dog", v))
    st.put_minutes(rows)
    s = st.suggest_threshold("dog")
    # 0.46..0.55 fires once a day; anything at or below 0.45 three times
    assert s["threshold"] == 0.46 and s["would_fire_per_day"] == 1.0 and s["hours"] == 72.0
    # the minutes a real event of the label covers do not count: a dog that barks at 0.8 once
    # a day and a fridge at 0.3 once a day: 0.31 without the events on record, 0.21 with them
    st2 = EventStore(tmp_path / "e2.sqlite")
    rows = [(base + m, "mic", "dog", 0.8 if m % 1440 == 100 else 0.3 if m % 1440 == 800 else 0.2) for m in range(2880)]
    st2.put_minutes(rows)
    assert st2.suggest_threshold("dog")["threshold"] == 0.31
    for day in range(2):
        at = (base + day * 1440 + 100) * 60.0
        st2.put_event(ev("start", f"{day:032x}", "dog", at, 2 * day + 1), run="r")
        st2.put_event(ev("end", f"{day:032x}", "dog", at, 2 * day + 2, end_s=20.0), run="r")
    assert st2.suggest_threshold("dog")["threshold"] == 0.21
    assert st.suggest_threshold("cat")["threshold"] is None  # nothing recorded


def test_retention_by_age_and_size(tmp_path):
    st = EventStore(tmp_path / "e.sqlite", keep_days=1.0, max_mb=0.3, scores_hours=1.0)
    now = time.time()
    for i in range(300):
        st.put_event(ev("start", f"{i:032x}", "dog", now - 2 * 86400 + i * 600, i + 1), run="r")
    st.put_windows([("r", "mic", float(i), now - 7200 + i, json.dumps({"dog": 0.1})) for i in range(100)])
    gone = st.prune(now)
    left = st.events()
    assert gone["windows"] == 100 - sum(1 for i in range(100) if now - 7200 + i >= now - 3600)
    assert all(e["start_time"] >= iso(now - 86400)[:19] for e in left) and gone["events"] > 0
    # size: 5000 windows of big rows, then prune to the budget (oldest first)
    blob = json.dumps({f"label {k}": 0.123456 for k in range(20)})
    st.put_windows([("r", "mic", float(i), now - 60 + i / 100, blob) for i in range(5000)])
    assert st.size_mb() > 0.3
    st.prune(now)
    assert st.size_mb() <= 0.3
    n, first = st.db.execute("SELECT COUNT(*), MIN(t_s) FROM windows").fetchone()
    assert 0 < n < 5000 and first > 0  # the newest are kept


def test_corrections_are_recorded_and_undone_once(tmp_path):
    st = EventStore(tmp_path / "e.sqlite")
    cid = st.add_correction("not-this", "dog", "clip-1.wav", "a" * 32)
    assert st.corrections()[0]["undone"] is False
    assert st.undo_correction(cid)["name"] == "clip-1.wav"
    assert st.undo_correction(cid) is None and st.corrections()[0]["undone"] is True


WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from monitor.eventstore import EventStore
from monitor.sinks.store import StoreSink
from monitor.types import Event
sink = StoreSink(EventStore({path!r}))
sink.publish(Event("start", "9" * 32, 1, "dog", 0.7, 0.7, 1.0, None, None, "2026-12-07T10:00:00.000Z", "dev", "mic", "m"))
while sink.store.event("9" * 32) is None:
    time.sleep(0.01)
print("written", flush=True)
time.sleep(60)
"""


def test_an_event_survives_kill_9(tmp_path):
    path = tmp_path / "e.sqlite"
    root = str(Path(__file__).resolve().parents[1])
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(root=root, path=str(path))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "written"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
    st = EventStore(path, create=False)
    assert [e["event_id"] for e in st.events()] == ["9" * 32]


def test_the_events_command_reads_the_store(tmp_path):
    from cli_helpers import cli

    state = tmp_path / "state"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"device_id: dev1\nstate_dir: {state}\n")
    r = cli("events", "--config", cfg, state=state)
    assert r.returncode == 2 and "no events on record yet" in r.stderr, r.stderr
    from monitor.eventstore import store_path

    st = EventStore(store_path(state, "dev1"))
    now = time.time()
    st.put_event(ev("start", "a" * 32, "dog", now - 3600, 1), run="r")
    st.put_event(ev("end", "a" * 32, "dog", now - 3600, 2, end_s=14.0), run="r")
    st.put_event(ev("start", "b" * 32, "smoke alarm", now - 3 * 86400, 3), run="r")
    st.close()
    r = cli("events", "--config", cfg, state=state)
    assert r.returncode == 0 and "dog" in r.stdout and "4.0 s" in r.stdout and "smoke" not in r.stdout, r.stdout
    r = cli("events", "--config", cfg, "--since", "7d", "--json", state=state)
    got = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(e["label"], e["type"]) for e in got] == [("dog", "end"), ("smoke alarm", "start")]
    r = cli("events", "--config", cfg, "--since", "all", "--csv", "--label", "smoke alarm", state=state)
    assert r.stdout.splitlines()[0].startswith("schema,type") and len(r.stdout.splitlines()) == 2
    r = cli("events", "--config", cfg, "--since", "soon", state=state)
    assert r.returncode == 2 and "--since 'soon': use a duration" in r.stderr
