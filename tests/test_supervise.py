"""Fault injection on a real pipeline: stalls, failures and reopening, silence, slow inference,
hot swap of labels. BandEnergyBackend and accelerated pace keep these fast."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fault_helpers import LABELS, RATE, ScriptSource, SlowBackend, make_pipeline, noise, pairs_balanced
from stream_helpers import BandEnergyBackend, fake_input_stream, fake_sounddevice

from monitor.config import EventsConfig, LabelConfig, ScoringConfig, SourceConfig
from monitor.events import rules_for
from monitor.scoring import Scorer
from monitor.stream.supervise import backoff_delays


def statuses(pipe):
    return [s for _, s, _ in pipe.feed.supervisor.history]


def test_backoff_doubles_up_to_the_cap():
    d = backoff_delays(0.5, 3.0)
    assert [next(d) for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_stall_then_return_closes_events_and_notes_gap():
    src = ScriptSource([("audio", noise(8)), ("stall", 0.8), ("audio", noise(8, seed=1))])
    pipe, c = make_pipeline(src)
    st = pipe.run()
    assert statuses(pipe) == ["ok", "stalled", "ok", "ended"]
    assert st.source.stalls == 1 and st.source.losses == 1 and st.source.gaps == 1 and st.source.restarts == 0
    assert 0.6 < st.source.gap_s < 2.0
    starts = [s.start_s for s in c.scores]
    # 8 s of audio -> windows at 0..3 s; the new segment starts after the gap on a whole hop
    assert starts[:4] == [0.0, 1.0, 2.0, 3.0]
    assert 8.0 + st.source.gap_s <= starts[4] < 8.0 + st.source.gap_s + 0.011
    assert starts[4:] == pytest.approx([starts[4] + k for k in range(4)])
    assert all(b > a for a, b in zip(starts, starts[1:]))  # stream time monotonic
    assert [s.window_index for s in c.scores] == list(range(8))
    # open events ended when the source was lost (at the last window's end), new ones after
    ends_at_loss = [e for e in c.events if e.type == "end" and e.end_s == 8.0]
    assert sorted(e.label for e in ends_at_loss) == sorted(l.name for l in LABELS)
    assert len(c.events) == 12 and pairs_balanced(c.events)
    assert st.source.received_frames == 16 * RATE and st.source.dropped_frames == 0
    assert st.source.status == "ended" and st.source.error is None


def test_source_raises_midrun_then_reopens():
    stop = threading.Event()
    attempts = []

    def reopen():
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise OSError("device still gone")  # the first reopen fails: retried with backoff
        return ScriptSource([("audio", noise(7, seed=2)), ("stop", stop)], name="mic-again")

    src = ScriptSource([("audio", noise(6)), ("raise", "PortAudio error: device unavailable")], name="mic")
    pipe, c = make_pipeline(src, reopen=reopen, stop=stop)
    st = pipe.run()
    assert len(attempts) == 2 and st.source.restarts == 1 and st.source.losses == 1
    assert st.source.last_error == "device still gone"
    hist = statuses(pipe)
    assert hist[:2] == ["ok", "lost"] and "retrying" in hist and hist[-1] == "ok"
    assert hist.index("retrying") < len(hist) - 1
    details = [d for _, s, d in pipe.feed.supervisor.history if s == "lost"]
    assert details[0] == "PortAudio error: device unavailable"
    # 6 s then 7 s of audio: 2 + 3 windows, the second segment after the gap
    starts = [s.start_s for s in c.scores]
    assert starts[:2] == [0.0, 1.0] and len(starts) == 5 and starts[2] >= 6.0 + st.source.gap_s >= 6.3
    assert pairs_balanced(c.events) and len(c.events) == 12
    assert st.source.error is None and c.closed


def test_microphone_device_lost_and_reopened(monkeypatch):
    """The real MicSource through sounddevice's callback signature; the stream dies, is reopened."""
    import sounddevice as real_sd

    import monitor.sources as sources

    # the first stream delivers 60 blocks, then its device is unplugged; reopened ones 80
    stream_cls = fake_input_stream(real_sd, n_blocks=lambda k: 60 if k == 0 else 80, pause_s=0.002)
    streams = stream_cls.opened
    FakeSD = fake_sounddevice(real_sd, stream_cls, 1)
    monkeypatch.setattr(sources, "import_sounddevice", lambda: FakeSD)
    stop = threading.Event()

    def reopen():
        mic = sources.MicSource(None, None, channels=1, block_frames=1600)
        if len(streams) >= 2:
            threading.Timer(0.6, stop.set).start()
        return mic

    mic = sources.MicSource(None, None, channels=1, block_frames=1600)
    pipe, c = make_pipeline(mic, reopen=reopen, stop=stop)
    st = pipe.run()
    assert len(streams) >= 2 and st.source.restarts >= 1 and st.source.losses >= 1
    assert any(
        d == "the microphone stream stopped (device lost?)" for _, s, d in pipe.feed.supervisor.history if s == "lost"
    )
    assert st.source.received_frames >= 140 * 1600
    # 60 blocks = 6 s -> 2 windows; the reopened stream continues later in stream time
    starts = [s.start_s for s in c.scores]
    assert starts[:2] == [0.0, 1.0] and len(starts) >= 4 and starts[2] > 6.0
    assert pairs_balanced(c.events)


