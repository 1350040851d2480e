"""`sound-monitor eval DATASET --model DIR|offline`: zero-shot accuracy, class-fold protocols, adapters.

``--json`` prints one object: ``{"n_clips", "n_classes", "top1", "top5", "map",
"chance_top1", "chance_map", "per_class": {label: top1}}`` (with class-folds also
``"folds": [{"test_classes", "top1", "map", ...}]``, the top-level figures being the means
over folds) plus extra keys (protocol, adapter, semantic, model, chance_top5, confusion).
Clip embeddings are cached per file under ``<state_dir>/eval-cache`` (see
monitor.models.prototypes). Nothing heavy is imported at module level.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from monitor.errors import ModelError, UserError

METHODS = ("none", "bilinear", "nonlinear", "reweight", "residual", "prototype")
LEARNED = ("bilinear", "nonlinear", "reweight", "residual")  # trained on seen classes
RESIDUAL = ("reweight", "residual")  # the zero-shot mapping plus a learned correction


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        metavar="DATASET",
        help="folder with labels.csv (path,label) or an ESC-50 folder (meta/esc50.csv, audio/)",
    )
    parser.add_argument(
        "--model", default="auto", metavar="DIR", help="exported model directory, 'offline' or 'auto' (default auto)"
    )
    parser.add_argument(
        "--protocol",
        choices=("zero-shot", "class-folds"),
        default="zero-shot",
        help="zero-shot: rank all classes; class-folds: train on seen classes, test on an unseen fold (default zero-shot)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        help="number of class folds (default 5; category partition: one per category)",
    )
    parser.add_argument(
        "--partition", choices=("random", "category"), default="random", help="how classes are grouped into folds"
    )
    parser.add_argument(
        "--adapter",
        default="none",
        metavar="METHOD|FILE",
        help="none | bilinear | nonlinear (the papers' adapters, learned from scratch) | reweight | residual "
        "(zero-shot plus a regularised correction, never worse than none on validation classes) | prototype, "
        "or a trained adapter .npz to evaluate (zero-shot)",
    )
    parser.add_argument(
        "--semantic",
        default=None,
        metavar="KIND",
        help="label embeddings for adapters: text | minilm | glove | a+b (default: minilm offline, text CLAP)",
    )
    parser.add_argument(
        "--template",
        action="append",
        metavar="T",
        help='prompt template with one {} (default "This is a sound of {}.")',
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random class partition and of training (default 0)"
    )
    parser.add_argument(
        "--save-adapter",
        metavar="PATH",
        help="also train the adapter on all the dataset's classes and save it (.npz) for run/classify",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument(
        "--report", metavar="DIR", help="write report.md, confusion.png, per_class.png and result.json into DIR"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for inference (default 2)")
    parser.add_argument("--cache-dir", metavar="DIR", help="embedding cache (default <state_dir>/eval-cache)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")


def _say(msg: str) -> None:
    from monitor.logs import say as _say

    _say(msg)


def run(args: argparse.Namespace) -> int:
    from monitor.commands.classify import parse_templates
    from monitor.config import Config, ModelConfig
    from monitor.evaluation import evaluate
    from monitor.evaluation import training as adapt
    from monitor.models.backend import l2_normalise
    from monitor.models.labels import label_embeddings
    from monitor.models.prototypes import embed_files, stderr_progress
    from monitor.models.select import select_backend

    templates = parse_templates(args.template)
    if args.threads < 1:
        raise UserError("--threads must be at least 1")
    adapter_file = None
    method = args.adapter
    if method not in METHODS:
        if not (method.endswith(".npz") or Path(method).exists()):
            raise UserError(
                f"--adapter {method!r}: use none, bilinear, nonlinear, reweight, residual, prototype or an adapter .npz file"
            )
        adapter_file = adapt.Adapter.load(method)
        method = "file"
        if args.protocol != "zero-shot":
            raise UserError("--adapter FILE evaluates a trained adapter on all classes: use --protocol zero-shot")
    if args.protocol == "zero-shot" and method in LEARNED and not args.save_adapter:
        raise UserError(
            f"--adapter {method} is trained on seen classes: use --protocol class-folds (or --save-adapter PATH)"
        )
    if args.save_adapter and method not in LEARNED:
        raise UserError("--save-adapter needs --adapter bilinear, nonlinear, reweight or residual")
    if args.semantic:
        adapt.parse_semantic(args.semantic)
    if args.folds is not None and args.protocol != "class-folds":
        raise UserError("--folds only applies to --protocol class-folds")

    ds = evaluate.load_dataset(args.dataset)
    folds = None
    if args.protocol == "class-folds":
        cats = ds.class_categories() if args.partition == "category" else None
        if (
            args.partition == "category"
            and args.folds is not None
            and cats is not None
            and args.folds != len(set(cats.values()))
        ):
            raise UserError(
                f"--partition category makes one fold per category ({len(set(cats.values()))}); drop --folds"
            )
        folds = evaluate.class_folds(ds.classes, args.folds or 5, args.partition, args.seed, cats)

    try:
        # fp32 unless asked: accuracy figures of one model, whatever this machine's int8 speed
        backend = select_backend(args.model, ModelConfig(threads=args.threads, int8=False)).backend
    except ImportError as e:
        raise ModelError(f"--model {args.model}: this backend is not available ({e})") from None
    state = Config().state_path
    cache_root = (
        None if args.no_cache else Path(args.cache_dir).expanduser() if args.cache_dir else state / "eval-cache"
    )
    label_cache = None if cache_root is None else cache_root / "label-cache"
    semantic = args.semantic or (adapter_file.meta.get("semantic") if adapter_file else adapt.default_semantic(backend))
    theta_kind = "features" if backend.has_audio_features else "audio"
    _say(f"{len(ds.paths)} clips, {len(ds.classes)} classes from {ds.root}; model {backend.name}")

    residual = method in RESIDUAL or (adapter_file is not None and adapter_file.residual)
    emb = evaluate.Embeddings()
    if method in ("none", "prototype") or residual:
        emb.audio = embed_files(backend, ds.paths, "audio", cache_root, stderr_progress("embedding clips"))
    if method in LEARNED or method == "file":
        if adapter_file is not None:
            theta_kind = adapter_file.meta.get("theta", "audio")
        if method != "reweight" and not (adapter_file is not None and adapter_file.kind == "reweight"):
            emb.theta = embed_files(backend, ds.paths, theta_kind, cache_root, stderr_progress("embedding clips"))
        else:
            emb.theta = emb.audio  # reweight has no acoustic input beyond the zero-shot vector

    extra = {"protocol": args.protocol, "adapter": args.adapter, "model": backend.name, "classes": list(ds.classes)}
    label_vecs = phi = None
    if method == "none" or residual:
        label_vecs = label_embeddings(backend, list(ds.classes), templates, cache_dir=label_cache)
    if method in LEARNED or method == "file":
        phi = adapt.semantic_embeddings(backend, ds.classes, str(semantic), templates, cache_dir=label_cache)
        extra["semantic"] = semantic
    if args.protocol == "class-folds":
        extra.update(partition=args.partition, seed=args.seed)
        assert folds is not None  # made above for class-folds
        result: dict | None = evaluate.run_class_folds(
            ds, emb, method, folds, label_vecs, phi, args.seed, say=_say, zero_shot_scale=backend.logit_scale
        )
    else:
        if method == "none":
            assert emb.audio is not None and label_vecs is not None
            scores = l2_normalise(emb.audio) @ label_vecs.T
        elif method == "prototype":
            assert emb.audio is not None
            scores = evaluate.loo_prototype_scores(emb.audio, ds.y, len(ds.classes))
        elif method == "file" and residual:
            assert adapter_file is not None and emb.audio is not None and emb.theta is not None
            assert label_vecs is not None and phi is not None
            scores = adapter_file.residual_scores(emb.audio, emb.theta, label_vecs, phi)
        elif method == "file":
            assert phi is not None and emb.theta is not None and adapter_file is not None
            if phi.shape[1] != adapter_file.d_s or emb.theta.shape[1] != adapter_file.d_a:
                raise UserError(
                    f"{args.adapter}: adapter dims ({adapter_file.d_a}, {adapter_file.d_s}) do not fit this model "
                    f"({emb.theta.shape[1]}, {phi.shape[1]})"
                )
            scores = adapter_file.scores(emb.theta, phi)
        else:
            scores = None
        result = evaluate.run_zero_shot(ds, scores) if scores is not None else None

    if args.save_adapter:
        saved = _save_adapter(args, ds, emb, label_vecs, phi, method, semantic, theta_kind, templates, backend)
        _say(f"adapter trained on all {len(ds.classes)} classes saved to {saved}")
    if result is None:  # zero-shot + --save-adapter: training only (no unseen classes to test)
        if args.json:
            print(json.dumps({"adapter_file": str(saved), "n_clips": len(ds.paths), "n_classes": len(ds.classes)}))
        return 0
    out = evaluate.json_result(result, extra)
    if args.report:
        cmd = (
            "sound-monitor eval " + " ".join(shlex.quote(a) for a in sys.argv[2:])
            if len(sys.argv) > 2
            else "sound-monitor eval"
        )
        md = evaluate.write_report(
            args.report, result, ds.classes, f"eval: {ds.root.name}, {args.protocol}, adapter {args.adapter}", cmd
        )
        _say(f"report written to {md}")
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(
            f"{ds.root.name}: {out['n_clips']} clips, {out['n_classes']} classes, {args.protocol}, adapter {args.adapter}, {backend.name}"
        )
        print(
            f"  top-1 {out['top1']:.3f} (chance {out['chance_top1']:.3f})   top-5 {out['top5']:.3f} "
            f"(chance {out['chance_top5']:.3f})   mAP {out['map']:.3f} (chance {out['chance_map']:.3f})"
        )
        for i, f in enumerate(out.get("folds", [])):
            print(
                f"  fold {i}: top-1 {f['top1']:.3f} mAP {f['map']:.3f} chance mAP {f['chance_map']:.3f}  [{', '.join(f['test_classes'])}]"
            )
    return 0


def _save_adapter(args, ds, emb, label_vecs, phi, method, semantic, theta_kind, templates, backend) -> Path:
    """Fit on all classes (λ/epochs chosen on a seeded 1/5 of the classes), calibrate, save."""
    import numpy as np

    from monitor.evaluation import training as adapt

    rng = np.random.default_rng(args.seed)
    n = len(ds.classes)
    val = sorted(rng.permutation(n)[: max(1, n // 5)].tolist())
    train = [i for i in range(n) if i not in val]
    y = ds.y
    th = emb.theta
    meta = dict(
        backend_name=backend.name,
        backend_cache_key=backend.cache_key,
        semantic=semantic,
        theta=theta_kind,
        templates=list(templates),
        classes=list(ds.classes),
        dataset=str(ds.root),
    )
    if method in RESIDUAL:
        data = adapt.ResidualData(emb.audio, th, y, label_vecs, phi)
        f = adapt.fit_residual(method, data.part(train, y), data.part(val, y), backend.logit_scale, seed=args.seed)
        f.adapter.meta.update(meta)
        _say(
            f"{method}: validation mAP {f.val_map:.3f} with λ={f.adapter.meta['lam']}"
            + (" (no adaptation: nothing beat the zero-shot mapping)" if not np.isfinite(f.lam) else "")
        )
        return f.adapter.save(args.save_adapter)

    def part(classes):
        m = np.isin(y, classes)
        rm = {c: j for j, c in enumerate(classes)}
        return th[m], np.array([rm[v] for v in y[m]]), phi[classes]

    tr, va = part(train), part(val)
    f = adapt.fit(method, tr[0], tr[1], tr[2], va[0], va[1], va[2], seed=args.seed)
    # the refit's class order is train + val: recompute scores in dataset order for calibration
    s = f.adapter.scores(th, phi)
    u = f.adapter.label_vectors(phi)
    f.adapter.meta.update(
        **meta,
        logit_scale=adapt.calibrate_scale(s, y),
        label_norm=float(np.median(np.linalg.norm(u, axis=1))),
    )
    return f.adapter.save(args.save_adapter)
