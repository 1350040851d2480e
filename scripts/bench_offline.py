#!/usr/bin/env python
"""Cost of one 5 s window with the offline backend (YAMNet + MiniLM labels).

Prints JSON lines like `sound-monitor bench`: the YAMNet log-mel front-end, the YAMNet
inference over the window's 0.96 s patches, and the whole embed + score per window, on
the bundled demo recording cut into 5 s windows every 1 s; and YAMNet alone run one patch
per call (the fetched batch-1 graph) against all of a window's patches in one call.

    .venv/bin/python scripts/bench_offline.py [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from monitor import bench
from monitor.models.offline import features
from monitor.models.offline.backend import OfflineBackend


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-dir", help="offline model directory (default: models/offline, fetched if missing)")
    a = ap.parse_args()
    b = OfflineBackend.from_dir(a.model_dir, a.threads) if a.model_dir else OfflineBackend.load(threads=a.threads)
    rate = b.sample_rate_hz
    audio = bench.demo_audio(rate)
    wins = bench.windows_of(audio, rate, 5.0, 1.0, a.repeats)
    scorer = bench.make_scorer(b, bench.LABELS, None)
    print(
        json.dumps(
            {
                "setup": {
                    "model": b.name,
                    "threads": a.threads,
                    "cpus": os.cpu_count(),
                    "loadavg": os.getloadavg()[0],
                    "patches_per_window": int(features.patches(wins[0].samples).shape[0]),
                }
            }
        )
    )
    it = iter(range(1 << 30))

    def nxt():
        return wins[next(it) % len(wins)].samples

    print(
        json.dumps(
            bench.figure(
                "offline_frontend_ms_per_window", "ms", bench.time_ms(lambda: features.patches(nxt()), a.repeats)
            )
        )
    )
    # YAMNet alone: the fetched batch-1 graph one patch per run (how it ran before issue 17)
    # against the batched graph, all patches of a window in one run; same inputs, same run
    from monitor.models.ort import session

    one = session(b.dir / "yamnet.onnx", a.threads)
    batched = b._yamnet

    def per_patch():
        for p in features.patches(nxt()):
            one.run(None, {"audio": p[None, None]})

    def all_patches():
        batched.run(None, {"audio": features.patches(nxt())[:, None]})

    # interleaved, so that a drifting machine load falls on both alike
    t_one, t_all = [], []
    for _ in range(a.repeats):
        t_one += bench.time_ms(per_patch, 1, warmup=0)
        t_all += bench.time_ms(all_patches, 1, warmup=0)
    print(json.dumps(bench.figure("yamnet_per_patch_ms_per_window", "ms", t_one)))
    print(json.dumps(bench.figure("yamnet_batched_ms_per_window", "ms", t_all)))
    ratio = float(np.median(t_one) / np.median(t_all))
    print(json.dumps({"metric": "yamnet_batched_speedup", "unit": "x", "value": round(ratio, 3)}))
    print(
        json.dumps(
            bench.figure(
                "offline_embed_ms_per_window", "ms", bench.time_ms(lambda: b.embed_audio(nxt()[None]), a.repeats)
            )
        )
    )
    print(
        json.dumps(
            bench.figure(
                "offline_total_ms_per_window",
                "ms",
                bench.time_ms(lambda: scorer.score(b.embed_audio(nxt()[None])), a.repeats),
                labels=len(bench.LABELS),
            )
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
