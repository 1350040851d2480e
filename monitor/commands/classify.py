"""`sound-monitor classify FILE... --model DIR --labels "a,b,c"`: whole-file zero-shot scores.

For clips of at most 10 s at 48 kHz the scores equal
``transformers.pipeline("zero-shot-audio-classification")`` on the same checkpoint (softmax
over the labels of ``logit_scale * cos``). Other rates are resampled (soxr); longer files
are scored deterministically: the embeddings of consecutive 10 s crops (the last one
ending at the end of the file) are averaged, then scored. Nothing heavy is imported at
module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from monitor.config import DEFAULT_TEMPLATE, clean_label
from monitor.errors import ModelError, UserError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, mp3, ogg; any rate, any channels)")
    parser.add_argument("--model", default="auto", metavar="DIR", help="exported model directory, 'offline' or 'auto' (default auto)")
    parser.add_argument("--labels", required=True, help='comma-separated candidate labels, e.g. "dog barking,cat,rain"')
    parser.add_argument(
        "--template",
        action="append",
        metavar="T",
        help=f'prompt template with one {{}} (default "{DEFAULT_TEMPLATE}"); repeat to ensemble templates',
    )
    parser.add_argument("--json", action="store_true", help="print JSON: [{file, scores: [{label, score}]}]")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for inference (default 2)")
    parser.add_argument("--int8", action="store_true", help="use the int8 audio encoder (export --int8)")
    parser.add_argument("--no-label-cache", action="store_true", help="do not read or write the label-embedding cache")
    parser.add_argument("--adapter", metavar="PATH", help="a learned adapter (.npz from `eval --save-adapter`): scores from F(x, y) in place of cosine")


def parse_labels(text: str) -> list[str]:
    labels: list[str] = []
    seen: set[str] = set()
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            lab = clean_label(part)
        except ValueError as e:
            raise UserError(f"--labels: {e}") from None
        if lab.casefold() in seen:
            raise UserError(f"--labels: duplicate label {lab!r}")
        seen.add(lab.casefold())
        labels.append(lab)
    if not labels:
        raise UserError('--labels: no labels given (e.g. --labels "dog barking,cat meowing")')
    return labels


def parse_templates(templates: list[str] | None) -> list[str]:
    out = templates or [DEFAULT_TEMPLATE]
    for t in out:
        if t.count("{}") != 1:
            raise UserError(f"--template {t!r}: must contain exactly one {{}} (where the label goes)")
    return out


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from monitor.audio_io import read_audio
    from monitor.config import Config, ModelConfig
    from monitor.labels import label_embeddings, softmax_scores
    from monitor.model_select import select_backend

    labels = parse_labels(args.labels)
    templates = parse_templates(args.template)
    if args.threads < 1:
        raise UserError("--threads must be at least 1")
    for f in args.files:
        p = Path(f)
        if not p.is_file():
            raise UserError(f"audio file not found: {p}" if not p.exists() else f"expected an audio file, got a directory: {p}")

    try:
        selected = select_backend(args.model, ModelConfig(threads=args.threads, int8=args.int8))
    except ImportError as e:
        raise ModelError(f"--model {args.model}: this backend is not available ({e})") from None
    backend = selected.backend
    if args.adapter:
        from monitor.adapt import maybe_adapt

        backend = maybe_adapt(backend, args.adapter)
    log.info("model: %s (%s)", backend.name, selected.reason)

    clips = []
    for f in args.files:
        audio = read_audio(f, backend.sample_rate_hz)
        if audio.nonfinite:
            print(f"warning: {f}: {audio.nonfinite} NaN/Inf samples replaced by 0", file=sys.stderr)
        clips.append(audio)

    cache_dir = None if args.no_label_cache else Config().state_path / "label-cache"
    one = len(labels) == 1
    if one:
        # a softmax over one label is always 1.0: score it against the background prompts,
        # as `run` does by default (scoring vs-background)
        from monitor.config import LabelConfig, ScoringConfig
        from monitor.scoring import Scorer

        scorer = Scorer(backend, [LabelConfig(name=labels[0])], ScoringConfig(templates=tuple(templates)),
                        cache_dir=cache_dir)
        print(f"note: one label: its score is its share against {len(scorer.background_emb)} background prompts "
              "(vs-background), not a softmax over labels", file=sys.stderr)
    else:
        label_vecs = label_embeddings(backend, labels, templates, cache_dir=cache_dir)
    results = []
    for f, audio in zip(args.files, clips):
        emb = backend.embed_audio(audio.samples[None, :])
        scores = scorer.score(emb)[0] if one else softmax_scores(emb, label_vecs, backend.logit_scale)[0]
        order = np.argsort(-scores, kind="stable")
        results.append(
            {
                "file": str(f),
                "duration_s": len(audio.samples) / audio.sample_rate_hz,
                "scores": [{"label": labels[i], "score": float(scores[i])} for i in order],
            }
        )

    if args.json:
        out = [{"file": r["file"], "scores": r["scores"]} for r in results]
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        width = max(len(lab) for lab in labels)
        for r in results:
            print(f"{r['file']}  ({r['duration_s']:.2f} s, {backend.name})")
            for s in r["scores"]:
                bar = "#" * int(round(s["score"] * 30))
                print(f"  {s['score']:7.4f}  {s['label']:<{width}}  {bar}")
    return 0
