"""Steady-state cost of the monitor: CPU share and RSS while a file plays at real-time pace
through the real pipeline (file source -> resampler -> windows -> encoder -> scorer ->
events -> JSONL), plus the delay from a window's last sample reaching the worker to its
event/score lines.

    .venv/bin/python scripts/measure_run.py --model DIR [--minutes 10] [--hop 1.0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.audio_io import read_audio
from monitor.bench import rss_mb
from monitor.config import EventsConfig, LabelConfig, ModelConfig, ScoringConfig, StreamConfig
from monitor.events import EventTracker, rules_for
from monitor.models.select import select_backend
from monitor.scoring import Scorer
from monitor.sinks.jsonl import JsonlEventSink
from monitor.sources import FileSource
from monitor.stream.pipeline import SinglePipeline


def make_file(path: Path, minutes: float) -> None:
    import soundfile as sf

    demo = Path(__file__).resolve().parents[1] / "monitor" / "demo"
    rate = 48000
    clips = [read_audio(p, rate).samples for p in sorted(demo.glob("*.mp3"))]
    rng = np.random.default_rng(0)
    n = int(minutes * 60 * rate)
    with sf.SoundFile(str(path), "w", rate, 1, subtype="PCM_16") as f:
        written = 0
        while written < n:
            seg = 0.01 * rng.standard_normal(rate * 5).astype(np.float32)
            c = clips[rng.integers(len(clips))]
            seg[: min(c.size, seg.size)] += c[: seg.size]
            seg = seg[: n - written]
            f.write(np.clip(seg, -1, 1))
            written += seg.size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--hop", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    wav = tmp / "ten-minutes.wav"
    make_file(wav, a.minutes)
    sel = select_backend(a.model, ModelConfig(threads=a.threads))
    labels = [
        LabelConfig(name=n)
        for n in (
            "dog barking",
            "smoke alarm",
            "glass breaking",
            "baby crying",
            "doorbell",
            "cat meowing",
            "cow mooing",
            "rooster crowing",
            "owl hooting",
            "speech",
        )
    ]
    scorer = Scorer(sel.backend, labels, ScoringConfig(), cache_dir=tmp / "cache")
    c = itertools.count(1)
    tracker = EventTracker(
        rules_for(labels, EventsConfig()),
        device_id="m",
        source="file",
        model=sel.backend.name,
        next_seq=lambda: next(c),
    )
    src = FileSource(wav, 1024, realtime=True)
    pipe = SinglePipeline(
        src, sel.backend, scorer, tracker, [JsonlEventSink(str(tmp / "events.jsonl"))], StreamConfig(hop_s=a.hop)
    )
    samples = []
    done = threading.Event()

    def sampler():
        while not done.wait(5.0):
            ru = resource.getrusage(resource.RUSAGE_SELF)
            samples.append((time.monotonic(), ru.ru_utime + ru.ru_stime, rss_mb(), pipe.stats.inference.windows))

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    t0 = time.monotonic()
    stats = pipe.run()
    done.set()
    wall = time.monotonic() - t0
    warm = [s for s in samples if s[0] - t0 >= 60]
    cpu_share = (warm[-1][1] - warm[0][1]) / (warm[-1][0] - warm[0][0]) / os.cpu_count()
    lat = np.array(stats.latency.samples_s) * 1000
    out = {
        "model": sel.backend.name,
        "minutes": a.minutes,
        "hop_s": a.hop,
        "wall_s": round(wall, 1),
        "windows": stats.inference.windows,
        "dropped_windows": stats.drops.windows,
        "events": stats.out.events,
        "cpu_share_of_machine": round(cpu_share, 4),
        "cpus": os.cpu_count(),
        "rss_mb_after_60s": round(warm[0][2], 1),
        "rss_mb_end": round(samples[-1][2], 1),
        "rss_mb_max": round(max(s[2] for s in samples), 1),
        "latency_ms_median": round(float(np.median(lat)), 1),
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 1),
        "latency_ms_max": round(float(lat.max()), 1),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
