"""The CLAP presets' encoder costs on their full-size architectures (random weights), for
the budget rule (`model.cpu_budget_pct`, monitor/models/budget.py) and README's model table.

    python scripts/measure_presets.py [--json notes/issue31-costs.json]

For each preset: a random checkpoint of its architecture (scripts/clap_factories.py), its
audio encoder exported as the hub's transformers.js layout has it, the work of one window
counted from the graph (GFLOP, `bench.graph_gflop`), the fp32 encoder's median ms per window
with 1 and 2 threads, and this machine's matmul rate: the ratio of measured to floor time
is what the budget estimate multiplies the floor by. With ``--msclap``, Microsoft CLAP 2023's
audio encoder too (full size, random weights, exported as `export --model msclap:2023` does:
not a hub preset, but under the same budget rule when its export is present).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))  # msclap_helpers: the text tower msclap needs, built locally

from clap_factories import make_random_checkpoint, make_transformersjs_layout  # noqa: E402

from monitor import bench  # noqa: E402
from monitor.models.ort import session  # noqa: E402

SIZES = {"htsat-unfused": "full", "larger-general": "larger-full"}
# larger-music-speech is larger-general's architecture (the same HTSAT-base audio tower and
# the same ONNX sizes): it costs the same and is not measured twice


def msclap_graph(version: str, work: Path) -> tuple[Path, np.ndarray]:
    """Microsoft CLAP's audio encoder (full size, random weights) exported as `export --model
    msclap:VERSION` exports it (scripts/bench_msclap_frontend.py), and one window's features."""
    from bench_msclap_frontend import features_graph

    _model, _fe, _wave, feats, path = features_graph(version, work)
    return path, feats


SHAPE = (1, 1, 1001, 64)  # one window's mel features (10 s frame grid at 48 kHz, 64 mel bins)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--msclap", action="store_true", help="also Microsoft CLAP 2023 (needs torch and msclap)")
    ap.add_argument("--only", default=None, help="comma-separated: measure only these (e.g. msclap-2023)")
    a = ap.parse_args()
    out: dict = {"cpu": bench.cpu_info()[0], "matmul_gflops": {}}
    for t in (1, 2):
        out["matmul_gflops"][str(t)] = round(float(np.median(bench.matmul_gflops(t))), 1)
    out["presets"] = {}
    with tempfile.TemporaryDirectory() as d:
        todo = [*SIZES, *(["msclap-2023"] if a.msclap else [])]
        only = set(a.only.split(",")) if a.only else None
        for preset in [p for p in todo if only is None or p in only]:
            if preset == "msclap-2023":
                onnx_path, x = msclap_graph("2023", Path(d))
            else:
                ckpt = make_random_checkpoint(Path(d) / preset / "ckpt", size=SIZES[preset])
                js = make_transformersjs_layout(ckpt, Path(d) / preset / "js", quantized=False)
                onnx_path = js / "onnx" / "audio_model.onnx"
                x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
            gflop = bench.graph_gflop(onnx_path, tuple(x.shape))
            row = {"gflop_per_window": round(gflop or 0.0, 2), "audio_mb": round(onnx_path.stat().st_size / 1e6, 1)}
            for t in (1, 2):
                sess = session(onnx_path, t)
                name = sess.get_inputs()[0].name
                ms = bench.time_ms(lambda s=sess, n=name, v=x: s.run(None, {n: v}), a.repeats, warmup=2)
                row[f"encoder_ms_{t}_thread"] = round(float(np.median(ms)), 1)
                floor = (gflop or 0.0) / out["matmul_gflops"][str(t)] * 1000.0
                row[f"measured_over_floor_{t}_thread"] = (
                    round(row[f"encoder_ms_{t}_thread"] / floor, 2) if floor else None
                )
            out["presets"][preset] = row
            print(preset, json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
