"""Do enrolled prototypes mean what text labels mean at the same threshold? (uiowa-dev)

For every class c: a label "our c" is taught by example from c's first ``--enroll`` clips
(as `enroll` does: mean window embedding, through the backend's prototype calibration),
and scored with the monitor's default scoring (vs-background, default templates and
background prompts) on every other clip of the dataset. The text label "c" is scored on
the same clips. Reported, over all classes:

- false alarms: clips of *other* classes where the label's score reaches ``--threshold``
  (the default event threshold), for the prototype and for the text label;
- hits: c's remaining clips where it does;
- false top-1: clips of other classes where "our c" outranks the text labels of all other
  classes (the prototype competing with text labels in one label set).

``--uncalibrated`` scores the prototypes without their calibration offset (as before issue 17).

Usage: python scripts/measure_prototypes.py ../shared/data/uiowa-dev [--enroll 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.config import LabelConfig, ModelConfig, ScoringConfig
from monitor.evaluation.evaluate import load_dataset
from monitor.models.backend import l2_normalise
from monitor.models.prototypes import embed_files
from monitor.models.select import select_backend
from monitor.scoring import Scorer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--model", default="offline")
    ap.add_argument("--enroll", type=int, default=3)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--uncalibrated", action="store_true", help="leave out the prototypes' calibration offsets")
    a = ap.parse_args()
    ds = load_dataset(a.dataset)
    backend = select_backend(a.model, ModelConfig()).backend
    cache = Path(tempfile.mkdtemp(prefix="measure-prototypes-"))
    audio = l2_normalise(embed_files(backend, ds.paths, "audio", cache))
    classes = list(ds.classes)
    y = ds.y
    text = Scorer(backend, [LabelConfig(name=c) for c in classes], ScoringConfig(), cache_dir=cache / "label-cache")
    s_text = text.score(audio)  # [N, C]
    counts = dict(proto_fa=0, text_fa=0, others=0, proto_hit=0, text_hit=0, own=0, proto_top1_others=0)
    per_class = {}
    for c, name in enumerate(classes):
        clips = [i for i in range(len(y)) if y[i] == c]
        enrolled = clips[: a.enroll]
        rest = np.array([i for i in range(len(y)) if i not in enrolled])
        lab = LabelConfig(name=f"our {name}", examples=tuple(str(ds.paths[i]) for i in enrolled))
        proto = Scorer(backend, [lab], ScoringConfig(), cache_dir=cache / "label-cache")
        if a.uncalibrated:
            proto.label_offsets[:] = 0.0
        s_p = proto.score(audio[rest])[:, 0]
        other = y[rest] != c
        own = ~other
        # "our c" against the text labels of every other class, on clips of other classes
        logits_p = backend.logit_scale * (audio[rest] @ proto.label_emb.T)[:, 0] + proto.label_offsets[0]
        logits_t = backend.logit_scale * (audio[rest] @ text.label_emb.T)
        logits_t[:, c] = -np.inf
        top1 = logits_p > logits_t.max(axis=1)
        row = dict(
            proto_fa=int((s_p[other] >= a.threshold).sum()),
            text_fa=int((s_text[rest][other, c] >= a.threshold).sum()),
            others=int(other.sum()),
            proto_hit=int((s_p[own] >= a.threshold).sum()),
            text_hit=int((s_text[rest][own, c] >= a.threshold).sum()),
            own=int(own.sum()),
            proto_top1_others=int(top1[other].sum()),
        )
        per_class[name] = row
        for k, v in row.items():
            counts[k] += v
    out = {
        "model": backend.name,
        "dataset": str(ds.root),
        "enroll": a.enroll,
        "threshold": a.threshold,
        "calibrated": not a.uncalibrated,
        **counts,
        "proto_false_alarm_rate": counts["proto_fa"] / counts["others"],
        "text_false_alarm_rate": counts["text_fa"] / counts["others"],
        "proto_hit_rate": counts["proto_hit"] / max(counts["own"], 1),
        "text_hit_rate": counts["text_hit"] / max(counts["own"], 1),
        "proto_false_top1_rate": counts["proto_top1_others"] / counts["others"],
        "per_class": per_class,
    }
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{backend.name}, {len(classes)} classes, {a.enroll} clips enrolled each, threshold {a.threshold}")
    print(
        f"false alarms on other classes' clips: prototype {counts['proto_fa']}/{counts['others']} "
        f"({out['proto_false_alarm_rate']:.3f}), text label {counts['text_fa']}/{counts['others']} "
        f"({out['text_false_alarm_rate']:.3f})"
    )
    print(
        f"hits on the class's other clips: prototype {counts['proto_hit']}/{counts['own']} "
        f"({out['proto_hit_rate']:.3f}), text label {counts['text_hit']}/{counts['own']} ({out['text_hit_rate']:.3f})"
    )
    print(
        f"prototype top-1 against the other classes' text labels on their clips: "
        f"{counts['proto_top1_others']}/{counts['others']} ({out['proto_false_top1_rate']:.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
