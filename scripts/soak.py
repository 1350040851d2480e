"""Soak run: N minutes of audio at accelerated pace through the full pipeline with a real
mosquitto broker, with faults injected on the way. Reports events in (JSONL) vs events out
(a subscriber), faults injected and survived, and RSS over time.

    .venv/bin/python scripts/soak.py [--minutes 30] [--backend offline|band] [--speed 0]

Faults: a source stall (watchdog -> stalled -> resumed, gap), a source exception (lost ->
reopened with backoff), NaN/Inf bursts (sanitised, counted), a broker restart (outbox),
a live label change (hot swap). ``--speed 0`` feeds as fast as the pipeline takes it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.audio_io import read_audio
from monitor.bench import rss_mb
from monitor.config import (
    EventsConfig,
    LabelConfig,
    MQTTConfig,
    ScoringConfig,
    SourceConfig,
    StreamConfig,
)
from monitor.events import EventTracker, rules_for
from monitor.scoring import Scorer
from monitor.sinks.jsonl import JsonlEventSink
from monitor.sinks.mqtt import MqttSink
from monitor.sources import Source
from monitor.stream.pipeline import SinglePipeline

DEMO = Path(__file__).resolve().parents[1] / "monitor" / "demo"
LABELS = ["dog barking", "rooster crowing", "cow mooing", "cat meowing", "owl hooting", "smoke alarm"]


class Audio:
    """Deterministic endless programme at ``rate``: animal clips over noise, silences, NaN bursts."""

    def __init__(self, rate: int, total_s: float):
        self.rate = rate
        self.total_n = int(total_s * rate)
        self.pos = 0
        self.clips = [read_audio(p, rate).samples for p in sorted(DEMO.glob("*.mp3"))]
        self.rng = np.random.default_rng(0)
        self.nan_injected = 0
        self._seg = np.zeros(0, np.float32)

    def _segment(self) -> np.ndarray:
        r = self.rng
        kind = r.integers(4)
        n = self.rate * int(r.integers(4, 12))
        x = (0.005 * r.standard_normal(n)).astype(np.float32)
        if kind < 2:
            c = self.clips[r.integers(len(self.clips))]
            x[: min(c.size, n)] += c[:n]
        elif kind == 2:
            x[:] = 0.0  # digital silence (gated)
        if r.random() < 0.05:
            k = int(r.integers(n))
            x[k : k + 50] = np.nan
            x[k + 50 : k + 53] = np.inf
            self.nan_injected += int(min(53, n - k))
        return x

    def take(self, n: int) -> np.ndarray:
        n = min(n, self.total_n - self.pos)
        while self._seg.size < n:
            self._seg = np.concatenate([self._seg, self._segment()])
        out, self._seg = self._seg[:n], self._seg[n:]
        self.pos += n
        return out

    @property
    def done(self) -> bool:
        return self.pos >= self.total_n


class SoakSource(Source):
    """Plays ``Audio`` in blocks; stalls or raises once at given stream positions (faults)."""

    never_block = False
    channels = 1

    def __init__(self, audio: Audio, speed: float, faults: dict, block_frames: int = 1600):
        self.audio = audio
        self.sample_rate_hz = audio.rate
        self.realtime = False
        self.speed = speed
        self.faults = faults  # {"stall_at_s": x, "stall_s": y, "raise_at_s": z}; consumed when fired
        self.block_frames = block_frames
        self.description = "soak"
        self.finished = False  # the programme is over: the supervisor ends the run

    def run(self, put, stop) -> None:
        a = self.audio
        t0 = time.monotonic()
        sent0 = a.pos
        while not stop.is_set() and not a.done:
            t_s = a.pos / a.rate
            if "stall_at_s" in self.faults and t_s >= self.faults["stall_at_s"]:
                self.faults.pop("stall_at_s")
                self.faults["fired_stall"] = True
                if stop.wait(self.faults["stall_s"]):
                    return
            if "raise_at_s" in self.faults and t_s >= self.faults["raise_at_s"]:
                self.faults.pop("raise_at_s")
                self.faults["fired_raise"] = True
                raise OSError("injected: PortAudio error -9999 (device unavailable)")
            b = a.take(self.block_frames)
            if b.size == 0:
                break
            put(b.reshape(-1, 1))
            if self.speed:
                ahead = (a.pos - sent0) / a.rate / self.speed - (time.monotonic() - t0)
                if ahead > 0 and stop.wait(ahead):
                    return
        self.finished = a.done


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(port: int, workdir: Path) -> subprocess.Popen:
    conf = workdir / "mosquitto.conf"
    # persistence: the subscriber's session (and the QoS 1 messages queued for it) survive the
    # broker restart, as with a real home broker; otherwise a message published before the
    # subscriber re-subscribed would be lost to the *subscriber*, not by the monitor
    lines = [
        f"listener {port} 127.0.0.1",
        "persistence true",
        f"persistence_location {workdir}/",
        "autosave_interval 1",
        "allow_anonymous true",
    ]
    if os.geteuid() == 0:
        lines.append("user root")
    conf.write_text("\n".join(lines) + "\n")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    p = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return p
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


class Subscriber:
    def __init__(self, port: int, topic: str):
        import paho.mqtt.client as mqtt

        self.seqs: list[int] = []
        self.payloads: dict[int, str] = {}
        self._lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"soak-sub-{port}", clean_session=False)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.2, 1.0)
        self.c.connect_async("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c, u, msg):
        e = json.loads(msg.payload)
        with self._lock:
            self.seqs.append(e["seq"])
            self.payloads[e["seq"]] = msg.payload.decode()

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--backend", choices=["offline", "band"], default="offline")
    ap.add_argument("--speed", type=float, default=0.0, help="x real time (0 = as fast as possible)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    if a.backend == "offline":
        from monitor.models.offline.backend import OfflineBackend

        backend = OfflineBackend.load(threads=2, models_dir=str(Path(__file__).resolve().parents[1] / "models"))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from stream_helpers import BandEnergyBackend

        backend = BandEnergyBackend()
    total_s = a.minutes * 60
    audio = Audio(backend.sample_rate_hz, total_s)
    faults = {"stall_at_s": 0.2 * total_s, "stall_s": 2.0, "raise_at_s": 0.3 * total_s}
    port = free_port()
    broker = start_broker(port, tmp)
    sub = Subscriber(port, "sound-monitor/soak/events")
    labels = [LabelConfig(name=n) for n in LABELS]
    scorer = Scorer(backend, labels, ScoringConfig(), cache_dir=tmp / "cache")
    counter = itertools.count(1)
    events_cfg = EventsConfig(threshold=0.3, hysteresis=0.1, min_windows=2, cooldown_s=2.0, max_event_s=60.0)
    tracker = EventTracker(
        rules_for(labels, events_cfg),
        device_id="soak",
        source="soak",
        model=backend.name,
        next_seq=lambda: next(counter),
    )
    jsonl = JsonlEventSink(str(tmp / "events.jsonl"))

    def mqtt_sink() -> MqttSink:  # this run's sink, and the next start's (which finds the backlog)
        return MqttSink.from_config(
            MQTTConfig(host="127.0.0.1", port=port, reconnect_min_s=0.2, reconnect_max_s=1.0),
            device_id="soak",
            labels=LABELS,
            state_dir=tmp / "state",
            model_name=backend.name,
            source_name="soak",
        )

    mq = mqtt_sink()
    source = SoakSource(audio, a.speed, faults)
    pipe = SinglePipeline(
        source,
        backend,
        scorer,
        tracker,
        [jsonl, mq],
        StreamConfig(),
        source_cfg=SourceConfig(stall_timeout_s=0.5, retry_max_s=1.0),
        reopen=lambda: SoakSource(audio, a.speed, faults),
    )
    rss: list[tuple[float, float, float]] = []  # (wall s, stream s, MB)
    done = threading.Event()
    t0 = time.monotonic()

    def sampler():
        while not done.wait(1.0):
            rss.append((time.monotonic() - t0, audio.pos / audio.rate, rss_mb()))

    def inject():
        # broker restart at 45 % of the audio, a live label change at 60 %
        fired = set()
        while not done.wait(0.05):
            f = audio.pos / audio.total_n
            if f >= 0.45 and "broker" not in fired:
                fired.add("broker")
                broker.terminate()
                broker.wait(5)
                time.sleep(3.0)
                nonlocal_broker[0] = start_broker(port, tmp)
            if f >= 0.6 and "reload" not in fired:
                fired.add("reload")
                new = labels + [LabelConfig(name="doorbell")]
                pipe.swap_live(
                    Scorer(backend, new[1:], ScoringConfig(), cache_dir=tmp / "cache"), rules_for(new[1:], events_cfg)
                )

    nonlocal_broker = [None]
    ths = [threading.Thread(target=sampler, daemon=True), threading.Thread(target=inject, daemon=True)]
    for t in ths:
        t.start()
    stats = pipe.run()
    wall = time.monotonic() - t0
    done.set()
    for t in ths:
        t.join(10)
    logged = [json.loads(l) for l in (tmp / "events.jsonl").read_text().splitlines()]
    backlog = 0
    if nonlocal_broker[0] is not None or broker.poll() is None:
        # what a run that ended while the broker was away left in the outbox goes at the next start
        nxt = mqtt_sink()
        backlog = nxt.outbox.size()
        deadline = time.time() + 20
        while time.time() < deadline and nxt.outbox.size():
            time.sleep(0.1)
        nxt.close()
    deadline = time.time() + 20
    while time.time() < deadline and len(set(sub.seqs)) < len(logged):
        time.sleep(0.1)
    sub.close()
    received = {s: json.loads(p) for s, p in sub.payloads.items()}
    lost = [e["seq"] for e in logged if received.get(e["seq"]) != e]
    open_ids = {}
    for e in logged:
        open_ids.setdefault(e["event_id"], []).append(e["type"])
    unbalanced = sum(1 for v in open_ids.values() if v != ["start", "end"])
    warm = [r for r in rss if r[1] >= 0.05 * total_s] or rss
    out = {
        "backend": backend.name,
        "audio_minutes": a.minutes,
        "wall_s": round(wall, 1),
        "speedup_x": round(total_s / wall, 1),
        "windows": stats.inference.windows,
        "dropped_windows": stats.drops.windows,
        "dropped_frames": stats.source.dropped_frames,
        "received_frames": stats.source.received_frames,
        "events_in_jsonl": len(logged),
        "events_out_mqtt_unique": len(received),
        "mqtt_duplicates": len(sub.seqs) - len(set(sub.seqs)),
        "events_lost": len(lost),
        "outbox_backlog_delivered_at_next_start": backlog,
        "unbalanced_event_ids": unbalanced,
        "faults": {
            "source_stall": {"injected": bool(faults.get("fired_stall")), "stalls_detected": stats.source.stalls},
            "source_exception": {"injected": bool(faults.get("fired_raise")), "reopens": stats.source.restarts},
            "losses": stats.source.losses,
            "gaps": stats.source.gaps,
            "gap_s": round(stats.source.gap_s, 2),
            "nan_inf_injected": audio.nan_injected,
            "nan_inf_zeroed": stats.segments.nonfinite_samples,
            "broker_restart": 1,
            "live_label_change": stats.reloads,
        },
        "rss_mb": {
            "start_after_warmup": round(warm[0][2], 1),
            "end": round(rss[-1][2], 1),
            "max": round(max(r[2] for r in rss), 1),
            "drift": round(rss[-1][2] - warm[0][2], 1),
            "samples": len(rss),
        },
        "rss_timeline_mb": [round(r[2], 1) for r in rss[:: max(1, len(rss) // 12)]],
        "source_status_end": stats.source.status,
    }
    print(json.dumps(out, indent=1))
    if nonlocal_broker[0] is not None:
        nonlocal_broker[0].terminate()
    if broker.poll() is None:
        broker.terminate()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not lost and not unbalanced else 1


if __name__ == "__main__":
    raise SystemExit(main())
