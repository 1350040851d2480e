"""Peak memory of `classify` and `run --fast` on an hour-long file (issue 15 item 10).

Builds a 60-minute 44.1 kHz mono WAV from the bundled demo clips (looped at varying gain),
then runs each command as a child process and reports its peak RSS (ru_maxrss) and wall
time as JSON lines. Usage: python scripts/bench_classify_memory.py --model DIR [--minutes 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(path: Path, minutes: float) -> None:
    from monitor.audio_io import read_audio

    x = np.concatenate([read_audio(p, 44100).samples for p in sorted((ROOT / "monitor" / "demo").glob("*.mp3"))])
    n = int(minutes * 60 * 44100)
    with sf.SoundFile(path, "w", 44100, 1, subtype="PCM_16") as f:
        done, i = 0, 0
        while done < n:
            part = (x * (0.5 + 0.5 * (i % 7) / 7)).astype(np.float32)[: n - done]
            f.write(part)
            done += part.size
            i += 1


def measure(cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.execve(cmd[0], cmd, env)
    _, status, usage = os.wait4(pid, 0)
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--minutes", type=float, default=60.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "hour.wav"
        build(wav, args.minutes)
        env = {**os.environ, "SOUND_MONITOR_STATE": str(Path(d) / "state")}
        py = sys.executable
        for name, cmd in (
            (
                "classify",
                [
                    py,
                    "-m",
                    "monitor",
                    "classify",
                    str(wav),
                    "--model",
                    args.model,
                    "--labels",
                    "owl,dog,cat",
                    "--no-label-cache",
                ],
            ),
            (
                "run_fast",
                [
                    py,
                    "-m",
                    "monitor",
                    "run",
                    "--source",
                    str(wav),
                    "--fast",
                    "--no-tui",
                    "--model",
                    args.model,
                    "--labels",
                    "owl,dog,cat",
                ],
            ),
        ):
            rec = measure(cmd, env)
            print(json.dumps({"command": name, "minutes": args.minutes, **rec}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
