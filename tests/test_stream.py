"""Streaming path: block-size invariance, streaming == offline, capture callback, live view."""

from __future__ import annotations

import itertools
import json
import threading

import numpy as np
import pytest
import soundfile as sf
from cli_helpers import cli
from stream_helpers import BandEnergyBackend, fake_input_stream, fake_sounddevice

from monitor.config import EventsConfig, LabelConfig, ScoringConfig, StreamConfig
from monitor.events import EventTracker, rules_for
from monitor.scoring import Scorer
from monitor.sinks.base import Sink
from monitor.sources import ArraySource
from monitor.stream.pipeline import SinglePipeline
from monitor.stream.windows import Windower

LABELS = [LabelConfig(name=n) for n in ("dog barking", "smoke alarm", "glass breaking")]


class Collect(Sink):
    name = "collect"

    def __init__(self):
        self.scores, self.events, self.closed = [], [], False

    def publish(self, event):
        self.events.append(event)

    def on_scores(self, scores):
        self.scores.append(scores)

    def close(self):
        self.closed = True


def run_pipeline(samples, rate, block, backend=None, scoring="vs-background", **stream_kw):
    backend = backend or BandEnergyBackend()
    scorer = Scorer(backend, LABELS, ScoringConfig(method=scoring))
    counter = itertools.count(1)
    tracker = EventTracker(
        rules_for(LABELS, EventsConfig(threshold=0.3, min_windows=1)),
        device_id="d",
        source="s",
        model=backend.name,
        next_seq=lambda: next(counter),
    )
    sink = Collect()
    src = ArraySource(samples, rate, "test", block_frames=block, realtime=False)
    SinglePipeline(src, backend, scorer, tracker, [sink], StreamConfig(**stream_kw)).run()
    return sink


def make_signal(rate, seconds=12.0):
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(1)
    x = 0.1 * np.sin(2 * np.pi * 440 * t) * (t > 4) + 0.05 * rng.standard_normal(t.size) * (t < 7)
    return x.astype(np.float32)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_block_size_invariance(rate):
    x = make_signal(rate)
    runs = [run_pipeline(x, rate, b) for b in (256, 1000, 4096)]
    ref = runs[0]
    assert len(ref.scores) == 8  # 12 s, 5 s windows every 1 s
    for other in runs[1:]:
        assert [s.start_s for s in other.scores] == [s.start_s for s in ref.scores]
        np.testing.assert_array_equal(
            np.array([s.values for s in other.scores]), np.array([s.values for s in ref.scores])
        )
    # the scores really vary over time, so equality is not trivial
    v = np.array([s.values for s in ref.scores])
    assert np.ptp(v[:, 0]) > 1e-3
    assert ref.closed


def test_window_timestamps_exact():
    w = Windower(48000, 5.0, 1.0)
    out = []
    x = np.zeros(48000 * 8, np.float32)
    for i in range(0, x.size, 777):
        out += w.push(x[i : i + 777])
    assert [(o.start_s, o.end_s) for o in out] == [(float(k), float(k + 5)) for k in range(4)]
    assert all(o.samples.size == 240000 for o in out)


def test_short_stream_gives_one_short_window():
    sink = run_pipeline(make_signal(16000, 2.5), 16000, 1024)
    assert len(sink.scores) == 1 and sink.scores[0].end_s == pytest.approx(2.5)


def test_level_gate_skips_inference():
    backend = BandEnergyBackend()
    x = np.concatenate([np.zeros(16000 * 6, np.float32), make_signal(16000, 6)])
    sink = run_pipeline(x, 16000, 512, backend=backend, gate_dbfs=-60.0)
    gated = [s for s in sink.scores if s.gated]
    assert gated and gated[0].start_s == 0.0 and all(v == 0.0 for v in gated[0].values)
    assert gated[0].level_dbfs == -150.0
    assert any(not s.gated for s in sink.scores)


def test_streaming_equals_offline_with_clap(tiny_clap_export, tmp_path):
    """run --fast --scores == the backend on the same 5 s slice (softmax), within 1e-4."""
    from monitor.audio_io import read_audio
    from monitor.models.clap.encoder import ClapBackend
    from monitor.models.labels import label_embeddings, softmax_scores

    audio = np.concatenate([read_audio(f"monitor/demo/{n}.mp3", 48000).samples for n in ("dog", "cow", "rooster")])
    wav = tmp_path / "mix.wav"
    sf.write(wav, audio, 48000, subtype="FLOAT")
    labels = "dog,cow,rooster,cat"
    scores_path = tmp_path / "scores.jsonl"
    r = cli(
        "run",
        "--source",
        str(wav),
        "--fast",
        "--no-tui",
        "--model",
        str(tiny_clap_export),
        "--labels",
        labels,
        "--scoring",
        "softmax",
        "--scores",
        str(scores_path),
        "--events",
        str(tmp_path / "ev.jsonl"),
        state=tmp_path / "state",
        clean=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(l) for l in scores_path.read_text().splitlines()]
    n_expected = (audio.size - 240000) // 48000 + 1
    assert len(lines) == n_expected
    backend = ClapBackend.from_dir(tiny_clap_export)
    lab = label_embeddings(backend, labels.split(","), ("This is a sound of {}.",))
    for line in lines:
        a = int(round(line["t_s"] * 48000))
        ref = softmax_scores(backend.embed_audio(audio[None, a : a + 240000]), lab, backend.logit_scale)[0]
        got = np.array([line["scores"][k] for k in labels.split(",")])
        np.testing.assert_allclose(got, ref, atol=1e-4)
    assert np.ptp([l["scores"]["dog"] for l in lines]) > 1e-3


