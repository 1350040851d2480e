#!/usr/bin/env python
"""CPU and latency per window for onnxruntime thread settings, at the monitor's cadence.

The encoder session is made exactly as the monitor makes it (``ClapBackend``), one window is
embedded every ``--hop`` seconds (sleeping to the next hop, as the monitor's worker does),
and this process's CPU time is divided by the cycles. One JSON line per setting:

    .venv/bin/python scripts/bench_threads.py --model ~/.cache/sound-monitor/bench-full-random/onnx

Each setting runs in its own child process, so one setting's threads cannot linger into the
next one's CPU count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = [(2, False), (1, False), (2, True)]  # (threads, spinning)


def measure(model: str, threads: int, spinning: bool, cycles: int, hop_s: float) -> dict:
    import numpy as np

    from monitor.models.clap.encoder import ClapBackend

    b = ClapBackend.from_dir(model, threads=threads, spinning=spinning)
    x = (
        np.random.default_rng(0)
        .standard_normal((1, 1, b.frontend.n_frames, b.frontend.params.n_mels))
        .astype(np.float32)
    )
    for _ in range(2):
        b.embed_features(x)
    walls = []
    cpu0 = time.process_time()
    for _ in range(cycles):
        start = time.monotonic()
        b.embed_features(x)
        walls.append((time.monotonic() - start) * 1000.0)
        time.sleep(max(0.0, hop_s - (time.monotonic() - start)))
    cpu_ms = (time.process_time() - cpu0) * 1000.0 / cycles
    return {
        "threads": threads,
        "spinning": spinning,
        "hop_s": hop_s,
        "cycles": cycles,
        "wall_ms_per_window": round(float(np.median(walls)), 1),
        "cpu_ms_per_window": round(cpu_ms, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="an exported CLAP directory")
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--hop", type=float, default=1.0)
    ap.add_argument("--child", nargs=2, metavar=("THREADS", "SPINNING"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.model, int(a.child[0]), a.child[1] == "1", a.cycles, a.hop)), flush=True)
        return 0
    for threads, spinning in SETTINGS:
        r = subprocess.run(
            [
                sys.executable,
                __file__,
                "--model",
                a.model,
                "--cycles",
                str(a.cycles),
                "--hop",
                str(a.hop),
                "--child",
                str(threads),
                "1" if spinning else "0",
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}", file=sys.stderr)
            return r.returncode
        sys.stdout.write(r.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
