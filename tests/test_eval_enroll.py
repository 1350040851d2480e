"""eval and enroll on real recordings with the offline backend (real YAMNet + MiniLM weights).

Clip embeddings are cached under the test cache (``~/.cache/sound-monitor-tests/clip-cache``)
so repeated runs only read them back.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import cli_helpers
import numpy as np
import pytest
from fixtures_offline import offline_cache_dir

ROOT = Path(__file__).resolve().parents[1]
CLIP_CACHE = offline_cache_dir().parent / "clip-cache"


def uiowa_by_class(uiowa_dir: Path) -> dict[str, list[Path]]:
    import csv

    out: dict[str, list[Path]] = defaultdict(list)
    with open(uiowa_dir / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            out[r["label"]].append(uiowa_dir / r["path"])
    return {k: sorted(v) for k, v in out.items()}


def cli(args, env, timeout=300):
    """The shared runner with this module's environment (state dir, offline model)."""
    extra = {k: v for k, v in env.items() if k != "SOUND_MONITOR_STATE"}
    return cli_helpers.cli(*args, state=env["SOUND_MONITOR_STATE"], env_extra=extra, timeout=timeout)


@pytest.fixture()
def env(tmp_path, offline_model_dir):
    return {"SOUND_MONITOR_STATE": str(tmp_path / "state"), "SOUND_MONITOR_OFFLINE_DIR": str(offline_model_dir)}


@pytest.fixture()
def small_dataset(tmp_path, uiowa_dir):
    """6 uiowa-dev classes x 5 clips, listed by absolute path in a labels.csv."""
    by = uiowa_by_class(uiowa_dir)
    classes = ["glass smash", "hair dryer", "leaf blower", "stapler", "velcro", "hatchet"]
    d = tmp_path / "small"
    d.mkdir()
    rows = ["path,label"] + [f"{p},{c}" for c in classes for p in by[c]]
    (d / "labels.csv").write_text("\n".join(rows) + "\n")
    return d


def test_enrolled_labels_rank_first_on_a_held_out_clip(uiowa_dir, offline_model):
    from monitor.config import LabelConfig
    from monitor.models.backend import l2_normalise
    from monitor.models.labels import label_embeddings
    from monitor.models.prototypes import embed_files

    by = uiowa_by_class(uiowa_dir)
    classes = sorted(by)
    assert len(classes) == 27
    # every class taught by all clips but its last (4, or 3 for the 4-clip classes)
    labels = [LabelConfig(name=c, examples=tuple(str(p) for p in by[c][:-1])) for c in classes]
    vecs = label_embeddings(offline_model, labels, cache_dir=CLIP_CACHE)
    held_out = l2_normalise(embed_files(offline_model, [by[c][-1] for c in classes], "audio", CLIP_CACHE))
    top = np.argmax(held_out @ vecs.T, axis=1)
    first = {c: classes[top[i]] == c for i, c in enumerate(classes)}
    for c in ("glass smash", "hair dryer", "leaf blower", "stapler", "velcro", "hatchet"):
        assert first[c], f"{c}: enrolled label not first on its held-out clip (got {classes[top[classes.index(c)]]})"
    assert np.mean(list(first.values())) >= 0.5  # 16/27 measured (notes/issue6.md)


