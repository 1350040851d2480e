"""CPU seconds per hour of monitoring, with and without the change gate and the adaptive hop,
on a long home-like stream; and with a real model, what the gate does to the events.

The stream (seeded): ``--minutes`` of quiet, real-looking background -- 1/f noise and mains
hum at -58/-60 dBFS with a slow drift, over which the quiet lead-ins of the uiowa-dev clips
are looped with random gain -- with the uiowa-dev clips themselves inserted at random times
(``--events`` of them, at least 12 s apart). Each configuration runs the real command,
`sound-monitor run --source STREAM --fast --no-tui --events ...` as its own process, with
the dataset's 27 class names as labels; its CPU time (user + system, from the child's
rusage) per hour of audio is reported. The events of the ungated run are the reference:
for the gated runs, the share of reference events that still start (same label, start
within 5 s) and the delay added to their start.

Usage: python scripts/bench_cost_per_hour.py ../shared/data/uiowa-dev [--model offline|DIR]
       [--minutes 60] [--events 110] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.audio_io import read_audio  # noqa: E402
from monitor.bench import quiet_lead, room_tone  # noqa: E402

RATE = 16000


def build_stream(dataset: Path, minutes: float, n_events: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    rows = list(csv.DictReader(open(dataset / "labels.csv", newline="")))
    clips, leads = [], []
    for r in rows:
        x = read_audio(dataset / r["path"], RATE).samples
        clips.append((r["label"], x))
        lead = quiet_lead(x, RATE)
        if len(lead) >= 3200:
            leads.append(lead)
    total = int(minutes * 60 * RATE)
    out = np.zeros(total, np.float32)
    pos = 0
    while pos < total:  # background: room tone with the clips' own quiet over it
        seg = room_tone(float(rng.uniform(20, 60)), RATE, rng)
        if leads and rng.random() < 0.5:
            lead = leads[int(rng.integers(len(leads)))] * np.float32(10 ** (rng.uniform(-3, 3) / 20))
            at = int(rng.integers(0, max(1, len(seg) - len(lead))))
            seg[at : at + len(lead)] += lead[: len(seg) - at]
        n = min(len(seg), total - pos)
        out[pos : pos + n] = seg[:n]
        pos += n
    # the clips at random times, at least 12 s apart, never in the first or last 10 s
    starts = np.sort(rng.choice(np.arange(10, minutes * 60 - 25, 12.0), size=n_events, replace=False))
    inserted = []
    for t0 in starts:
        t0 = float(t0 + rng.uniform(0, 2))
        label, x = clips[int(rng.integers(len(clips)))]
        a = int(t0 * RATE)
        x = x[: total - a]
        out[a : a + len(x)] += x
        inserted.append({"label": label, "start_s": round(t0, 3), "seconds": round(len(x) / RATE, 3)})
    return out, inserted


def run(stream: Path, model: str, labels: list[str], extra: list[str], state: Path, env: dict) -> tuple[float, list]:
    ev = state / "events.jsonl"
    cmd = [sys.executable, "-m", "monitor", "run", "--source", str(stream), "--fast", "--no-tui", "--model", model]
    cmd += ["--labels", ",".join(labels), "--events", str(ev), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=state, env=dict(env, SOUND_MONITOR_STATE=str(state)), capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(extra)}): {r.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    events = [json.loads(l) for l in ev.read_text().splitlines()] if ev.exists() else []
    summary = [l for l in r.stderr.splitlines() if "finished:" in l]
    return cpu, [e for e in events if e["type"] == "start"], {"wall_s": round(wall, 1), "summary": summary[-1:]}


def compare(ref: list, got: list) -> dict:
    kept, delays = 0, []
    for e in ref:
        match = [g for g in got if g["label"] == e["label"] and abs(g["start_s"] - e["start_s"]) <= 5.0]
        if match:
            kept += 1
            delays.append(min(match, key=lambda g: abs(g["start_s"] - e["start_s"]))["start_s"] - e["start_s"])
    return {
        "reference_events": len(ref),
        "kept": kept,
        "kept_share": kept / len(ref) if ref else 1.0,
        "median_start_delay_s": float(np.median(delays)) if delays else 0.0,
        "max_start_delay_s": float(np.max(delays)) if delays else 0.0,
        "extra_events": max(0, len(got) - kept),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--model", default="offline")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--events", type=int, default=110)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threshold", type=float, default=None, help="event threshold for every label (default: the config's)"
    )
    ap.add_argument(
        "--scoring",
        choices=("vs-background", "softmax"),
        default=None,
        help="scoring method (a model with random weights: softmax keeps its scores low, as a quiet room's are)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--configs", default="ungated,gated,idle_hop,gated_idle_hop", help="which runs (comma-separated; ungated first)"
    )
    a = ap.parse_args()
    ds = Path(a.dataset)
    labels = sorted({r["label"] for r in csv.DictReader(open(ds / "labels.csv", newline=""))})
    work = Path(tempfile.mkdtemp(prefix="cost-per-hour-"))
    audio, inserted = build_stream(ds, a.minutes, a.events, a.seed)
    stream = work / "stream.wav"
    sf.write(stream, audio, RATE, subtype="PCM_16")
    hours = len(audio) / RATE / 3600.0
    env = dict(os.environ)
    configs = {
        "ungated": [],
        "gated": ["--config", str(work / "gate.yaml")],
        "idle_hop": ["--config", str(work / "idle.yaml")],
        "gated_idle_hop": ["--config", str(work / "both.yaml")],
    }
    (work / "gate.yaml").write_text("stream: {change_gate: true}\n")
    (work / "idle.yaml").write_text("stream: {idle_hop_s: 2.5}\n")
    (work / "both.yaml").write_text("stream: {change_gate: true, idle_hop_s: 2.5}\n")
    wanted = [c.strip() for c in a.configs.split(",") if c.strip()]
    if not wanted or wanted[0] != "ungated" or any(c not in configs for c in wanted):
        raise SystemExit(f"--configs: start with ungated, then any of {', '.join(configs)}")
    results = {}
    for name, extra in ((k, configs[k]) for k in wanted):
        state = work / name
        state.mkdir()
        thr = ["--threshold", str(a.threshold)] if a.threshold is not None else []
        thr += ["--scoring", a.scoring] if a.scoring else []
        cpu, starts, info = run(stream, a.model, labels, extra + thr, state, env)
        results[name] = {"cpu_s": round(cpu, 1), "cpu_s_per_hour": round(cpu / hours, 1), "starts": starts, **info}
        print(
            f"{name}: {cpu:.1f} CPU s, {cpu / hours:.1f} CPU s per hour of audio, {len(starts)} events", file=sys.stderr
        )
    ref = results["ungated"]["starts"]
    out = {
        "model": a.model,
        "audio_hours": round(hours, 3),
        "inserted_clips": len(inserted),
        "threshold": a.threshold,
        "scoring": a.scoring,
        "cpu": platform_cpu(),
        "configs": {
            k: {kk: vv for kk, vv in v.items() if kk != "starts"}
            | {"events": len(v["starts"]), "ratio_to_ungated": round(v["cpu_s"] / results["ungated"]["cpu_s"], 3)}
            for k, v in results.items()
        },
        "events_vs_ungated": {k: compare(ref, v["starts"]) for k, v in results.items() if k != "ungated"},
    }
    print(json.dumps(out, indent=None if a.json else 1))
    return 0


def platform_cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
