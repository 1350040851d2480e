"""Choose the offline backend's level and class-text parameters by validation on held-out classes.

The grid: the level stage (off, or a target RMS level and gain bound) x the label -> class
mapping (top-k classes, softmax temperature). Each configuration is scored the way `eval`
scores (clips cut into the model's windows, mean window embedding, bare label text through
the class-text matching), zero-shot over all the dataset's classes.

Protocol (classes, not clips, are held out): for each of ``--splits`` random halvings of the
classes, the configuration with the best validation score (top-1 + mAP) on one half's clips
is applied to the other half's clips, and the other way round; every clip is thus scored
with parameters chosen without its class. The mean of these cross-validated figures is the
honest estimate of what the selection procedure gives; the configuration chosen most often
over all halves is the one to ship. Its figure on all classes is printed too, marked as
selected on data that includes them.

Usage: python scripts/choose_offline_text.py ../shared/data/uiowa-dev [--splits 10] [--json]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.evaluation.evaluate import load_dataset
from monitor.models.backend import l2_normalise
from monitor.models.labels import label_embeddings
from monitor.models.level import LevelNorm
from monitor.models.offline.backend import OfflineBackend, TextMapping
from monitor.models.offline.fetch import default_dir
from monitor.models.prototypes import embed_files
from monitor.numeric import true_ranks

LEVELS: dict[str, LevelNorm | None] = {
    "off": None,
    "-25/30": LevelNorm(-25.0, 30.0),
    "-20/30": LevelNorm(-20.0, 30.0),
    "-20/20": LevelNorm(-20.0, 20.0),
}
TOP_KS = (10, 20, 40)
TEMPERATURES = (0.03, 0.05, 0.1)


def criterion(ranks: np.ndarray) -> float:
    return float(np.mean(ranks == 1) + np.mean(1.0 / ranks))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--model-dir", default=None, help="the offline model (default: the models folder)")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "sound-monitor-choose"))
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    ds = load_dataset(a.dataset)
    classes = list(ds.classes)
    y = ds.y
    model_dir = Path(a.model_dir) if a.model_dir else default_dir(None)
    configs, ranks = [], []
    for lname, level in LEVELS.items():
        base = OfflineBackend.from_dir(model_dir, level=level)
        audio = l2_normalise(embed_files(base, ds.paths, "audio", a.cache_dir))
        for k, t in itertools.product(TOP_KS, TEMPERATURES):
            b = OfflineBackend.from_dir(model_dir, level=level, text=TextMapping(k, t))
            b.class_embeddings()
            labels = label_embeddings(b, classes)
            configs.append({"level": lname, "top_k": k, "temperature": t})
            ranks.append(true_ranks(audio @ labels.T, y))
        print(f"level {lname}: {len(TOP_KS) * len(TEMPERATURES)} mappings scored", file=sys.stderr)
    R = np.array(ranks)  # [config, clip]
    chosen: collections.Counter[int] = collections.Counter()
    cv = []
    for seed in range(a.splits):
        perm = np.random.default_rng(seed).permutation(len(classes))
        in_a = np.isin(y, perm[: len(classes) // 2])
        ca = int(np.argmax([criterion(r[in_a]) for r in R]))
        cb = int(np.argmax([criterion(r[~in_a]) for r in R]))
        chosen.update([ca, cb])
        held = np.where(in_a, R[cb], R[ca])  # each clip scored with parameters chosen on the other half
        cv.append((float(np.mean(held == 1)), float(np.mean(1.0 / held))))
    ship = chosen.most_common(1)[0][0]
    out = {
        "dataset": str(ds.root),
        "n_classes": len(classes),
        "n_clips": len(y),
        "cross_validated": {"top1": float(np.mean([c[0] for c in cv])), "map": float(np.mean([c[1] for c in cv]))},
        "chosen_counts": {json.dumps(configs[i]): n for i, n in chosen.most_common()},
        "ship": configs[ship],
        "ship_on_all_classes": {"top1": float(np.mean(R[ship] == 1)), "map": float(np.mean(1.0 / R[ship]))},
        "grid": [
            dict(configs[i], top1=float(np.mean(R[i] == 1)), map=float(np.mean(1.0 / R[i]))) for i in range(len(R))
        ],
    }
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{len(configs)} configurations, {a.splits} class halvings of {len(classes)} classes ({len(y)} clips)")
    print(
        "cross-validated (parameters chosen on the other half's classes): "
        f"top-1 {out['cross_validated']['top1']:.3f}, mAP {out['cross_validated']['map']:.3f}"
    )
    for cfg, n in out["chosen_counts"].items():
        print(f"  chosen {n:2d} x  {cfg}")
    s = out["ship_on_all_classes"]
    print(
        f"ship {out['ship']}: on all classes top-1 {s['top1']:.3f}, mAP {s['map']:.3f} "
        "(selected on data that includes these classes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
