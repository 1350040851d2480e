"""Where should Microsoft CLAP's log-mel front-end run: in numpy before the audio graph (what
`export --model msclap:...` writes) or inside the graph (torchlibrosa's STFT and mel
layers exported with it)? Measured per window, i.e. per hop: at a 1 s hop a 44.1 kHz window
does not start on the 320-sample frame grid of the one before, so neither way can reuse the
previous window's frames.

For each msclap version, on a randomly initialised full-size audio encoder (same cost as the
real weights): median ms per window over ``--reps`` runs, one window at a time, of
- ``numpy_frontend_ms``: monitor.models.clap.frontend on one window;
- ``graph_features_ms``: the exported audio graph on those features (onnxruntime);
- ``graph_waveform_ms``: the same encoder exported with its torchlibrosa front-end inside,
  on the waveform;
and the two totals. Needs the export extra and msclap (`make install-test`).

Usage: python scripts/bench_msclap_frontend.py [--versions 2023,2022] [--reps 15] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(np.median(times))


def features_graph(version: str, work: Path):
    """A randomly initialised full-size msclap ``version`` and its audio encoder exported as
    `export --model msclap:VERSION` exports it (mel features in, the front-end in numpy);
    -> (model, front-end params, one window's waveform [1, S], its features, the graph's path)."""
    import torch
    from msclap_helpers import text_dir

    from monitor.models.clap import msclap_export as me
    from monitor.models.clap.export import onnx_export
    from monitor.models.clap.frontend import ClapFrontend

    text = text_dir(version, work / f"text-{version}")
    ckpt = me.make_random_msclap(work / f"msclap-{version}.pth", version, text)
    model, _ = me.reference_model(ckpt, text)
    fe_params = me.frontend_params(version, me._msclap_config(version))
    fe = ClapFrontend(fe_params)
    audio, _text = me.wrappers(model, me.VERSIONS[version].audio)
    wave = (0.1 * np.random.default_rng(0).standard_normal((1, fe.max_samples))).astype(np.float32)
    feats = fe.batch_features(wave)
    path = work / f"features-{version}.onnx"
    onnx_export(audio, (torch.from_numpy(feats),), path, ["x"], ["e"], {"x": {0: "b"}, "e": {0: "b"}})
    return model, fe_params, wave, feats, path


def measure(version: str, work: Path, reps: int, threads: int) -> dict:
    import torch

    from monitor.models.clap.export import normalised_encoder, onnx_export
    from monitor.models.clap.frontend import ClapFrontend
    from monitor.models.ort import session

    torch.set_num_threads(threads)
    model, fe_params, wave, feats, pf = features_graph(version, work)
    fe = ClapFrontend(fe_params)
    pw = work / f"waveform-{version}.onnx"
    onnx_export(
        normalised_encoder(model.audio_encoder, lambda m, w: m(w)[0]),
        (torch.from_numpy(wave),),
        pw,
        ["x"],
        ["e"],
        {"x": {0: "b"}, "e": {0: "b"}},
    )
    sf_, sw = session(pf, threads), session(pw, threads)
    ef = sf_.run(None, {"x": feats})[0]
    ew = sw.run(None, {"x": wave})[0]
    out = {
        "version": version,
        "window_s": fe_params.max_length_s,
        "embeddings_max_abs_diff": float(np.abs(ef - ew).max()),
        "numpy_frontend_ms": median_ms(lambda: fe.batch_features(wave), reps),
        "graph_features_ms": median_ms(lambda: sf_.run(None, {"x": feats}), reps),
        "graph_waveform_ms": median_ms(lambda: sw.run(None, {"x": wave}), reps),
    }
    out["numpy_frontend_plus_graph_ms"] = out["numpy_frontend_ms"] + out["graph_features_ms"]
    out["in_graph_frontend_ms"] = out["graph_waveform_ms"] - out["graph_features_ms"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", default="2023,2022")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from monitor.bench import cpu_info

    cpu = cpu_info()[0]
    with tempfile.TemporaryDirectory(prefix="msclap-frontend-") as d:
        rows = [measure(v.strip(), Path(d), a.reps, a.threads) for v in a.versions.split(",") if v.strip()]
    report = {"cpu": cpu, "threads": a.threads, "reps": a.reps, "results": rows}
    if a.json:
        print(json.dumps(report))
    else:
        print(f"CPU: {cpu}, {a.threads} threads, median of {a.reps}")
        for r in rows:
            print(
                f"msclap {r['version']} ({r['window_s']:g} s): numpy front-end {r['numpy_frontend_ms']:.1f} ms + graph "
                f"{r['graph_features_ms']:.1f} ms = {r['numpy_frontend_plus_graph_ms']:.1f} ms; front-end in the graph "
                f"{r['graph_waveform_ms']:.1f} ms (its front-end {r['in_graph_frontend_ms']:.1f} ms); "
                f"embeddings differ by {r['embeddings_max_abs_diff']:.1e}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
