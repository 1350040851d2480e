"""Evaluation: datasets, ranking metrics, class-fold protocols, reports.

Datasets
- a folder with ``labels.csv`` (``path,label``, optional ``category``; paths relative to
  the folder), the layout of the shared recordings;
- the ESC-50 layout: ``meta/esc50.csv`` (``filename,fold,target,category``) and ``audio/``;
  the major category of a class is ``target // 10`` (animals, natural soundscapes, human
  non-speech, interior/domestic, exterior/urban).

Metrics (single-label samples, every clip ranks all candidate classes):
- top-k: share of clips whose class is among the k highest scores;
- mAP: mean over clips of the average precision of the ranked class list; with one
  correct class at rank r it is 1/r. Ties count against the clip (a tie with the true
  class puts it below), so a constant scorer never looks good;
- chance: top-1 = 1/C, top-5 = min(5, C)/C, mAP = H_C / C (the expectation of 1/r for a
  uniformly random rank; 0.2929 for C = 10).

Protocols
- ``zero-shot``: every clip ranks all the dataset's classes (label prompts, or a trained
  adapter file, or leave-one-out prototypes with ``--adapter prototype``).
- ``class-folds``: classes are split into disjoint folds (seeded ``random`` partition, or
  ``category``: one fold per category). For fold i: test classes = fold i, validation
  classes = fold (i+1) mod k, training classes = the others. Adapters are trained on the
  training classes, λ and epochs chosen on the validation classes, refit on both, and
  test clips rank only the unseen fold's classes, as in the papers. ``prototype`` uses
  leave-one-out prototypes among the test classes (its own clip never builds its class).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.errors import UserError
from monitor.models.backend import l2_normalise
from monitor.numeric import true_ranks

ESC50_CATEGORIES = ("animals", "natural soundscapes", "human non-speech", "interior/domestic", "exterior/urban")


# -- datasets -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dataset:
    root: Path
    paths: tuple[Path, ...]
    labels: tuple[str, ...]  # per clip
    categories: tuple[str, ...] | None  # per clip, when the dataset has them
    classes: tuple[str, ...]  # sorted distinct labels

    @property
    def y(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[l] for l in self.labels], dtype=np.int64)

    def class_categories(self) -> dict[str, str] | None:
        if self.categories is None:
            return None
        out: dict[str, str] = {}
        for lab, cat in zip(self.labels, self.categories):
            if out.setdefault(lab, cat) != cat:
                raise UserError(f"class {lab!r} appears in two categories ({out[lab]!r}, {cat!r})")
        return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def load_dataset(root: str | os.PathLike) -> Dataset:
    """A labels.csv folder or an ESC-50 folder -> Dataset (every file checked to exist)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"dataset not found: {root}")
    if root.is_file():
        raise UserError(f"dataset must be a folder with labels.csv or meta/esc50.csv, got a file: {root}")
    esc = root / "meta" / "esc50.csv"
    if esc.is_file():
        rows = _read_csv(esc)
        need = {"filename", "target", "category"}
        if rows and not need <= set(rows[0]):
            raise UserError(f"{esc}: expected columns filename,fold,target,category")
        items: list[tuple[Path, str, str | None]] = []
        for i, r in enumerate(rows, 2):
            try:
                target = int(r["target"])
            except (TypeError, ValueError):
                raise UserError(f"{esc}:{i}: target {r.get('target')!r} is not an integer") from None
            items.append(
                (
                    root / "audio" / r["filename"],
                    r["category"].replace("_", " ").strip(),
                    ESC50_CATEGORIES[target // 10] if 0 <= target < 50 else f"group {target // 10}",
                )
            )
        source = esc
    else:
        csv_path = root / "labels.csv"
        if not csv_path.is_file():
            raise UserError(f"{root} has neither labels.csv (path,label) nor meta/esc50.csv")
        rows = _read_csv(csv_path)
        cols = set(rows[0]) if rows else set()
        if rows and not {"path", "label"} <= cols:
            raise UserError(
                f"{csv_path}: expected a header with columns path,label (got {','.join(sorted(c for c in cols if c)) or 'none'})"
            )
        has_cat = "category" in cols
        items = []
        for i, r in enumerate(rows, 2):
            path, label = (r.get("path") or "").strip(), (r.get("label") or "").strip()
            if not path or not label:
                raise UserError(f"{csv_path}:{i}: empty path or label")
            items.append((root / path, label, (r.get("category") or "").strip() if has_cat else None))
        source = csv_path
    if not items:
        raise UserError(f"{source} lists no clips")
    missing = [p for p, _, _ in items if not p.is_file()]
    if missing:
        raise UserError(f"{source}: {len(missing)} listed file(s) not found, e.g. {missing[0]}")
    cats = tuple(c or "" for _, _, c in items)
    ds = Dataset(
        root,
        tuple(p for p, _, _ in items),
        tuple(l for _, l, _ in items),
        None if any(c == "" for c in cats) else cats,
        tuple(sorted({l for _, l, _ in items})),
    )
    if len(ds.classes) < 2:
        raise UserError(f"{source}: at least 2 classes are needed, found {len(ds.classes)}")
    return ds


# -- metrics ------------------------------------------------------------------------------------------
def harmonic(n: int) -> float:
    return float(np.sum(1.0 / np.arange(1, n + 1)))


def chance(n_classes: int) -> dict[str, float]:
    return {
        "chance_top1": 1.0 / n_classes,
        "chance_top5": min(5, n_classes) / n_classes,
        "chance_map": harmonic(n_classes) / n_classes,
    }


def metrics(scores: np.ndarray, y: np.ndarray, class_names: Sequence[str]) -> dict:
    """Ranking metrics of scores [N, C] against true indices y [N] into class_names."""
    r = true_ranks(scores, y)
    c = len(class_names)
    per_class = {}
    for k, name in enumerate(class_names):
        sel = y == k
        if sel.any():
            per_class[name] = float(np.mean(r[sel] == 1))
    conf = np.zeros((c, c), dtype=np.int64)
    np.add.at(conf, (y, np.argmax(scores, axis=1)), 1)
    return {
        "n_clips": int(len(y)),
        "n_classes": c,
        "top1": float(np.mean(r == 1)),
        "top5": float(np.mean(r <= 5)),
        "map": float(np.mean(1.0 / r)),
        **chance(c),
        "per_class": per_class,
        "confusion": conf,
    }


# -- class folds -------------------------------------------------------------------------------------
def class_folds(
    classes: Sequence[str],
    n_folds: int,
    partition: str = "random",
    seed: int = 0,
    categories: dict[str, str] | None = None,
) -> list[tuple[str, ...]]:
    """Disjoint folds of class names covering all classes; deterministic for a seed."""
    classes = sorted(classes)
    if partition == "category":
        if categories is None:
            raise UserError(
                "--partition category is unavailable: this dataset has no categories "
                "(ESC-50 layout, or a 'category' column in labels.csv); use --partition random"
            )
        groups: dict[str, list[str]] = {}
        for c in classes:
            groups.setdefault(categories[c], []).append(c)
        if len(groups) < 3:
            raise UserError(
                f"--partition category needs at least 3 categories (train/validation/test), found {len(groups)}"
            )
        return [tuple(groups[k]) for k in sorted(groups)]
    if partition != "random":
        raise UserError(f"--partition {partition!r}: use random or category")
    if not 3 <= n_folds <= len(classes):
        raise UserError(
            f"--folds {n_folds}: need 3..{len(classes)} folds (train, validation and test folds) for {len(classes)} classes"
        )
    perm = np.random.default_rng(seed).permutation(len(classes))
    return [tuple(sorted(classes[i] for i in part)) for part in np.array_split(perm, n_folds)]


def loo_prototype_scores(emb: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Cosine to class prototypes (means of unit clip vectors), each clip left out of its own class.

    A clip alone in its class has no prototype left: it scores -inf there (counted as a miss).
    """
    e = l2_normalise(emb).astype(np.float64)
    sums = np.zeros((n_classes, e.shape[1]))
    np.add.at(sums, y, e)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    protos = l2_normalise(sums).astype(np.float64)
    scores = e @ protos.T
    own = sums[y] - e
    own_n = np.linalg.norm(own, axis=1)
    rows = np.arange(len(y))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores[rows, y] = np.where(
            (counts[y] > 1) & (own_n > 1e-12), (e * own).sum(axis=1) / np.maximum(own_n, 1e-12), -np.inf
        )
    return scores


@dataclass
class Embeddings:
    """Per-clip vectors computed once: ``audio`` (zero-shot space), ``theta`` (adapter input)."""

    audio: np.ndarray | None = None
    theta: np.ndarray | None = None


def _fold_scores(
    method: str, fold: int, folds, ds: Dataset, emb: Embeddings, label_vecs, phi, seed: int, zero_shot_scale: float
):
    """Scores of the test fold's clips over the test fold's classes (+ fit info)."""
    from monitor.evaluation import training as adapt

    index = {c: i for i, c in enumerate(ds.classes)}
    y_all = ds.y
    k = len(folds)
    test = [index[c] for c in folds[fold]]
    sel = np.isin(y_all, test)
    remap = {c: j for j, c in enumerate(test)}
    y = np.array([remap[v] for v in y_all[sel]])
    info: dict = {}
    if method == "none":
        assert emb.audio is not None
        s = l2_normalise(emb.audio[sel]) @ label_vecs[test].T
    elif method == "prototype":
        assert emb.audio is not None
        s = loo_prototype_scores(emb.audio[sel], y, len(test))
    else:
        val = [index[c] for c in folds[(fold + 1) % k]]
        train = [
            i for f, names in enumerate(folds) if f not in (fold, (fold + 1) % k) for i in (index[c] for c in names)
        ]

        theta = emb.theta
        assert theta is not None  # embedded for the learned methods

        def part(classes):
            m = np.isin(y_all, classes)
            rm = {c: j for j, c in enumerate(classes)}
            return theta[m], np.array([rm[v] for v in y_all[m]]), phi[classes]

        if method in adapt.RESIDUAL_KINDS:
            assert emb.audio is not None and label_vecs is not None
            data = adapt.ResidualData(emb.audio, theta, y_all, label_vecs, phi)
            f = adapt.fit_residual(
                method, data.part(train, y_all), data.part(val, y_all), zero_shot_scale, seed=seed + fold
            )
            t = data.part(test, y_all)
            s = f.adapter.residual_scores(t.audio, t.theta, t.labels, t.phi)
        else:
            tr, va = part(train), part(val)
            f = adapt.fit(method, tr[0], tr[1], tr[2], va[0], va[1], va[2], seed=seed + fold)
            s = f.adapter.scores(theta[sel], phi[test])
        info = {"lambda": f.lam if np.isfinite(f.lam) else "inf", "epochs": f.epochs, "val_map": f.val_map}
    return s, y, test, info


def run_class_folds(
    ds: Dataset,
    emb: Embeddings,
    method: str,
    folds: list[tuple[str, ...]],
    label_vecs=None,
    phi=None,
    seed: int = 0,
    say=lambda m: None,
    zero_shot_scale: float = 1.0,
) -> dict:
    n_cls = len(ds.classes)
    conf = np.zeros((n_cls, n_cls), dtype=np.int64)
    per_class: dict[str, float] = {}
    out_folds = []
    for i in range(len(folds)):
        s, y, test, info = _fold_scores(method, i, folds, ds, emb, label_vecs, phi, seed, zero_shot_scale)
        m = metrics(s, y, [ds.classes[t] for t in test])
        pred = np.argmax(s, axis=1)
        np.add.at(conf, (np.array(test)[y], np.array(test)[pred]), 1)
        per_class.update(m["per_class"])
        out_folds.append(
            {
                "test_classes": list(folds[i]),
                "n_clips": m["n_clips"],
                "top1": m["top1"],
                "top5": m["top5"],
                "map": m["map"],
                "chance_top1": m["chance_top1"],
                "chance_top5": m["chance_top5"],
                "chance_map": m["chance_map"],
                **info,
            }
        )
        say(
            f"fold {i}: {len(test)} classes, top-1 {m['top1']:.3f} mAP {m['map']:.3f} (chance {m['chance_map']:.3f})"
            + (f", λ={info['lambda']} epochs={info['epochs']}" if info else "")
        )
    mean = {
        k: float(np.mean([f[k] for f in out_folds]))
        for k in ("top1", "top5", "map", "chance_top1", "chance_top5", "chance_map")
    }
    return {
        "n_clips": len(ds.paths),
        "n_classes": n_cls,
        **mean,
        "per_class": {c: per_class[c] for c in ds.classes if c in per_class},
        "folds": out_folds,
        "confusion": conf,
    }


def run_zero_shot(ds: Dataset, scores: np.ndarray) -> dict:
    m = metrics(scores, ds.y, ds.classes)
    return m


# -- report -------------------------------------------------------------------------------------------
def json_result(result: dict, extra: dict) -> dict:
    """The contract object (n_clips, n_classes, top1, top5, map, chance_top1, chance_map,
    per_class[, folds]) plus extra keys."""
    out = {
        k: result[k] for k in ("n_clips", "n_classes", "top1", "top5", "map", "chance_top1", "chance_map", "per_class")
    }
    if "folds" in result:
        out["folds"] = result["folds"]
    out["chance_top5"] = result["chance_top5"]
    out.update(extra)
    conf = result.get("confusion")
    if conf is not None:
        out["confusion"] = {"labels": list(extra.get("classes", [])), "matrix": np.asarray(conf).tolist()}
    return out


def write_report(out_dir: str | os.PathLike, result: dict, classes: Sequence[str], title: str, command: str) -> Path:
    """Markdown summary + confusion.png + per_class.png in out_dir; returns the Markdown path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "--report needs matplotlib: pip install 'sound-monitor[report]' (or: pip install matplotlib)"
        ) from None
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    conf = np.asarray(result["confusion"])
    n = len(classes)
    size = max(5.0, 0.32 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = conf.sum(axis=1, keepdims=True)
    ax.imshow(conf / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)
    per = result["per_class"]
    names = sorted(per, key=lambda c: per[c])
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.22 * len(names) + 1)))
    ax.barh(range(len(names)), [per[c] for c in names], color="tab:blue")
    ax.axvline(result["chance_top1"], color="tab:red", linestyle="--", label="chance top-1")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("top-1 accuracy")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "per_class.png", dpi=110)
    plt.close(fig)
    lines = [
        f"# {title}",
        "",
        f"`{command}`",
        "",
        "| metric | value | chance |",
        "|---|---|---|",
        f"| top-1 | {result['top1']:.3f} | {result['chance_top1']:.3f} |",
        f"| top-5 | {result['top5']:.3f} | {result['chance_top5']:.3f} |",
        f"| mAP | {result['map']:.3f} | {result['chance_map']:.3f} |",
        "",
        f"{result['n_clips']} clips, {result['n_classes']} classes.",
        "",
    ]
    if "folds" in result:
        lines += ["| fold | test classes | top-1 | mAP | chance mAP |", "|---|---|---|---|---|"]
        for i, f in enumerate(result["folds"]):
            lines.append(
                f"| {i} | {', '.join(f['test_classes'])} | {f['top1']:.3f} | {f['map']:.3f} | {f['chance_map']:.3f} |"
            )
        lines.append("")
    lines += [
        "![confusion](confusion.png)",
        "",
        "![per-class top-1](per_class.png)",
        "",
        "| class | top-1 |",
        "|---|---|",
    ] + [f"| {c} | {per[c]:.2f} |" for c in sorted(per)]
    md = out / "report.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "result.json").write_text(
        json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}, indent=2)
    )
    return md
