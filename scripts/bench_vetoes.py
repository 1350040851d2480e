"""False alarms per hour with veto sounds and k-of-n confirmation, on real recordings.

The loop a household goes through, measured: a first stream (the *teaching* stream) is
monitored with today's settings; every false alarm is corrected the way a user would --
"that was the coin drop" (the confuser's name becomes a veto prompt of the label) and "not
this sound" (the event's audio, cut like the clips sink cuts it, becomes a veto example).
Then a second, fresh stream (the *report* stream: another seed, and clips that the teaching
stream never used) is monitored with: today's settings; + the veto prompts; + the veto
examples; + k-of-n confirmation. Every run uses ``--threshold`` (0.3: the offline backend's
scores run low on these streams; chosen on the even half). Every run is the real command (`sound-monitor run --source
STREAM --fast --no-tui --model offline --config ...`) in its own process.

Streams (seeded, built like scripts/bench_cost_per_hour.py): quiet room tone (about -58
dBFS) with the uiowa-dev clips of one half of the classes (sorted names, even or odd
positions) inserted at random times, at least 12 s apart, each at ``--level-dbfs`` RMS
(+-3 dB; the recordings themselves are calibrated quiet, about -47 dBFS, where few reach a
threshold of 0.5 over the room). Of each class's clips (sorted), the first two are for
teaching and the rest for the report stream. Labels: the classes that today's monitor detects in at least half of their clips on the
teaching stream (a household keeps the labels that work); the other classes of the half are
the confusers. The report stream draws about ``--target-share`` of its clips from the labels.

Figures: false alarms per hour (start events that overlap no inserted clip of their label)
and targets detected (inserted clips of a label overlapped by an event of that label).
Choose vetoes' margin and k-of-n on ``--classes even``; report on ``--classes odd``.

Usage: python scripts/bench_vetoes.py ../shared/data/uiowa-dev --classes even [--minutes 60]
       [--teach-seed 11] [--seed 12] [--margins 0,0.02] [--k-of-n 2/2,3/4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_cost_per_hour import RATE, build_stream, dataset_rows  # noqa: E402

from monitor.bench import cpu_info  # noqa: E402

PRE_S = POST_S = 1.0  # the clips sink's margins around an event


def split_clips(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(teaching clips: the first two of each class, report clips: the rest)."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["path"]):
        by[r["label"]].append(r)
    teach = [r for rs in by.values() for r in rs[:2]]
    report = [r for rs in by.values() for r in rs[2:]]
    return teach, report


THIS_WAS_AS = "confirmed"  # --this-was-as
THRESHOLD = 0.3  # --threshold: the offline backend's scores run low on these streams


def choose_labels(starts: list[dict], ends: dict[str, float], inserted: list[dict], classes: list[str]) -> list[str]:
    """The classes that today's monitor detects in at least half of their clips on the
    teaching stream (run with every class as a label): the labels a household would keep."""
    out = []
    for c in classes:
        j = judge([e for e in starts if e["label"] == c], ends, inserted, [c])
        if j["targets"] and j["detected"] >= j["targets"] / 2:
            out.append(c)
    return out


def weighted(rows: list[dict], labels: list[str], share: float) -> list[dict]:
    """``rows`` with the labels' clips repeated so that about ``share`` of the clips drawn
    (uniformly) are targets."""
    targets = [r for r in rows if r["label"] in labels]
    others = [r for r in rows if r["label"] not in labels]
    if not targets or not others:
        return rows
    reps = max(1, round(share / (1 - share) * len(others) / len(targets)))
    return others + targets * reps


def run(stream: Path, model: str, cfg: dict, state: Path) -> tuple[list[dict], float, float]:
    """The real command on ``stream`` with ``cfg``; -> (start events, CPU s, wall s)."""
    import yaml

    state.mkdir(parents=True, exist_ok=True)
    (state / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ev = state / "events.jsonl"
    cmd = [sys.executable, "-m", "monitor", "run", "--source", str(stream), "--fast", "--no-tui", "--model", model]
    cmd += ["--config", str(state / "config.yaml"), "--events", str(ev)]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    env = dict(os.environ, SOUND_MONITOR_STATE=str(state / "state"))
    r = subprocess.run(cmd, cwd=state, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"run failed: {r.stderr[-2000:]}")
    events = [json.loads(line) for line in ev.read_text().splitlines()] if ev.exists() else []
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return [e for e in events if e["type"] == "start"], cpu, wall


def ends_of(events_path_starts: list[dict], state: Path) -> dict[str, float]:
    """event_id -> end_s (from the run's events file)."""
    out = {}
    for line in (state / "events.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["type"] == "end":
            out[e["event_id"]] = e["end_s"]
    return out


def judge(starts: list[dict], ends: dict[str, float], inserted: list[dict], labels: list[str]) -> dict:
    """False alarms (events overlapping no inserted clip of their label) and detections."""

    def overlaps(e: dict, c: dict) -> bool:
        end = ends.get(e["event_id"], e["start_s"] + 5.0)
        return e["start_s"] < c["start_s"] + c["seconds"] and c["start_s"] < end

    targets = [c for c in inserted if c["label"] in labels]
    false = [e for e in starts if not any(c["label"] == e["label"] and overlaps(e, c) for c in targets)]
    detected = [c for c in targets if any(e["label"] == c["label"] and overlaps(e, c) for e in starts)]
    return {"events": len(starts), "false_alarms": false, "targets": len(targets), "detected": len(detected)}


def cause_of(e: dict, ends: dict[str, float], inserted: list[dict]) -> str:
    end = ends.get(e["event_id"], e["start_s"] + 5.0)
    hit = [c["label"] for c in inserted if e["start_s"] < c["start_s"] + c["seconds"] and c["start_s"] < end]
    return ", ".join(sorted(set(hit))) or "room"


def cut_event(stream_audio: np.ndarray, e: dict, end: float, out: Path, prefix: str) -> Path:
    """The event's audio cut as the clips sink cuts it (PRE_S before, POST_S after, at most a
    minute), written to ``out``."""
    a = max(0, int((e["start_s"] - PRE_S) * RATE))
    b = min(len(stream_audio), int((min(end, e["start_s"] + 60.0) + POST_S) * RATE))
    clip = out / f"{prefix}-{e['label'].replace(' ', '-')}-{e['start_s']:.0f}.wav"
    sf.write(clip, stream_audio[a:b], RATE, subtype="PCM_16")
    return clip


def teach(
    stream_audio: np.ndarray, false: list[dict], ends: dict[str, float], inserted: list[dict], out: Path
) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """A user's corrections of the teaching stream's false alarms: the confuser's class name
    as a veto prompt ("that was the coin drop": the inserted clip the event overlaps, if any)
    and the event's audio as a veto example ("not this sound")."""
    prompts: dict[str, set[str]] = defaultdict(set)
    examples: dict[str, list[str]] = defaultdict(list)
    out.mkdir(parents=True, exist_ok=True)
    for e in false:
        end = ends.get(e["event_id"], e["start_s"] + 5.0)
        for c in inserted:
            if c["label"] != e["label"] and e["start_s"] < c["start_s"] + c["seconds"] and c["start_s"] < end:
                prompts[e["label"]].add(c["label"])
        examples[e["label"]].append(str(cut_event(stream_audio, e, end, out, "false")))
    return prompts, examples


def confirm(
    stream_audio: np.ndarray,
    starts: list[dict],
    ends: dict[str, float],
    inserted: list[dict],
    labels: list[str],
    out: Path,
    per_label: int,
) -> dict[str, list[str]]:
    """A user's "Yes, that was LABEL" on the first ``per_label`` true detections of each label
    on the teaching stream (the event's audio, cut like the clips sink cuts it): clips of what
    the label sounds like here."""
    clips: dict[str, list[str]] = defaultdict(list)
    out.mkdir(parents=True, exist_ok=True)
    for e in sorted(starts, key=lambda e: e["start_s"]):
        lab = e["label"]
        if lab not in labels or len(clips[lab]) >= per_label:
            continue
        end = ends.get(e["event_id"], e["start_s"] + 5.0)
        if not any(
            c["label"] == lab and e["start_s"] < c["start_s"] + c["seconds"] and c["start_s"] < end for c in inserted
        ):
            continue
        clips[lab].append(str(cut_event(stream_audio, e, end, out, "this-was")))
    return clips


def config(
    labels: list[str],
    prompts=None,
    examples=None,
    *,
    this_was=None,
    margin: float = 0.0,
    clip_margin: float = 0.0,
    competes: bool = True,
    k: int = 2,
    n: int = 2,
) -> dict:
    entries = []
    for lab in labels:
        e: dict = {"name": lab}
        if prompts and prompts.get(lab):
            e["veto"] = sorted(prompts[lab])
        if examples and examples.get(lab):
            e["veto_examples"] = examples[lab]
        if this_was and this_was.get(lab):
            if THIS_WAS_AS == "examples":  # text and clips mix in the label's score
                e["prompts"] = [lab]
                e["examples"] = this_was[lab]
            else:  # the label's score unchanged; they only keep veto clips off its own sound
                e["confirmed"] = this_was[lab]
        entries.append(e)
    return {
        "labels": entries,
        "scoring": {"veto_margin": margin, "veto_clip_margin": clip_margin, "veto_competes": competes},
        "events": {"threshold": THRESHOLD, "min_windows": k, "within_windows": n},
    }


def main() -> int:
    global THRESHOLD, THIS_WAS_AS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("--classes", choices=("even", "odd"), required=True)
    ap.add_argument("--model", default="offline")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--events", type=int, default=110, help="clips inserted per stream")
    ap.add_argument(
        "--level-dbfs", type=float, default=-30.0, help="RMS of each inserted clip (+-3 dB; the room tone is ~-58)"
    )
    ap.add_argument("--teach-seed", type=int, default=11)
    ap.add_argument("--seed", type=int, default=12, help="the report stream's seed")
    ap.add_argument("--margins", default="0", help="veto_margin values to try (comma-separated)")
    ap.add_argument("--clip-margins", default="0", help="veto_clip_margin values to try (comma-separated)")
    ap.add_argument("--competes", default="true", help="veto_competes values to try (true,false)")
    ap.add_argument("--k-of-n", default="3/4", help="k-of-n settings to try with the vetoes (K/N, comma-separated)")
    ap.add_argument(
        "--target-share", type=float, default=0.5, help="share of the report stream's clips that are targets"
    )
    ap.add_argument("--threshold", type=float, default=0.3, help="events.threshold of every run")
    ap.add_argument(
        "--confirm",
        type=int,
        default=0,
        help="'this was' clips per label (its first true detections on the teaching stream): 0 = none",
    )
    ap.add_argument("--this-was-as", choices=("confirmed", "examples"), default="confirmed")
    ap.add_argument("--runs", default=None, help="only the runs whose names contain one of these (comma-separated)")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args()
    THRESHOLD = a.threshold
    THIS_WAS_AS = a.this_was_as
    ds = Path(a.dataset)
    rows = dataset_rows(ds, a.classes)
    classes = sorted({r["label"] for r in rows})
    teach_rows, report_rows = split_clips(rows)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="bench-vetoes-"))
    hours = a.minutes / 60.0

    # the teaching stream, monitored today with every class as a label
    t_audio, t_inserted = build_stream(teach_rows, ds, a.minutes, a.events, a.teach_seed, a.level_dbfs)
    t_stream = work / "teach.wav"
    sf.write(t_stream, t_audio, RATE, subtype="PCM_16")
    starts, _, _ = run(t_stream, a.model, config(classes), work / "teach")
    ends = ends_of(starts, work / "teach")
    labels = choose_labels(starts, ends, t_inserted, classes)
    if not labels:
        raise SystemExit("no class is detected in half of its clips on the teaching stream")
    confusers = [c for c in classes if c not in labels]
    say(f"{a.classes} classes: labels {labels}; confusers {confusers}")
    t = judge([e for e in starts if e["label"] in labels], ends, t_inserted, labels)
    prompts, examples = teach(t_audio, t["false_alarms"], ends, t_inserted, work / "taught")
    this_was = confirm(t_audio, starts, ends, t_inserted, labels, work / "confirmed", a.confirm) if a.confirm else {}
    t_causes = sorted(f"{e['label']} <- {cause_of(e, ends, t_inserted)}" for e in t["false_alarms"])
    say(f"teaching stream: {len(t['false_alarms'])} false alarms ({'; '.join(t_causes)}) -> veto prompts {dict(prompts)}, "
        f"{sum(len(v) for v in examples.values())} veto examples")  # fmt: skip

    r_rows = weighted(report_rows, labels, a.target_share)
    r_audio, r_inserted = build_stream(r_rows, ds, a.minutes, a.events, a.seed, a.level_dbfs)
    r_stream = work / "report.wav"
    sf.write(r_stream, r_audio, RATE, subtype="PCM_16")
    runs: dict[str, dict] = {"today": config(labels)}
    for comp in [x.strip() == "true" for x in a.competes.split(",")]:
        for m in [float(x) for x in a.margins.split(",")]:
            tag = f"margin {m:g}, competes {str(comp).lower()}"
            runs[f"+ veto prompts ({tag})"] = config(labels, prompts, margin=m, competes=comp)
            for kn in a.k_of_n.split(","):  # k-of-n on the prompts alone (no taught clips)
                k, n = (int(x) for x in kn.split("/"))
                runs[f"+ {k}-of-{n}, prompts only ({tag})"] = config(labels, prompts, margin=m, competes=comp, k=k, n=n)
            for cm in [float(x) for x in a.clip_margins.split(",")]:
                tag2 = f"{tag}, clip margin {cm:g}"
                kw = {"margin": m, "clip_margin": cm, "competes": comp}
                runs[f"+ veto examples ({tag2})"] = config(labels, prompts, examples, **kw)
                for kn in a.k_of_n.split(","):
                    k, n = (int(x) for x in kn.split("/"))
                    runs[f"+ {k}-of-{n} ({tag2})"] = config(labels, prompts, examples, k=k, n=n, **kw)
                if this_was:  # the label's own confirmed clips: a veto clip must be nearer than they are
                    runs[f"+ this was, no veto examples ({tag2})"] = config(labels, prompts, this_was=this_was, **kw)
                    runs[f"+ veto examples + this was ({tag2})"] = config(
                        labels, prompts, examples, this_was=this_was, **kw
                    )
                    for kn in a.k_of_n.split(","):
                        k, n = (int(x) for x in kn.split("/"))
                        runs[f"+ {k}-of-{n}, veto examples + this was ({tag2})"] = config(
                            labels, prompts, examples, this_was=this_was, k=k, n=n, **kw
                        )
    if a.runs:  # "today" always: the ratios are against it
        keep = [x.strip() for x in a.runs.split(",")]
        runs = {k: v for k, v in runs.items() if k == "today" or any(x in k for x in keep)}
    results = {}
    for name, cfg in runs.items():
        state = work / f"run-{len(results)}"
        starts, cpu, wall = run(r_stream, a.model, cfg, state)
        j = judge(starts, ends_of(starts, state), r_inserted, labels)
        fa = len(j["false_alarms"])
        results[name] = {
            "false_alarms": fa,
            "false_alarms_per_hour": round(fa / hours, 2),
            "detected": j["detected"],
            "targets": j["targets"],
            "cpu_s": round(cpu, 1),
            "wall_s": round(wall, 1),
            # each false alarm: its label and what it overlapped (an inserted clip's class, or the room)
            "false_alarm_causes": sorted(
                f"{e['label']} <- {cause_of(e, ends_of(starts, state), r_inserted)}" for e in j["false_alarms"]
            ),
        }
        say(f"{name}: {fa} false alarms ({fa / hours:.2f}/h), {j['detected']}/{j['targets']} targets, {cpu:.0f} CPU s")
    base = results["today"]
    for r in results.values():
        r["false_alarm_ratio"] = round(r["false_alarms"] / base["false_alarms"], 3) if base["false_alarms"] else None
        r["detections_kept"] = round(r["detected"] / base["detected"], 3) if base["detected"] else None
    out = {
        "classes": a.classes,
        "threshold": a.threshold,
        "labels": labels,
        "confusers": confusers,
        "minutes": a.minutes,
        "inserted_per_stream": a.events,
        "target_share": a.target_share,
        "level_dbfs": a.level_dbfs,
        "teach_seed": a.teach_seed,
        "seed": a.seed,
        "taught": {
            "veto_prompts": {k: sorted(v) for k, v in prompts.items()},
            "veto_examples": {k: len(v) for k, v in examples.items()},
            "teaching_false_alarms": len(t["false_alarms"]),
            "this_was": {k: len(v) for k, v in this_was.items()},
        },  # fmt: skip
        "cpu": cpu_info()[0],
        "results": results,
    }
    text = json.dumps(out, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
