"""CPU seconds per hour of monitoring, with and without the change gate and the adaptive hop,
on a long home-like stream; and with a real model, what the gate does to the events.

The stream (seeded): ``--minutes`` of quiet, real-looking background -- 1/f noise and mains
hum at -58/-60 dBFS with a slow drift, over which the quiet lead-ins of the uiowa-dev clips
are looped with random gain -- with the uiowa-dev clips themselves inserted at random times
(``--events`` of them, at least 12 s apart). Each configuration runs the real command,
`sound-monitor run --source STREAM --fast --no-tui --events ...` as its own process, with
the dataset's 27 class names as labels; its CPU time (user + system, from the child's
rusage) per hour of audio is reported, whole and in steady state (less what a start costs:
the same command on the stream's first 10 s, which an always-on monitor pays once). The
events of the ungated run are the reference:
for the gated runs, the share of reference events that still start (same label, start
within 5 s) and the delay added to their start.

Usage: python scripts/bench_cost_per_hour.py ../shared/data/uiowa-dev [--model offline|DIR]
       [--minutes 60] [--events 110] [--classes all|even|odd] [--seed N] [--gate db=4.5/age=15,...] [--json]
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
from monitor.bench import cpu_info, quiet_lead, room_tone  # noqa: E402

RATE = 16000
# --gate KEY=VALUE/...: short names of the config's change-gate fields
GATE_KEYS = {
    "db": "change_db",
    "age": "change_max_age_s",
    "rise": "change_rise",
    "novel": "change_novel_db",
    "margin": "change_margin",
    "settled": "change_settled_s",
}


def gate_config(spec: str) -> str:
    """``db=4.5/age=15`` -> the stream config's flow mapping body, gate on; fields left out
    keep the monitor's defaults ("default" alone: every default)."""
    out = "change_gate: true"
    for kv in spec.split("/"):
        if kv.strip() in ("", "default"):
            continue
        k, v = kv.split("=")
        if k not in GATE_KEYS:
            raise SystemExit(f"--gate: unknown key {k!r} (one of {', '.join(GATE_KEYS)})")
        out += f", {GATE_KEYS[k]}: {float(v)}"
    return out


def dataset_rows(dataset: Path, classes: str) -> list[dict]:
    """The dataset's clips, of all its classes or of one half of them (sorted class names,
    even or odd positions): gate parameters are chosen on one half and reported on the other."""
    rows = list(csv.DictReader(open(dataset / "labels.csv", newline="")))
    if classes == "all":
        return rows
    names = sorted({r["label"] for r in rows})
    keep = set(names[0 if classes == "even" else 1 :: 2])
    return [r for r in rows if r["label"] in keep]


def build_stream(
    rows: list[dict], dataset: Path, minutes: float, n_events: int, seed: int, level_dbfs: float | None = None
) -> tuple[np.ndarray, list[dict]]:
    """``level_dbfs``: each inserted clip scaled to this RMS (+-3 dB, seeded) instead of its
    recorded level (the recordings are calibrated quiet, about -47 dBFS)."""
    rng = np.random.default_rng(seed)
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
        if level_dbfs is not None:
            rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1e-9
            x = x * np.float32(10 ** ((level_dbfs + rng.uniform(-3, 3)) / 20) / rms)
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
    kept, delays, lost = 0, [], []
    for e in ref:
        match = [g for g in got if g["label"] == e["label"] and abs(g["start_s"] - e["start_s"]) <= 5.0]
        if match:
            kept += 1
            delays.append(min(match, key=lambda g: abs(g["start_s"] - e["start_s"]))["start_s"] - e["start_s"])
        else:
            lost.append((e["label"], e["start_s"]))
    return {
        "reference_events": len(ref),
        "kept": kept,
        "kept_share": kept / len(ref) if ref else 1.0,
        "median_start_delay_s": float(np.median(delays)) if delays else 0.0,
        "max_start_delay_s": float(np.max(delays)) if delays else 0.0,
        "extra_events": max(0, len(got) - kept),
        "lost": lost,  # (label, start_s) of the reference events that did not start
    }


