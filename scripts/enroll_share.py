"""Enroll-by-example share on a labels.csv dataset: every class enrolled from all but its last
clip (sorted by path; 4 of 5 in uiowa-dev, 3 of 4 for the two 4-clip classes), its last clip
scored against all the enrolled labels. Prints the share ranked first and the misses.

    python scripts/enroll_share.py /work/shared/data/uiowa-dev --model offline

The labels go through the same path as `run`/`classify`: LabelConfig(examples=...) ->
monitor.models.labels.label_embeddings -> cosine; the test clip is cut into windows the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def enroll_share(dataset: str, model: str = "offline", cache_dir: str | None = None) -> dict:
    import numpy as np

    from monitor.config import LabelConfig, ModelConfig
    from monitor.evaluation.evaluate import load_dataset
    from monitor.models.backend import l2_normalise
    from monitor.models.labels import label_embeddings
    from monitor.models.prototypes import embed_files
    from monitor.models.select import select_backend

    ds = load_dataset(dataset)
    backend = select_backend(model, ModelConfig()).backend
    by_class: dict[str, list[Path]] = defaultdict(list)
    for p, lab in zip(ds.paths, ds.labels):
        by_class[lab].append(p)
    classes = sorted(by_class)
    labels, tests = [], []
    for c in classes:
        clips = sorted(by_class[c])
        labels.append(LabelConfig(name=c, examples=tuple(str(p) for p in clips[:-1])))
        tests.append(clips[-1])
    vecs = label_embeddings(backend, labels, cache_dir=cache_dir)
    test_emb = l2_normalise(embed_files(backend, tests, "audio", cache_dir))
    scores = test_emb @ vecs.T
    ranks = (scores >= scores[np.arange(len(classes)), np.arange(len(classes))][:, None]).sum(axis=1)
    misses = {c: classes[int(np.argmax(scores[i]))] for i, c in enumerate(classes) if ranks[i] != 1}
    return {
        "n_classes": len(classes),
        "share_first": float(np.mean(ranks == 1)),
        "mean_rank": float(np.mean(ranks)),
        "misses": misses,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--model", default="offline")
    ap.add_argument("--cache-dir", default=None)
    a = ap.parse_args()
    print(json.dumps(enroll_share(a.dataset, a.model, a.cache_dir), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
