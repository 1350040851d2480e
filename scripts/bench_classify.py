#!/usr/bin/env python
"""Time `classify` on the full-size CLAP architecture against the transformers pipeline.

Builds a randomly initialised ``ClapConfig()`` checkpoint (the laion/clap-htsat-unfused
architecture: random weights cost the same as real ones) into a cache directory, exports it
with the project's own export code, then times, on the same 5 s clip with 10 labels:

- ours: front-end (numpy log-mel), encoder (onnxruntime fp32, and int8 when exported),
  scoring, and the total per clip with label embeddings cached (as `classify` does after the
  first run) and with the 10 labels re-encoded every call (as the pipeline does);
- reference: ``transformers.pipeline("zero-shot-audio-classification")`` per clip, and its
  ``ClapFeatureExtractor`` alone.

Prints one JSON line per figure: {"metric", "unit", "median", "min", "max", "n"}, then the
speed-up and the load average (the machine may be shared).

    .venv/bin/python scripts/bench_classify.py [--cache DIR] [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.bench import figure, time_ms  # noqa: E402

LABELS = ["dog", "cat", "cow", "duck", "frog", "horse", "owl", "pig", "rooster", "sheep"]


def emit(metric: str, values_ms: list[float], unit: str = "ms") -> dict:
    rec = figure(metric, unit, values_ms, 2)
    print(json.dumps(rec), flush=True)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/sound-monitor/bench-full-random"))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--int8", action="store_true", help="also time the int8 audio encoder")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import torch

    torch.set_num_threads(args.threads)
    from bench_model import ensure_bench_model  # scripts/ is on sys.path when run as a script

    from monitor.audio_io import read_audio
    from monitor.models.clap.encoder import ClapBackend
    from monitor.models.labels import label_embeddings, softmax_scores

    hf_dir, onnx_dir = ensure_bench_model(Path(args.cache))

    clip = read_audio(ROOT / "monitor" / "demo" / "dog.mp3", 48000).samples[: 5 * 48000].copy()
    assert clip.shape[0] == 5 * 48000
    print(
        json.dumps(
            {
                "setup": {
                    "clip_s": 5.0,
                    "labels": len(LABELS),
                    "threads": args.threads,
                    "cpu_count": os.cpu_count(),
                    "loadavg_before": os.getloadavg(),
                }
            }
        ),
        flush=True,
    )

    # ---- ours ----------------------------------------------------------------------------
    backend = ClapBackend.from_dir(onnx_dir, threads=args.threads)
    label_vecs = label_embeddings(backend, LABELS)  # warm: text encoder loaded
    feats = backend.frontend.batch_features(clip[None])
    emb = backend.embed_features(feats)
    r_fe = emit("ours_frontend_ms_per_clip", time_ms(lambda: backend.frontend.batch_features(clip[None]), args.repeats))
    r_enc = emit("ours_encoder_fp32_ms_per_clip", time_ms(lambda: backend.embed_features(feats), args.repeats))
    emit(
        "ours_scoring_ms_per_clip", time_ms(lambda: softmax_scores(emb, label_vecs, backend.logit_scale), args.repeats)
    )

    def ours_cached():
        e = backend.embed_audio(clip[None])
        return softmax_scores(e, label_vecs, backend.logit_scale)

    def ours_uncached():
        lv = label_embeddings(backend, LABELS)  # no cache dir: re-encodes the 10 prompts
        e = backend.embed_audio(clip[None])
        return softmax_scores(e, lv, backend.logit_scale)

    r_tot = emit("ours_total_ms_per_clip_labels_cached", time_ms(ours_cached, args.repeats))
    r_unc = emit("ours_total_ms_per_clip_labels_reencoded", time_ms(ours_uncached, args.repeats))
    if args.int8:
        b8 = ClapBackend.from_dir(onnx_dir, threads=args.threads, int8=True)
        emit("ours_encoder_int8_ms_per_clip", time_ms(lambda: b8.embed_features(feats), args.repeats))

    # ---- reference -----------------------------------------------------------------------
    from transformers import pipeline

    pipe = pipeline("zero-shot-audio-classification", model=str(hf_dir))
    fe = pipe.feature_extractor
    emit(
        "ref_feature_extractor_ms_per_clip",
        time_ms(lambda: fe([clip], sampling_rate=48000, return_tensors="pt"), args.repeats),
    )
    with torch.inference_mode():
        r_ref = emit("ref_pipeline_ms_per_clip", time_ms(lambda: pipe(clip, candidate_labels=LABELS), args.repeats))

    # agreement on this clip (random weights: a sanity figure, not accuracy)
    ref = {d["label"]: d["score"] for d in pipe(clip, candidate_labels=LABELS)}
    ours = ours_cached()[0]
    print(
        json.dumps(
            {
                "metric": "max_abs_score_diff_vs_pipeline",
                "value": float(max(abs(ref[l] - ours[i]) for i, l in enumerate(LABELS))),
            }
        )
    )
    print(
        json.dumps(
            {"metric": "speedup_vs_reference_labels_cached", "value": round(r_ref["median"] / r_tot["median"], 2)}
        )
    )
    print(
        json.dumps(
            {"metric": "speedup_vs_reference_labels_reencoded", "value": round(r_ref["median"] / r_unc["median"], 2)}
        )
    )
    print(
        json.dumps(
            {
                "loadavg_after": os.getloadavg(),
                "ours_frontend_plus_encoder_ms": round(r_fe["median"] + r_enc["median"], 2),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