def test_enroll_then_classify_and_config(tmp_path, uiowa_dir, env):
    clips = uiowa_by_class(uiowa_dir)["hair dryer"]
    r = cli(["enroll", "our dryer", *map(str, clips[:4]), "--model", "offline"], env)
    assert r.returncode == 0, r.stderr
    store = Path(env["SOUND_MONITOR_STATE"]) / "prototypes"
    [store_file] = list(store.glob("*.json"))
    entry = json.loads(store_file.read_text())["our dryer"]
    assert len(entry["vector"]) == 521 and len(entry["files"]) == 4
    # the enrolled label now works like any other in classify, next to text labels
    r = cli(
        ["classify", str(clips[4]), "--model", "offline", "--labels", "leaf blower,our dryer,lawnmower", "--json"], env
    )
    assert r.returncode == 0, r.stderr
    scores = json.loads(r.stdout)[0]["scores"]
    assert scores[0]["label"] == "our dryer" and scores[0]["score"] > 0.5

    cfg = tmp_path / "config.yaml"
    cfg.write_text("labels:\n  - smoke alarm\n  - name: our dryer\n    threshold: 0.7\n")
    r = cli(
        [
            "enroll",
            "our dryer",
            *map(str, clips[:2]),
            "--model",
            "offline",
            "--config",
            str(cfg),
            "--prompt",
            "hair dryer",
        ],
        env,
    )
    assert r.returncode == 0, r.stderr
    from monitor.config import load_config

    labels = {l.name: l for l in load_config(cfg).labels}
    assert labels["our dryer"].examples == tuple(str(p) for p in clips[:2])
    assert labels["our dryer"].prompts == ("hair dryer",) and labels["our dryer"].threshold == 0.7
    assert "smoke alarm" in labels
    assert (tmp_path / "config.yaml.bak").is_file()


def test_mixed_label_combines_text_and_prototype(uiowa_dir, offline_model):
    from monitor.config import LabelConfig
    from monitor.models.backend import l2_normalise
    from monitor.models.labels import label_embeddings
    from monitor.models.prototypes import prototype

    clips = [str(p) for p in uiowa_by_class(uiowa_dir)["velcro"][:4]]
    text, proto_only, mixed = label_embeddings(
        offline_model,
        [
            LabelConfig(name="velcro"),
            LabelConfig(name="v1", examples=tuple(clips)),
            LabelConfig(name="v2", prompts=("velcro",), examples=tuple(clips)),
        ],
        cache_dir=CLIP_CACHE,
    )
    p = prototype(offline_model, clips, CLIP_CACHE)
    assert proto_only == pytest.approx(p, abs=1e-6)
    assert mixed == pytest.approx(l2_normalise(text + p), abs=1e-5)


def test_eval_json_contract_zero_shot_and_class_folds(small_dataset, env, tmp_path):
    r = cli(["eval", str(small_dataset), "--model", "offline", "--json", "--cache-dir", str(CLIP_CACHE)], env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for k in ("n_clips", "n_classes", "top1", "top5", "map", "chance_top1", "chance_map", "per_class"):
        assert k in out
    assert out["n_clips"] == 30 and out["n_classes"] == 6
    assert out["chance_top1"] == pytest.approx(1 / 6)
    assert out["chance_map"] == pytest.approx(sum(1 / r for r in range(1, 7)) / 6)
    assert set(out["per_class"]) == {"glass smash", "hair dryer", "leaf blower", "stapler", "velcro", "hatchet"}
    assert out["top1"] == pytest.approx(np.mean(list(out["per_class"].values())))  # 5 clips per class
    assert out["top1"] > out["chance_top1"]
    assert np.asarray(out["confusion"]["matrix"]).sum() == 30

    report = tmp_path / "report"
    r = cli(
        [
            "eval",
            str(small_dataset),
            "--model",
            "offline",
            "--json",
            "--protocol",
            "class-folds",
            "--folds",
            "3",
            "--adapter",
            "prototype",
            "--seed",
            "1",
            "--cache-dir",
            str(CLIP_CACHE),
            "--report",
            str(report),
        ],
        env,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["folds"]) == 3
    assert sorted(c for f in out["folds"] for c in f["test_classes"]) == sorted(out["per_class"])
    assert out["map"] == pytest.approx(np.mean([f["map"] for f in out["folds"]]))
    assert out["chance_map"] == pytest.approx(0.75)  # 2 classes per fold: (1 + 1/2) / 2
    assert out["top1"] > 0.8  # prototypes of these distinct sounds
    for f in ("report.md", "confusion.png", "per_class.png"):
        assert (report / f).stat().st_size > 100
    assert "| mAP |" in (report / "report.md").read_text()


def test_saved_adapter_loads_in_classify(small_dataset, uiowa_dir, env, tmp_path):
    path = tmp_path / "bilinear.npz"
    r = cli(
        [
            "eval",
            str(small_dataset),
            "--model",
            "offline",
            "--adapter",
            "bilinear",
            "--save-adapter",
            str(path),
            "--json",
            "--cache-dir",
            str(CLIP_CACHE),
        ],
        env,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"adapter_file": str(path), "n_clips": 30, "n_classes": 6}
    from monitor.evaluation.training import Adapter

    ad = Adapter.load(path)
    assert ad.meta["semantic"] == "minilm" and ad.meta["theta"] == "features" and (ad.d_a, ad.d_s) == (1024, 384)
    clip = uiowa_by_class(uiowa_dir)["stapler"][0]
    r = cli(
        [
            "classify",
            str(clip),
            "--model",
            "offline",
            "--adapter",
            str(path),
            "--labels",
            "stapler,velcro,hatchet",
            "--json",
        ],
        env,
    )
    assert r.returncode == 0, r.stderr
    scores = json.loads(r.stdout)[0]["scores"]
    assert sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-4)
    # the adapter was trained on these classes: its own training clip comes out first
    assert scores[0]["label"] == "stapler"


