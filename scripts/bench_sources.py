"""Several sources in one process (one model, windows batched across sources) against one
process per source, as a user would run them (`sound-monitor run`).

For each N in --sources:
  * fast: N looped recordings (`--fast`), one process with N sources vs N processes at once:
    wall time, CPU ms per window, windows per second, peak RSS (summed over processes), and
    how many model calls the shared encoder made and how many carried several sources.
  * real time (--realtime-s > 0): N sources at real-time pace, hop 1 s: CPU share of the
    machine and the batching of windows that complete at the same moment.

    .venv/bin/python scripts/bench_sources.py --model ~/.cache/sound-monitor/bench-full-random/onnx

JSON lines like `sound-monitor bench` (metric, unit, value).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.bench import _proc_mem_mb, demo_audio, write_loop_wav  # noqa: E402

LABELS = "dog barking,smoke alarm,glass breaking,baby crying,doorbell,speech,cat,cow,rooster,owl"


def out(metric: str, unit: str, value, **extra) -> None:
    print(json.dumps({"metric": metric, "unit": unit, "value": value, **extra}), flush=True)


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_procs(cmds: list[list[str]], env: dict) -> dict:
    """Start every command at once; wall time, CPU of all, peak RSS summed over processes."""
    cpu0, t0 = children_cpu_s(), time.monotonic()
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for c in cmds
    ]
    peak = [0.0] * len(procs)
    errs = [""] * len(procs)
    while any(p.poll() is None for p in procs):
        for i, p in enumerate(procs):
            try:
                peak[i] = max(peak[i], _proc_mem_mb(p.pid)[1])
            except (OSError, ValueError):
                pass
        time.sleep(0.2)
    for i, p in enumerate(procs):
        errs[i] = p.stderr.read()
        if p.wait() != 0:
            raise SystemExit(f"run failed (exit {p.returncode}): {errs[i][-2000:]}")
    wall = time.monotonic() - t0
    windows = sum(int(n) for e in errs for n in re.findall(r"finished: (\d+) windows", e))
    enc = [re.search(r"encoder: (\d+) windows in (\d+) model calls \((\d+) shared", e) for e in errs]
    calls = sum(int(m.group(2)) for m in enc if m) or None
    mixed = sum(int(m.group(3)) for m in enc if m) if any(enc) else None
    return {
        "wall_s": wall,
        "cpu_s": children_cpu_s() - cpu0,
        "peak_rss_mb": sum(peak),
        "windows": windows,
        "model_calls": calls,
        "mixed_calls": mixed,
        "stderr": errs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--sources", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seconds", type=float, default=60.0, help="audio per source in the fast runs")
    ap.add_argument("--realtime-s", type=float, default=60.0, help="real-time runs (0: skip)")
    ap.add_argument("--realtime-sources", type=int, default=2)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sources-") as tmp:
        tmp = Path(tmp)
        audio = demo_audio(48000)

        def sources(count: int, seconds: float, tag: str) -> list[Path]:
            # each source hears the demo from another point, so the sources differ
            return [
                write_loop_wav(
                    tmp / f"{tag}{i}.wav", np.roll(audio, -int(i * 7.3 * 48000) % audio.size), 48000, seconds
                )
                for i in range(count)
            ]

        wavs = sources(max(a.sources), a.seconds, "fast")
        env = {**os.environ, "SOUND_MONITOR_STATE": str(tmp / "state")}
        base = [
            sys.executable,
            "-m",
            "monitor",
            "run",
            "--model",
            a.model,
            "--labels",
            LABELS,
            "--no-tui",
            "--hop",
            "1.0",
        ]
        # warm the label cache so no run pays for the text encoder
        run_procs([base + ["--fast", "--source", str(wavs[0])]], env)
        out("load_average_1min", "", round(os.getloadavg()[0], 2))
        for n in a.sources:
            fast = [str(p) for p in wavs[:n]]
            one = run_procs([base + ["--fast"] + [x for w in fast for x in ("--source", w)]], env)
            sep = run_procs([base + ["--fast", "--source", w] for w in fast], env) if n > 1 else one
            for tag, r in (("one_process", one), ("separate_processes", sep)):
                if n == 1 and tag == "separate_processes":
                    continue
                out(f"sources_{n}_{tag}_cpu_ms_per_window", "ms", round(1000 * r["cpu_s"] / max(1, r["windows"]), 1))
                out(f"sources_{n}_{tag}_windows_per_s", "windows/s", round(r["windows"] / r["wall_s"], 2))
                out(f"sources_{n}_{tag}_peak_rss_mb", "MB", round(r["peak_rss_mb"], 1))
            if one["model_calls"]:
                out(
                    f"sources_{n}_one_process_model_calls",
                    "",
                    one["model_calls"],
                    windows=one["windows"],
                    shared_by_several_sources=one["mixed_calls"],
                )
        if a.realtime_s > 0:
            rt = sources(a.realtime_sources, a.realtime_s, "rt")
            for k in sorted({1, a.realtime_sources}):
                # real-time pace: the files play for realtime_s seconds, then the run ends
                r = run_procs([base + [x for w in rt[:k] for x in ("--source", str(w))]], env)
                out(
                    f"realtime_{k}_sources_cpu_share",
                    "% of machine",
                    round(100 * r["cpu_s"] / r["wall_s"] / os.cpu_count(), 1),
                    wall_s=round(r["wall_s"], 1),
                )
                out(f"realtime_{k}_sources_peak_rss_mb", "MB", round(r["peak_rss_mb"], 1))
                if r["model_calls"]:
                    out(
                        f"realtime_{k}_sources_model_calls",
                        "",
                        r["model_calls"],
                        windows=r["windows"],
                        shared_by_several_sources=r["mixed_calls"],
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
