#!/usr/bin/env python
"""Fetched CLAP vs the project's own export, full-size architecture, in one run.

The hub is not reachable from the build machines, so the full-size random CLAP of
scripts/bench_model.py is laid out as the transformers.js conversion (Xenova layout:
unnormalised outputs, a second output, dynamic-uint8 ``*_quantized.onnx``) and served by the
local hub stand-in (tests/hub_stub.py); ``models fetch clap`` then fetches it as a user's
machine would fetch the real one. Random weights cost exactly what real ones cost.

Prints JSON figure lines (DESIGN.md's format):
- ``encoder_ms_<model>``: audio encoder ms per window (batch 1), models measured round-robin
  in one process so that machine drift hits all alike: the project's export (fp32, int8),
  the fetched fp32 and int8 (after the graph rewrite), the fetched fp32 quantised here
  (``--int8``), and the fetched fp32 as downloaded;
- ``text_peak_rss_mb_<variant>``: peak RSS of a fresh process that loads the fetched model
  and embeds 10 labels x the background prompts (label cache cold), fp32 and int8 text model;
- ``download_mb_<variant>``: what the fetch downloaded for this architecture.

    .venv/bin/python scripts/bench_fetch.py [--rounds 15] [--preset larger-general]

``--preset larger-general``: the same for laion/larger_clap_general's architecture (random,
full size, served at that preset's pins); the project's own export is not built for it, so
only the fetched models are timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
from bench_model import DEFAULT_DIR, ensure_bench_model  # noqa: E402
from hub_stub import HubStub  # noqa: E402

from monitor.bench import figure  # noqa: E402
from monitor.config import CLAP_PRESETS, HubConfig  # noqa: E402
from monitor.models.clap import fetch  # noqa: E402

LABELS = [
    "dog barking",
    "smoke alarm",
    "glass breaking",
    "baby crying",
    "door knock",
    "speech",
    "music",
    "rooster crowing",
    "cat meowing",
    "rain",
]

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
RSS_CHILD = r"""
import json, sys
from monitor.models.clap.encoder import ClapBackend
from monitor.models.labels import label_embeddings
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
b = ClapBackend.from_dir(sys.argv[1], threads=2, int8=sys.argv[2] == "int8")
before = hwm()
e = label_embeddings(b, json.loads(sys.argv[3]))
print(json.dumps({"before_mb": before, "peak_mb": hwm()}))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--base", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--preset", default="htsat-unfused", choices=sorted(CLAP_PRESETS))
    args = ap.parse_args()
    say = lambda m: print(f"[bench-fetch] {m}", file=sys.stderr, flush=True)  # noqa: E731
    pins = CLAP_PRESETS[args.preset]
    own: Path | None = None
    if args.preset == "htsat-unfused":
        hf, own = ensure_bench_model(args.base)
    else:
        from clap_factories import make_random_checkpoint

        args.base = args.base.parent / f"{args.base.name}-{args.preset}"
        hf = args.base / "hf"
        if not (hf / "config.json").is_file():
            say(f"building a random full-size {args.preset} checkpoint in {hf} ...")
            make_random_checkpoint(hf, size="larger-full")
    js = args.base / "xenova-layout"
    if not (js / "onnx" / "text_model_quantized.onnx").is_file():
        from clap_factories import make_transformersjs_layout

        say(f"laying out {hf} as the transformers.js conversion in {js} ...")
        make_transformersjs_layout(hf, js)
    fetched = {}
    with HubStub() as stub:
        stub.add_repo(pins["repo"], pins["revision"], js)
        stub.add_repo(pins["checkpoint_repo"], pins["checkpoint_revision"], hf)
        os.environ["HF_ENDPOINT"] = stub.url
        for variant in ("fp32", "int8"):  # (a no-op once fetched: delete <base>/fetched to fetch again)
            out = args.base / "fetched" / f"clap-{variant}"
            source = HubConfig(preset=args.preset, variant=variant)
            m = fetch.fetch_clap(out, source, say=say, int8=variant == "fp32")
            fetched[variant] = out
            mb = sum(f["size"] for f in m["fetched"]["files"].values()) / 1e6
            print(json.dumps(figure(f"download_mb_{variant}", "MB", [mb], digits=1)), flush=True)
            print(
                json.dumps(
                    {
                        "metric": f"graph_checks_{variant}",
                        **m["audio"]["graph_checks"],
                        "rewrites": len(m["audio"]["graph_rewrites"]),
                    }
                ),
                flush=True,
            )

    from monitor.models.clap.encoder import ClapBackend
    from monitor.models.clap.frontend import ClapFrontend, FrontendParams

    models = {}
    if own is not None:
        models["own_fp32"] = ClapBackend.from_dir(own, threads=2)
        models["own_int8"] = ClapBackend.from_dir(own, threads=2, int8=True)
    models |= {
        "fetched_fp32": ClapBackend.from_dir(fetched["fp32"], threads=2),
        "fetched_int8": ClapBackend.from_dir(fetched["int8"], threads=2, int8=True),
        "fetched_fp32_local_int8": ClapBackend.from_dir(fetched["fp32"], threads=2, int8=True),
    }
    # the fetched fp32 graph exactly as downloaded (no rewrite, no saved optimised graph)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        for p in fetched["fp32"].iterdir():
            os.symlink(p, raw / p.name)
        (raw / "manifest.json").unlink()
        man = json.loads((fetched["fp32"] / "manifest.json").read_text())
        man["audio"]["optimized"] = {}
        (raw / "manifest.json").write_text(json.dumps(man))
        models["fetched_fp32_as_downloaded"] = ClapBackend.from_dir(raw, threads=2)
        fe = ClapFrontend(FrontendParams.from_dict(man["frontend"]))
        rng = np.random.default_rng(0)
        feats = fe.features((0.1 * rng.standard_normal(5 * 48000)).astype(np.float32))
        import time

        times: dict[str, list[float]] = {k: [] for k in models}
        for b in models.values():
            b.embed_features(feats)  # warm-up
        for _ in range(args.rounds):
            for k, b in models.items():
                t0 = time.perf_counter()
                b.embed_features(feats)
                times[k].append(1e3 * (time.perf_counter() - t0))
        for k, v in times.items():
            print(json.dumps(figure(f"encoder_ms_{k}", "ms", v)), flush=True)
        ref = np.median(times["own_fp32" if own is not None else "fetched_fp32"])
        base_name = "own_fp32" if own is not None else "fetched_fp32"
        for k, v in times.items():
            print(
                json.dumps(
                    {"metric": f"encoder_ratio_{k}_vs_{base_name}", "value": round(float(np.median(v) / ref), 3)}
                )
            )
        del models
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for variant, out in fetched.items():
        peaks, befores = [], []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as state:
                env["SOUND_MONITOR_STATE"] = state
                r = subprocess.run(
                    [sys.executable, "-c", RSS_CHILD, str(out), variant, json.dumps(LABELS)],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                got = json.loads(r.stdout.strip().splitlines()[-1])
                peaks.append(got["peak_mb"])
                befores.append(got["before_mb"])
        print(json.dumps(figure(f"peak_rss_mb_before_labels_{variant}", "MB", befores, digits=0)), flush=True)
        print(json.dumps(figure(f"text_peak_rss_mb_{variant}", "MB", peaks, digits=0)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