@pytest.mark.parametrize(
    "args, match",
    [
        (["eval", "{tmp}/missing", "--model", "offline"], "dataset not found"),
        (["eval", "{bad}", "--model", "offline"], "path,label"),
        (
            ["eval", "{uiowa}", "--model", "offline", "--protocol", "class-folds", "--partition", "category"],
            "no categories",
        ),
        (["eval", "{uiowa}", "--model", "offline", "--adapter", "bilinear"], "class-folds"),
        (["enroll", "x", "{tmp}/missing.wav", "--model", "offline"], "not found"),
    ],
)
def test_cli_errors_exit_2_with_one_line(args, match, tmp_path, uiowa_dir, env):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.csv").write_text("file;name\nx.wav;dog\n")
    args = [a.format(tmp=tmp_path, bad=bad, uiowa=uiowa_dir) for a in args]
    r = cli(args, env, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow  # about 10-30 s: a whole model or a real device
def test_saved_adapter_runs_in_the_monitor(tmp_path, uiowa_dir, env, tiny_clap_export):
    """eval --save-adapter -> run --adapter: the learned scores drive the streaming monitor."""
    adapter = tmp_path / "bilinear.npz"
    r = cli(
        [
            "eval",
            str(uiowa_dir),
            "--model",
            "offline",
            "--protocol",
            "class-folds",
            "--adapter",
            "bilinear",
            "--save-adapter",
            str(adapter),
            "--json",
        ],
        env,
    )
    assert r.returncode == 0, r.stderr
    assert adapter.is_file()
    clip = uiowa_by_class(uiowa_dir)["hair dryer"][0]
    r = cli(
        [
            "run",
            "--source",
            str(clip),
            "--fast",
            "--no-tui",
            "--model",
            "offline",
            "--adapter",
            str(adapter),
            "--labels",
            "hair dryer,leaf blower,zipper",
            "--scores",
            "-",
        ],
        env,
    )
    assert r.returncode == 0, r.stderr
    assert "offline-yamnet-minilm+bilinear" in r.stderr
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 2  # 6.5 s: windows at 0 and 1 s
    for line in lines:
        s = line["scores"]
        assert set(s) == {"hair dryer", "leaf blower", "zipper"}
        assert max(s, key=s.get) == "hair dryer"  # a class the adapter was trained on
    # an adapter trained for another model is refused with one clear line
    bad = cli(
        [
            "run",
            "--source",
            str(clip),
            "--fast",
            "--no-tui",
            "--model",
            str(tiny_clap_export),
            "--adapter",
            str(adapter),
        ],
        env,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "adapter" in bad.stderr, bad.stderr