def test_capture_callback_fake_stream_counts_overflow(monkeypatch):
    """MicSource through sounddevice's real callback signature and CallbackFlags."""
    import sounddevice as real_sd

    import monitor.sources as sources

    FakeSD = fake_sounddevice(real_sd, fake_input_stream(real_sd, overflow_at={5}), 2)
    monkeypatch.setattr(sources, "import_sounddevice", lambda: FakeSD)
    mic = sources.MicSource(None, None, channels=2, block_frames=1600)
    from monitor.stream.buffer import RingBuffer

    buf = RingBuffer(capacity_frames=1600 * 30)  # holds 30 of the 40 blocks: 10 dropped
    stop = threading.Event()
    with pytest.raises(Exception, match="stopped"):
        mic.run(lambda b: buf.put(b), stop)
    assert mic.status_flags == 1
    assert buf.received_frames == 40 * 1600
    assert buf.dropped_frames == 10 * 1600
    first = buf.get(timeout=1)
    assert first.shape == (1600, 2) and np.abs(first).max() > 0  # copied before reuse


def test_live_view_renders_labels_bars_and_active_event():
    from rich.console import Console

    from monitor.sinks.terminal import ViewState, render

    st = ViewState(
        model="m",
        source="file:x.wav",
        labels=("dog barking", "smoke alarm"),
        thresholds={"dog barking": 0.5, "smoke alarm": 0.5},
        scores={"dog barking": 0.9, "smoke alarm": 0.1},
        active={"dog barking"},
        level_dbfs=-23.0,
        inference_ms=12.5,
        dropped_windows=3,
    )
    c = Console(record=True, width=140)
    c.print(render(st))
    text = c.export_text()
    assert "dog barking" in text and "smoke alarm" in text
    assert "dropped windows 3" in text and "-23.0 dBFS" in text
    dog = [l for l in text.splitlines() if "dog barking" in l][0]
    smoke = [l for l in text.splitlines() if "smoke alarm" in l][0]
    assert "ACTIVE" in dog and "0.90" in dog and dog.count("█") == 26 and "|" in dog
    assert "ACTIVE" not in smoke and smoke.count("█") == 3


def test_cli_end_to_end_events_jsonl(tiny_clap_export, tmp_path):
    ev_path = tmp_path / "events.jsonl"
    cmd = [
        "run",
        "--source",
        "monitor/demo/owl.mp3",
        "--fast",
        "--no-tui",
        "--model",
        str(tiny_clap_export),
        "--labels",
        "owl,dog",
        "--scoring",
        "softmax",
        "--threshold",
        "0.0",
        "--events",
        str(ev_path),
    ]
    r = cli(*cmd, state=tmp_path / "state", clean=True)
    assert r.returncode == 0, r.stderr
    evs = [json.loads(l) for l in ev_path.read_text().splitlines()]
    # threshold 0: both labels on from the first windows (min_windows 2), closed at the end
    assert sorted((e["label"], e["type"]) for e in evs) == [
        ("dog", "end"),
        ("dog", "start"),
        ("owl", "end"),
        ("owl", "start"),
    ]
    assert [e["seq"] for e in evs] == [1, 2, 3, 4]
    for e in evs:
        assert e["schema"] == 1 and e["source"] == "file:owl.mp3" and e["model"].startswith("ckpt@")
        assert e["wall_time"].endswith("Z")
    by_id = {}
    for e in evs:
        by_id.setdefault(e["event_id"], []).append(e["type"])
    assert all(v == ["start", "end"] for v in by_id.values())
    # seq survives a restart
    r = cli(*cmd, state=tmp_path / "state", clean=True)
    evs2 = [json.loads(l) for l in ev_path.read_text().splitlines()][4:]
    assert [e["seq"] for e in evs2] == [5, 6, 7, 8]