def add_stream_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments that make the stream and its runs (the same ones give the same audio)."""
    ap.add_argument("dataset")
    ap.add_argument("--model", default="offline")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--events", type=int, default=110)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threshold", type=float, default=None, help="event threshold for every label (default: the config's)"
    )
    ap.add_argument(
        "--classes", choices=("all", "even", "odd"), default="all", help="the clips of all classes or of one half"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_stream_arguments(ap)
    ap.add_argument(
        "--scoring",
        choices=("vs-background", "softmax"),
        default=None,
        help="scoring method (a model with random weights: softmax keeps its scores low, as a quiet room's are)",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--repeat", type=int, default=1, help="run every configuration N times, interleaved; report the median CPU"
    )
    ap.add_argument(
        "--gate",
        default="default",
        help="change gate settings for the gated runs, KEY=VALUE/... over db, age, rise, novel, margin, settled "
        "(the config's change_* fields; left out: the monitor's defaults); several (comma-separated) run one "
        "gated configuration each",
    )
    ap.add_argument(
        "--configs", default="ungated,gated,idle_hop,gated_idle_hop", help="which runs (comma-separated; ungated first)"
    )
    a = ap.parse_args()
    ds = Path(a.dataset)
    rows = dataset_rows(ds, a.classes)
    labels = sorted({r["label"] for r in rows})
    work = Path(tempfile.mkdtemp(prefix="cost-per-hour-"))
    audio, inserted = build_stream(rows, ds, a.minutes, a.events, a.seed)
    stream = work / "stream.wav"
    sf.write(stream, audio, RATE, subtype="PCM_16")
    # what a start costs (imports, model load, label embedding): the same command on the
    # stream's first 10 s; subtracted for the steady-state figures of an always-on monitor
    head = work / "head.wav"
    sf.write(head, audio[: 10 * RATE], RATE, subtype="PCM_16")
    head_hours = 10.0 / 3600.0
    hours = len(audio) / RATE / 3600.0
    env = dict(os.environ)
    gates = [g.strip() for g in a.gate.split(",") if g.strip()]
    configs: dict[str, str] = {"ungated": "change_gate: false"}  # explicit: whatever the default
    for g in gates:
        gate = gate_config(g)
        suffix = "" if len(gates) == 1 else f"@{g}"
        configs["gated" + suffix] = gate
        configs["gated_idle_hop" + suffix] = gate + ", idle_hop_s: 2.5"
    configs["idle_hop"] = "change_gate: false, idle_hop_s: 2.5"
    wanted = [c.strip() for c in a.configs.split(",") if c.strip()]
    if len(gates) > 1:  # every gate setting of each kind asked for
        wanted = [k for k in configs if k.split("@")[0] in wanted]
    if not wanted or wanted[0] != "ungated" or any(c not in configs for c in wanted):
        raise SystemExit(f"--configs: start with ungated, then any of {', '.join(configs)}")
    thr = ["--threshold", str(a.threshold)] if a.threshold is not None else []
    thr += ["--scoring", a.scoring] if a.scoring else []
    results: dict[str, dict] = {}
    starts_cpu: list[float] = []
    for rep in range(max(1, a.repeat)):
        state = work / f"start-{rep}"
        state.mkdir()
        cpu, _, _ = run(head, a.model, labels, thr, state, env)
        starts_cpu.append(round(cpu, 2))
        print(f"start #{rep + 1}: {cpu:.2f} CPU s (a 10 s stream)", file=sys.stderr)
        for name in wanted:
            state = work / f"{name.replace('@', '-').replace('/', '_').replace('=', '')}-{rep}"
            state.mkdir()
            extra = []
            if configs[name]:
                cfg = state / "config.yaml"
                cfg.write_text("stream: {" + configs[name] + "}\n")
                extra = ["--config", str(cfg)]
            cpu, starts, info = run(stream, a.model, labels, extra + thr, state, env)
            r = results.setdefault(name, {"cpu_runs": [], "starts": starts, **info})
            r["cpu_runs"].append(round(cpu, 1))
            print(f"{name} #{rep + 1}: {cpu:.1f} CPU s, {cpu / hours:.1f} CPU s per hour of audio, {len(starts)} events",
                  file=sys.stderr)  # fmt: skip
    start_cpu = float(np.median(starts_cpu))
    for r in results.values():
        r["cpu_s"] = float(np.median(r["cpu_runs"]))
        r["cpu_s_per_hour"] = round(r["cpu_s"] / hours, 1)
        # steady state: the start and the head's 10 s taken out
        r["cpu_s_per_hour_steady"] = round((r["cpu_s"] - start_cpu) / (hours - head_hours), 1)
    ref = results["ungated"]["starts"]
    out = {
        "model": a.model,
        "audio_hours": round(hours, 3),
        "inserted_clips": len(inserted),
        "classes": a.classes,
        "seed": a.seed,
        "threshold": a.threshold,
        "scoring": a.scoring,
        "cpu": cpu_info()[0],
        "start_cpu_s": {"median": start_cpu, "runs": starts_cpu},
        "configs": {
            k: {kk: vv for kk, vv in v.items() if kk != "starts"}
            | {
                "events": len(v["starts"]),
                "ratio_to_ungated": round(v["cpu_s"] / results["ungated"]["cpu_s"], 3),
                "steady_ratio_to_ungated": round(
                    v["cpu_s_per_hour_steady"] / results["ungated"]["cpu_s_per_hour_steady"], 3
                ),
            }
            for k, v in results.items()
        },
        "events_vs_ungated": {k: compare(ref, v["starts"]) for k, v in results.items() if k != "ungated"},
    }
    print(json.dumps(out, indent=None if a.json else 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
