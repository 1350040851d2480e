"""Choose change-gate parameters quickly: replay one stream through the real monitor with the
model's embeddings computed once.

`scripts/bench_cost_per_hour.py` measures what matters (CPU seconds, real processes), but each
configuration costs a full run of the model over an hour of audio. This script builds the same
stream (same arguments, same seed -> the same audio), runs the ungated monitor once in this
process with the real model and keeps every window's embedding, then runs each gate setting
through the same real pipeline (windower, level stage, change gate, scorer, event tracker),
with the encoder answering from those embeddings. The share of windows the model had to run
on stands in for the CPU (the gate's own cost is not in it: measure that with
bench_cost_per_hour); events are compared with the ungated run's as there.

Usage: python scripts/replay_gate.py ../shared/data/uiowa-dev --classes even --seed 1 \
       --threshold 0.2 --gate 3:15:0.3,3:15:0.3:6 [--model offline]
A gate is change_db:max_age_s[:rise[:novel_db[:margin]]] (novel_db 0: no frame novelty rule).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_cost_per_hour import (  # noqa: E402
    RATE,
    add_stream_arguments,
    build_stream,
    compare,
    dataset_rows,
    gate_config,
)

from monitor import cli  # noqa: E402
from monitor.stream.change_gate import ChangeGate  # noqa: E402
from monitor.stream.shared_encoder import SharedEncoder  # noqa: E402


class Replay:
    """Patches ``SharedEncoder.embed``: records the real model's vectors, or answers from them."""

    def __init__(self) -> None:
        self.cache: dict[tuple, np.ndarray] = {}
        self.recording = True
        self.ran = 0
        self._real = SharedEncoder.embed
        self._reuse = ChangeGate.reuse
        self.decisions: list[tuple[float, str]] = []  # (window start, why the model ran | "reused")

    def __enter__(self) -> Replay:
        replay = self

        def embed(enc, windows, stream):
            replay.ran += len(windows)
            keys = [(round(w.start_s, 4), w.samples.size) for w in windows]
            if replay.recording:
                out = replay._real(enc, windows, stream)
                for k, v in zip(keys, out):
                    replay.cache[k] = v
                return out
            return np.stack([replay.cache[k] for k in keys])

        SharedEncoder.embed = embed  # type: ignore[method-assign]

        def reuse(gate, ws, t_s, off, any_open):
            before = dict(gate.why)
            got = replay._reuse(gate, ws, t_s, off, any_open)
            why = [k for k in gate.why if gate.why[k] != before.get(k, 0)]
            replay.decisions.append((round(t_s, 3), why[0] if why else "reused"))
            return got

        ChangeGate.reuse = reuse  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc) -> None:
        SharedEncoder.embed = self._real  # type: ignore[method-assign]
        ChangeGate.reuse = self._reuse  # type: ignore[method-assign]


def run_once(stream: Path, model: str, labels: list[str], stream_cfg: str, extra: list[str], work: Path) -> list:
    """One run; its events and per-window scores stay in ``work`` (``<gate>.events.jsonl``, ``.scores.jsonl``)."""
    name = stream_cfg.replace(" ", "").replace(":", "=").replace(",", "_")
    ev = work / f"{name}.events.jsonl"
    ev.unlink(missing_ok=True)
    cfg = work / "config.yaml"
    cfg.write_text("stream: {" + stream_cfg + "}\n")
    argv = ["run", "--config", str(cfg), "--source", str(stream), "--fast", "--no-tui", "--model", model]
    argv += ["--labels", ",".join(labels), "--events", str(ev), "--scores", str(work / f"{name}.scores.jsonl")]
    argv += extra
    rc = cli.main(argv)
    if rc != 0:
        raise SystemExit(f"run failed ({stream_cfg}): exit {rc}")
    events = [json.loads(l) for l in ev.read_text().splitlines()] if ev.exists() else []
    return [e for e in events if e["type"] == "start"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_stream_arguments(ap)
    ap.add_argument(
        "--gate",
        required=True,
        help="KEY=VALUE/... gate settings (db, age, rise, novel, margin, settled), comma-separated",
    )
    a = ap.parse_args()
    ds = Path(a.dataset)
    rows = dataset_rows(ds, a.classes)
    labels = sorted({r["label"] for r in rows})
    work = Path(tempfile.mkdtemp(prefix="replay-gate-"))
    audio, _ = build_stream(rows, ds, a.minutes, a.events, a.seed)
    stream = work / "stream.wav"
    sf.write(stream, audio, RATE, subtype="PCM_16")
    extra = ["--threshold", str(a.threshold)] if a.threshold is not None else []
    os.environ["SOUND_MONITOR_STATE"] = str(work / "state")
    out: dict = {"work": str(work), "seed": a.seed, "classes": a.classes, "threshold": a.threshold, "gates": {}}
    # the ungated run's embeddings, kept per stream and model (the stream is a function of these)
    key = f"{a.model.replace('/', '_')}-{a.classes}-s{a.seed}-{a.minutes:g}m-{a.events}e-t{a.threshold}"
    store = Path.home() / ".cache" / "sound-monitor" / "replay" / f"{key}.npz"
    with Replay() as rp:
        if store.exists():
            z = np.load(store)
            rp.cache = {(float(t), int(n)): v for t, n, v in zip(z["t"], z["n"], z["v"])}
            rp.recording = False
        ref = run_once(stream, a.model, labels, "change_gate: false", extra, work)
        total = rp.ran
        if rp.recording:
            store.parent.mkdir(parents=True, exist_ok=True)
            ks = list(rp.cache)
            np.savez(store, t=[k[0] for k in ks], n=[k[1] for k in ks], v=np.stack([rp.cache[k] for k in ks]))
        out["windows"] = total
        out["reference_events"] = len(ref)
        rp.recording = False
        for g in (s.strip() for s in a.gate.split(",") if s.strip()):
            cfg = gate_config(g)
            rp.ran = 0
            rp.decisions = []
            got = run_once(stream, a.model, labels, cfg, extra, work)
            c = compare(ref, got)
            out["gates"][g] = {
                "ran_share": round(rp.ran / max(1, total), 3),
                **{k: c[k] for k in ("kept", "median_start_delay_s", "max_start_delay_s", "extra_events", "lost")},
            }
            print(g, json.dumps(out["gates"][g]), file=sys.stderr)
            (work / f"decisions-{len(out['gates'])}.json").write_text(json.dumps({"gate": g, "windows": rp.decisions}))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