def test_cli_bad_source_and_config_errors(tmp_path):
    r = cli(
        "run",
        "--source",
        str(tmp_path / "nope.wav"),
        "--fast",
        "--no-tui",
        "--model",
        "offline",
        state=tmp_path / "state",
        clean=True,
    )
    assert r.returncode == 2 and "audio file not found" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("stream:\n  hop_s: 20\nlabels:\n  - name: dog\n    treshold: 0.3\n")
    r = cli("check-config", bad, state=tmp_path / "state", clean=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "stream.hop_s" in r.stderr and "labels[0].treshold: unknown key" in r.stderr


def test_adaptive_hop_follows_activity():
    """idle_hop_s while nothing is near its threshold; hop_s as soon as a score or event is."""
    from monitor.types import Scores

    backend = BandEnergyBackend()
    scorer = Scorer(backend, LABELS, ScoringConfig())
    counter = itertools.count(1)
    tracker = EventTracker(
        rules_for(LABELS, EventsConfig(threshold=0.5, hysteresis=0.1, min_windows=1)),
        device_id="d",
        source="s",
        model=backend.name,
        next_seq=lambda: next(counter),
    )
    src = ArraySource(np.zeros(16000, np.float32), 16000, "test", realtime=False)
    pipe = SinglePipeline(src, backend, scorer, tracker, [Collect()], StreamConfig(hop_s=1.0, idle_hop_s=4.0))
    names = tuple(l.name for l in LABELS)

    def emit(i, values):
        pipe._emit(Scores(i, float(i), i + 5.0, -20.0, names, values))
        return pipe.segmenter.windower.hop_n / 16000

    assert emit(0, (0.1, 0.2, 0.0)) == 4.0  # quiet: the long hop
    assert emit(1, (0.1, 0.45, 0.0)) == 1.0  # above the off level (0.4): back to the short hop
    assert emit(2, (0.1, 0.2, 0.0)) == 4.0
    assert emit(3, (0.9, 0.0, 0.0)) == 1.0  # an event starts
    assert tracker.active_labels() == ["dog barking"]
    assert emit(4, (0.45, 0.0, 0.0)) == 1.0  # still open (above the off level)
    assert emit(5, (0.0, 0.0, 0.0)) == 4.0  # ended: idle again
    assert pipe.stats.segments.hop_changes == 5


def test_adaptive_hop_config_bounds():
    with pytest.raises(Exception, match="idle_hop_s"):
        StreamConfig(window_s=5.0, hop_s=1.0, idle_hop_s=6.0)  # longer than the window: audio no window sees
    with pytest.raises(Exception, match="idle_hop_s"):
        StreamConfig(hop_s=2.0, idle_hop_s=1.0)
    assert StreamConfig(hop_s=1.0, idle_hop_s=5.0).idle_hop_s == 5.0
    # window_s unset: the model's own window, known when the pipeline is built
    from fault_helpers import ScriptSource, make_pipeline

    from monitor.errors import UserError

    cfg = StreamConfig(hop_s=1.0, idle_hop_s=6.0)
    src = ScriptSource([("audio", np.zeros(16000, np.float32))], speed=0, realtime=False)
    with pytest.raises(UserError, match="5 s for this model"):
        make_pipeline(src, backend=BandEnergyBackend(), stream=cfg)


def test_adaptive_hop_is_a_pure_function_of_scores_and_rules():
    from monitor.stream.windows import adaptive_hop_s

    off = {"dog": 0.4, "alarm": 0.3}
    assert adaptive_hop_s(("dog", "alarm"), (0.1, 0.2), off, False, 1.0, 3.0) == 3.0  # idle
    assert adaptive_hop_s(("dog", "alarm"), (0.1, 0.3), off, False, 1.0, 3.0) == 1.0  # alarm reached its off level
    assert adaptive_hop_s(("dog", "alarm"), (0.0, 0.0), off, True, 1.0, 3.0) == 1.0  # an event is open
    assert adaptive_hop_s(("cat",), (0.9,), off, False, 1.0, 3.0) == 3.0  # a label without a rule does not count


def test_stream_clock_segments_are_monotonic_and_aligned():
    from monitor.stream.windows import StreamClock
    from monitor.types import Window

    rate = 16000
    c = StreamClock(rate)
    w = Window(3, np.zeros(5 * rate, np.float32), rate, 3.0, 8.0, -20.0)
    assert c.shift(w) is w and c.next_index == 4  # first segment: unchanged
    start = c.start_after_gap(segment_samples=10 * rate + 7, gap_s=2.345, hop_n=rate)
    assert start % (rate // 100) == 0 and start >= 10 * rate + 7 + int(2.345 * rate)
    assert start - (10 * rate + 7 + 2.345 * rate) < rate / 100  # the rounding adds < 10 ms
    first = Window(0, w.samples, rate, 0.0, 5.0, -20.0)
    s = c.shift(first)
    assert s.index == 4 and s.start_s == pytest.approx(start / rate) and s.end_s == pytest.approx(start / rate + 5.0)
    assert not c.first_segment and c.position_n(100) == start + 100
