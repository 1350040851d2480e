"""Scripted sources and backends for fault-injection tests (no devices, accelerated pace)."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
from stream_helpers import BandEnergyBackend

from monitor.config import EventsConfig, LabelConfig, ScoringConfig, SourceConfig, StreamConfig
from monitor.events import EventTracker, rules_for
from monitor.scoring import Scorer
from monitor.sinks.base import Sink
from monitor.sources import Source
from monitor.stream.pipeline import SinglePipeline

RATE = 16000
LABELS = [LabelConfig(name=n) for n in ("dog barking", "smoke alarm", "glass breaking")]


def noise(seconds: float, level: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


class ScriptSource(Source):
    """Plays steps at ``speed`` x real time: ("audio", samples) | ("stall", wall_s) | ("raise", msg)
    | ("stop", event) (sets an event, e.g. the pipeline's stop, and returns)."""

    def __init__(
        self, steps, *, speed: float = 20.0, block_frames: int = 1600, name: str = "script", realtime: bool = True
    ):
        self.steps = list(steps)
        self.speed = speed
        self.block_frames = block_frames
        self.sample_rate_hz = RATE
        self.channels = 1
        self.description = name
        self.realtime = realtime
        self.never_block = realtime
        self.delivered = 0

    def run(self, put, stop: threading.Event) -> None:
        for kind, arg in self.steps:
            if stop.is_set():
                return
            if kind == "audio":
                for a in range(0, len(arg), self.block_frames):
                    if stop.is_set():
                        return
                    b = arg[a : a + self.block_frames].reshape(-1, 1)
                    put(b)
                    self.delivered += len(b)
                    if self.speed:
                        if stop.wait(len(b) / RATE / self.speed):
                            return
            elif kind == "stall":
                if stop.wait(arg):
                    return
            elif kind == "raise":
                raise OSError(arg)
            elif kind == "stop":
                arg.set()
                return


class Collect(Sink):
    name = "collect"

    def __init__(self, pipe_ref=None):
        self.scores, self.events, self.closed, self.labels_seen = [], [], False, []
        self.pipe = pipe_ref
        self.status_seen = []

    def publish(self, event):
        self.events.append(event)

    def on_scores(self, scores):
        self.scores.append(scores)
        if self.pipe is not None:
            self.status_seen.append(self.pipe.stats.source.status)

    def set_labels(self, labels):
        self.labels_seen.append(tuple(labels))

    def close(self):
        self.closed = True


def make_pipeline(
    source,
    *,
    sinks=(),
    backend=None,
    labels=LABELS,
    events=None,
    reopen=None,
    stop=None,
    source_cfg=None,
    stream=None,
    buffer_s=10.0,
    max_pending_windows=4,
):
    backend = backend or BandEnergyBackend()
    scorer = Scorer(backend, labels, ScoringConfig())
    counter = itertools.count(1)
    events = events or EventsConfig(threshold=0.0, hysteresis=0.0, min_windows=1, cooldown_s=0.0)
    tracker = EventTracker(
        rules_for(labels, events),
        device_id="dev1",
        source=source.description,
        model=backend.name,
        next_seq=lambda: next(counter),
    )
    collect = Collect()
    pipe = SinglePipeline(
        source,
        backend,
        scorer,
        tracker,
        [collect, *sinks],
        stream or StreamConfig(),
        source_cfg or SourceConfig(stall_timeout_s=0.25, retry_max_s=0.2, silence_timeout_s=60.0, buffer_s=buffer_s),
        stop=stop,
        max_pending_windows=max_pending_windows,
        reopen=reopen,
    )
    collect.pipe = pipe
    return pipe, collect


def pairs_balanced(events) -> bool:
    """Every start has exactly one later end with the same event_id, and nothing else."""
    open_ = {}
    for e in events:
        if e.type == "start":
            if e.event_id in open_:
                return False
            open_[e.event_id] = e
        else:
            if e.event_id not in open_:
                return False
            del open_[e.event_id]
    return not open_


class SlowBackend(BandEnergyBackend):
    def __init__(self, delay_s: float):
        super().__init__()
        self.delay_s = delay_s

    def embed_audio(self, batch):
        time.sleep(self.delay_s)
        return super().embed_audio(batch)
