"""`sound-monitor classify FILE... --model DIR --labels "a,b,c"`: whole-file zero-shot scores.

For clips of at most 10 s at 48 kHz the scores equal
``transformers.pipeline("zero-shot-audio-classification")`` on the same checkpoint (softmax
over the labels of ``logit_scale * cos``). Other rates are resampled (soxr); longer files
are scored deterministically: the embeddings of consecutive 10 s crops (the last one
ending at the end of the file) are averaged, then scored. Files longer than ``STREAM_S``
are decoded and embedded crop by crop (same result, memory of a few crops whatever the
length) when the backend embeds long clips by crops (``crop_s``). Nothing heavy is
imported at module level.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from monitor.config import DEFAULT_TEMPLATE, clean_label
from monitor.errors import ModelError, UserError

log = logging.getLogger(__name__)

STREAM_S = 60.0  # longer files are streamed (decoded and embedded crop by crop)
CROP_BATCH = 4  # crops per model call while streaming


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="audio files (wav, flac, mp3, ogg; any rate, any channels)"
    )
    parser.add_argument(
        "--model", default="auto", metavar="DIR", help="exported model directory, 'offline' or 'auto' (default auto)"
    )
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
    parser.add_argument(
        "--adapter",
        metavar="PATH",
        help="a learned adapter (.npz from `eval --save-adapter`): scores from F(x, y) in place of cosine",
    )


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
    from monitor.models.labels import label_embeddings, softmax_scores
    from monitor.models.select import select_backend

    labels = parse_labels(args.labels)
    templates = parse_templates(args.template)
    if args.threads < 1:
        raise UserError("--threads must be at least 1")
    from monitor.audio_io import open_check

    infos = [open_check(f) for f in args.files]  # every file decodes and holds samples, before any model work

    try:
        selected = select_backend(args.model, ModelConfig(threads=args.threads, int8=args.int8))
    except ImportError as e:
        raise ModelError(f"--model {args.model}: this backend is not available ({e})") from None
    backend = selected.backend
    if args.adapter:
        from monitor.models.adapter import maybe_adapt

        backend = maybe_adapt(backend, args.adapter)
    log.info("model: %s (%s)", backend.name, selected.reason)

    def embed_file(f, info):
        """-> (embedding [1, D], duration_s)"""
        if backend.crop_s is not None and info.duration > STREAM_S:
            return embed_streamed(f, backend)
        audio = read_audio(f, backend.sample_rate_hz)
        if audio.nonfinite:
            print(f"warning: {f}: {audio.nonfinite} NaN/Inf samples replaced by 0", file=sys.stderr)
        return backend.embed_audio(audio.samples[None, :]), len(audio.samples) / audio.sample_rate_hz

    cache_dir = None if args.no_label_cache else Config().state_path / "label-cache"
    one = len(labels) == 1
    if one:
        # a softmax over one label is always 1.0: score it against the background prompts,
        # as `run` does by default (scoring vs-background)
        from monitor.config import LabelConfig, ScoringConfig
        from monitor.scoring import Scorer

        scorer = Scorer(
            backend, [LabelConfig(name=labels[0])], ScoringConfig(templates=tuple(templates)), cache_dir=cache_dir
        )
        n_bg = 0 if scorer.background_emb is None else len(scorer.background_emb)
        print(
            f"note: one label: its score is its share against {n_bg} background prompts "
            "(vs-background), not a softmax over labels",
            file=sys.stderr,
        )
    else:
        from monitor.config import DEFAULT_BACKGROUND
        from monitor.models.labels import label_offsets

        label_vecs = label_embeddings(backend, labels, templates, cache_dir=cache_dir)
        # labels taught by example score like text labels (0 for text labels: CLAP parity holds)
        offsets = label_offsets(
            backend,
            labels,
            label_vecs,
            lambda: label_embeddings(backend, list(DEFAULT_BACKGROUND), templates, cache_dir=cache_dir),
            templates,
            cache_dir,
        )
        backend.release_text()  # as Scorer does: the text encoder is done
    results = []
    for f, info in zip(args.files, infos):
        emb, duration_s = embed_file(f, info)
        scores = scorer.score(emb)[0] if one else softmax_scores(emb, label_vecs, backend.logit_scale, offsets)[0]
        order = np.argsort(-scores, kind="stable")
        results.append(
            {
                "file": str(f),
                "duration_s": duration_s,
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


def embed_streamed(path, backend):
    """A long file crop by crop: the consecutive ``crop_s`` crops that are not the last and
    the final crop ending at the file's end (``crop_starts``), embedded ``CROP_BATCH`` at a
    time and averaged -- what ``backend.embed_audio`` gives on the whole file, without
    holding it. -> (embedding [1, D], duration_s)"""
    import numpy as np

    from monitor.audio_io import stream_audio
    from monitor.errors import AudioError
    from monitor.models.backend import l2_normalise

    rate = backend.sample_rate_hz
    L = int(round(backend.crop_s * rate))
    _, blocks = stream_audio(path, rate)
    buf = np.zeros(0, np.float32)  # samples from buf_start on
    buf_start = 0
    total = 0
    next_start = 0
    pending: list[np.ndarray] = []
    acc = None
    count = 0

    def flush():
        nonlocal acc, count, pending
        if pending:
            e = backend.embed_audio(np.stack(pending)).sum(axis=0)
            acc = e if acc is None else acc + e
            count += len(pending)
            pending = []

    bad = 0
    try:
        while True:
            block = next(blocks)
            buf = np.concatenate([buf, block])
            total += block.size
            while total > next_start + L:  # a crop with more audio after it is not the last
                pending.append(buf[next_start - buf_start : next_start - buf_start + L].copy())
                next_start += L
                if len(pending) >= CROP_BATCH:
                    flush()
            keep_from = min(next_start, total - L) if total > L else 0  # the last L samples stay for the final crop
            if keep_from > buf_start:
                buf = buf[keep_from - buf_start :]
                buf_start = keep_from
    except StopIteration as stop:
        bad = stop.value or 0
    if total == 0:
        raise AudioError(f"audio file has no samples: {path}")
    if bad:
        print(f"warning: {path}: {bad} NaN/Inf samples replaced by 0", file=sys.stderr)
    if total <= L:
        return backend.embed_audio(buf[None, :]), total / rate
    pending.append(buf[total - L - buf_start :].copy())
    flush()
    assert acc is not None
    return l2_normalise(acc / count)[None, :], total / rate
