"""Event tracker on scripted score traces (stream time is the clock)."""

from __future__ import annotations

import itertools

import pytest

from monitor.config import EventsConfig, LabelConfig
from monitor.events import EventTracker, rules_for
from monitor.types import Scores


def make_tracker(**events_kw):
    labels = [LabelConfig(name="dog"), LabelConfig(name="alarm", threshold=0.8)]
    rules = rules_for(labels, EventsConfig(**events_kw))
    counter = itertools.count(1)
    return EventTracker(
        rules,
        device_id="dev",
        source="test",
        model="m",
        next_seq=lambda: next(counter),
        wall_clock=lambda: "2026-01-01T00:00:00.000Z",
    )


def feed(tracker, trace, label="dog", hop=1.0, window=5.0):
    out = []
    for i, s in enumerate(trace):
        sc = Scores(i, i * hop, i * hop + window, -20.0, ("dog", "alarm"), (s, 0.0) if label == "dog" else (0.0, s))
        out += [(e.type, i, e) for e in tracker.update(sc)]
    return out


def test_min_windows_and_hysteresis_sequence():
    tr = make_tracker(threshold=0.5, hysteresis=0.2, min_windows=2, cooldown_s=0.0)
    trace = [0.1, 0.6, 0.2, 0.6, 0.7, 0.45, 0.35, 0.29, 0.1]
    evs = feed(tr, trace)
    # one window above is not enough (min_windows=2); windows 3,4 start it; 0.45/0.35 stay
    # on (hysteresis: off below 0.3); 0.29 ends it
    assert [(t, i) for t, i, _ in evs] == [("start", 4), ("end", 7)]
    start, end = evs[0][2], evs[1][2]
    assert start.event_id == end.event_id and start.seq == 1 and end.seq == 2
    assert start.start_s == 3.0 and start.end_s is None
    assert end.end_s == 6.0 + 5.0  # end of the last window at/above the off level (window 6)
    assert end.duration_s == pytest.approx(8.0)
    assert end.peak_score == pytest.approx(0.7)
    d = end.to_dict()
    assert list(d)[0] == "schema" and d["schema"] == 1
    assert set(d) == {
        "schema",
        "type",
        "event_id",
        "seq",
        "label",
        "score",
        "peak_score",
        "start_s",
        "end_s",
        "duration_s",
        "wall_time",
        "device_id",
        "source",
        "model",
    }


def test_cooldown_blocks_restart():
    tr = make_tracker(threshold=0.5, hysteresis=0.0, min_windows=1, cooldown_s=10.0)
    trace = [0.9, 0.1, 0.9, 0.9, 0.1] + [0.1] * 10 + [0.9]
    evs = feed(tr, trace, hop=1.0, window=1.0)
    kinds = [(t, i) for t, i, _ in evs]
    # ended at window 1 (end_s = 1.0); windows 2,3 are within 10 s: no new event; window 15 is
    assert kinds == [("start", 0), ("end", 1), ("start", 15)]


def test_per_label_threshold_and_max_event_s_forces_end_and_rearm():
    tr = make_tracker(threshold=0.5, hysteresis=0.1, min_windows=1, cooldown_s=0.0, max_event_s=3.0)
    evs = feed(tr, [0.7, 0.9, 0.9, 0.9, 0.9, 0.9, 0.2, 0.9], label="alarm", hop=1.0, window=1.0)
    kinds = [(t, i) for t, i, _ in evs]
    # 0.7 < alarm threshold 0.8: nothing; start at 1; forced end once 3 s long (window 3);
    # no restart while it stays high; after it falls (window 6) it may start again (7)
    assert kinds == [("start", 1), ("end", 3), ("start", 7)]
    assert all(e.label == "alarm" for _, _, e in evs)


def test_close_all_ends_open_events_and_seq_continues():
    tr = make_tracker(threshold=0.5, hysteresis=0.1, min_windows=1)
    evs = feed(tr, [0.9, 0.9])
    closing = tr.close_all()
    assert [e.type for _, _, e in evs] == ["start"]
    assert [e.type for e in closing] == ["end"] and closing[0].seq == 2
    assert closing[0].end_s == 6.0
    assert tr.close_all() == []


def test_start_time_is_the_stream_origin_plus_start_s():
    from datetime import datetime

    tr = make_tracker(threshold=0.5, hysteresis=0.0, min_windows=1, cooldown_s=0.0)
    tr.origin_unix = 1_764_000_000.25  # 2025-11-24T16:00:00.250Z
    evs = feed(tr, [0.1, 0.1, 0.9, 0.1], hop=1.0, window=1.0)
    start, end = evs[0][2], evs[1][2]
    assert start.start_s == 2.0 and start.start_time == end.start_time == "2025-11-24T16:00:02.250Z"
    assert datetime.fromisoformat(start.start_time.replace("Z", "+00:00")).timestamp() == 1_764_000_002.25
    assert start.to_dict()["start_time"] == start.start_time and "clip" not in start.to_dict()