def test_silence_reported_then_cleared():
    src = ScriptSource(
        [("audio", noise(6)), ("audio", np.zeros(4 * RATE, np.float32)), ("audio", noise(6, seed=3))], speed=40
    )
    pipe, c = make_pipeline(src, source_cfg=SourceConfig(stall_timeout_s=1.0, silence_timeout_s=2.0))
    st = pipe.run()
    seen = c.status_seen
    assert seen[0] == "ok" and "silent" in seen
    first_silent = seen.index("silent")
    assert "ok" in seen[first_silent:]  # sound again: cleared
    # the silence starts at 6 s and is reported once 2 s of zeros arrived (window ending >= 8 s)
    assert c.scores[first_silent].end_s >= 8.0
    assert st.source.status == "ended" and st.source.stalls == 0


def test_slow_inference_drops_windows_capture_continues_memory_bounded():
    total_s = 40
    src = ScriptSource([("audio", noise(total_s))], speed=40)
    pipe, c = make_pipeline(src, backend=SlowBackend(0.25), buffer_s=3.0, max_pending_windows=2)
    peak = {"frames": 0, "arrived": 0}
    done = threading.Event()

    def sample():
        while not done.wait(0.01):
            peak["frames"] = max(peak["frames"], pipe.feed.buffer.frames)
            peak["arrived"] = max(peak["arrived"], pipe.stats.latency.waiting)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.monotonic()
    st = pipe.run()
    done.set()
    t.join()
    # capture ran at its own pace: every sample was received, the late ones counted
    assert src.delivered == total_s * RATE and st.source.received_frames == total_s * RATE
    assert st.drops.windows > 0
    total_windows = total_s - 5 + 1
    assert st.inference.windows + st.drops.windows <= total_windows and st.inference.windows >= 2
    assert peak["frames"] <= pipe.feed.buffer.capacity_frames
    assert peak["arrived"] <= 2 + 8  # pending windows are bounded
    assert st.source.dropped_frames == pipe.feed.buffer.dropped_frames
    # dropped audio skips stream time instead of compressing it: windows stay in order and
    # never start later than the audio they come from
    starts = [s.start_s for s in c.scores]
    assert all(b > a for a, b in zip(starts, starts[1:])) and starts[-1] <= total_s - 5 + 0.1
    assert time.monotonic() - t0 < 15
    assert pairs_balanced(c.events)


def test_hot_swap_between_windows_loses_no_audio():
    backend = BandEnergyBackend()
    new_labels = [LabelConfig(name="smoke alarm"), LabelConfig(name="doorbell")]
    swapped = threading.Event()
    ended_by_swap = []

    src = ScriptSource([("audio", noise(20))], speed=20)
    pipe, c = make_pipeline(src, backend=backend)

    def swap_later():
        while len(c.scores) < 5:
            time.sleep(0.01)
        scorer = Scorer(backend, new_labels, ScoringConfig())
        rules = rules_for(new_labels, EventsConfig(threshold=0.0, hysteresis=0.0, min_windows=1, cooldown_s=0.0))
        pipe.swap_live(scorer, rules, on_applied=lambda evs: (ended_by_swap.extend(evs), swapped.set()))

    t = threading.Thread(target=swap_later)
    t.start()
    st = pipe.run()
    t.join()
    assert swapped.is_set() and st.reloads == 1
    assert st.source.dropped_frames == 0 and st.drops.windows == 0 and st.inference.windows == 16
    assert [s.start_s for s in c.scores] == [float(k) for k in range(16)]
    label_sets = [s.labels for s in c.scores]
    k = label_sets.index(("smoke alarm", "doorbell"))
    assert k >= 5 and all(ls == ("dog barking", "smoke alarm", "glass breaking") for ls in label_sets[:k])
    assert all(ls == ("smoke alarm", "doorbell") for ls in label_sets[k:])
    # the removed labels' events ended at the swap, smoke alarm's stayed open, doorbell started
    assert sorted(e.label for e in ended_by_swap) == ["dog barking", "glass breaking"]
    assert all(e.type == "end" for e in ended_by_swap)
    smoke = [e for e in c.events if e.label == "smoke alarm"]
    assert [e.type for e in smoke] == ["start", "end"]
    assert [e.type for e in c.events if e.label == "doorbell"] == ["start", "end"]
    assert c.labels_seen == [("smoke alarm", "doorbell")]
    assert pairs_balanced(c.events)


def test_a_source_that_keeps_failing_logs_once_per_reason_not_per_retry(caplog):
    """A camera that is gone for good: retries go on (counted), the log says it once, and
    again only when the reason changes."""
    import logging

    from monitor.sources import Source
    from monitor.stream.supervise import SourceSupervisor

    reasons = ["connection refused"] * 6 + ["401 Unauthorized"] * 4

    class Gone(Source):
        sample_rate_hz, channels, description = 16000, 1, "stream:rtsp://cam/s"
        realtime = True

        def run(self, put, stop):
            raise RuntimeError(reasons.pop(0) if reasons else "401 Unauthorized")

    stop = threading.Event()
    sup = SourceSupervisor(
        Gone(), put=lambda b: None, signal=lambda m: None, stop=stop, reopen=Gone, retry_first_s=0.01, retry_max_s=0.02
    )
    t = threading.Thread(target=sup.run)
    with caplog.at_level(logging.WARNING, logger="monitor.stream.supervise"):
        t.start()
        assert _wait(lambda: sup.restarts >= 12, 10)
        stop.set()
        t.join(5)
    lines = [r.getMessage() for r in caplog.records]
    assert sup.restarts >= 12
    failed = [m for m in lines if "failed:" in m]
    assert len(failed) == 2 and "connection refused" in failed[0] and "401" in failed[1], lines
    assert len([m for m in lines if "reopening in" in m]) == 1 and len([m for m in lines if "reopened" in m]) == 1
    assert len(lines) <= 5, lines


def _wait(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pred():
        time.sleep(0.01)
    return pred()
