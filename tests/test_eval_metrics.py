"""Ranking metrics on hand-computed rankings, chance levels, class-fold splits, datasets."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.errors import UserError
from monitor.evaluation import evaluate


def test_metrics_on_hand_computed_rankings():
    # true classes: 0, 1, 2, 1 ; ranks of the true class: 1, 3, 2, 1
    scores = np.array(
        [
            [0.9, 0.1, 0.0],
            [0.5, 0.1, 0.3],
            [0.6, 0.2, 0.4],
            [0.1, 0.8, 0.3],
        ]
    )
    y = np.array([0, 1, 2, 1])
    m = evaluate.metrics(scores, y, ["a", "b", "c"])
    assert evaluate.true_ranks(scores, y).tolist() == [1, 3, 2, 1]
    assert m["top1"] == pytest.approx(0.5)
    assert m["top5"] == pytest.approx(1.0)
    assert m["map"] == pytest.approx((1 + 1 / 3 + 1 / 2 + 1) / 4)
    assert m["per_class"] == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert m["confusion"].tolist() == [[1, 0, 0], [1, 1, 0], [1, 0, 0]]
    assert m["chance_top1"] == pytest.approx(1 / 3)
    assert m["chance_map"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_ties_count_against_the_true_class():
    scores = np.zeros((2, 4))
    m = evaluate.metrics(scores, np.array([0, 3]), list("abcd"))
    assert m["top1"] == 0.0
    assert m["map"] == pytest.approx(0.25)  # rank 4 of 4


def test_chance_map_is_exact_and_matches_random_rankings():
    assert evaluate.chance(10)["chance_map"] == pytest.approx(0.2929, abs=1e-4)
    assert evaluate.chance(10)["chance_top1"] == pytest.approx(0.1)
    assert evaluate.chance(3)["chance_top5"] == 1.0
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 20000)
    m = evaluate.metrics(rng.random((20000, 10)), y, [str(i) for i in range(10)])
    assert m["map"] == pytest.approx(0.2929, abs=0.01)
    assert m["top1"] == pytest.approx(0.1, abs=0.01)


def test_random_class_folds_are_disjoint_cover_and_seeded():
    classes = [f"class {i:02d}" for i in range(27)]
    a = evaluate.class_folds(classes, 5, "random", seed=3)
    b = evaluate.class_folds(list(reversed(classes)), 5, "random", seed=3)
    c = evaluate.class_folds(classes, 5, "random", seed=4)
    assert a == b  # deterministic under a seed, whatever the input order
    assert a != c
    flat = [x for f in a for x in f]
    assert sorted(flat) == classes and len(flat) == len(set(flat))
    assert sorted(len(f) for f in a) == [5, 5, 5, 6, 6]


def test_category_partition_and_its_absence():
    cats = {"dog": "animals", "cat": "animals", "rain": "nature", "wind": "nature", "saw": "tools", "drill": "tools"}
    folds = evaluate.class_folds(list(cats), 5, "category", categories=cats)
    assert folds == [("cat", "dog"), ("rain", "wind"), ("drill", "saw")]
    with pytest.raises(UserError, match="no categories"):
        evaluate.class_folds(list(cats), 5, "category", categories=None)
    with pytest.raises(UserError, match="folds"):
        evaluate.class_folds(list(cats), 2, "random")


def test_leave_one_out_prototypes_never_use_the_clip_itself():
    # class 0: two clips along x; class 1: two clips along y; a third class-0 clip along y
    emb = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [0, 1.0]])
    y = np.array([0, 0, 1, 1, 0])
    s = evaluate.loo_prototype_scores(emb, y, 2)
    # clip 4 (class 0 but along y) ranks class 1 first: its own class' prototype lacks it
    assert s[4, 1] > s[4, 0]
    assert np.argmax(s[:4], axis=1).tolist() == [0, 0, 1, 1]
    # a clip alone in its class has no prototype: scored -inf, a miss
    s1 = evaluate.loo_prototype_scores(emb[:3], np.array([0, 0, 1]), 2)
    assert s1[2, 1] == -np.inf


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_datasets_labels_csv_and_esc50(tmp_path):
    d = tmp_path / "ds"
    (d / "a").mkdir(parents=True)
    for n in ("a/1.wav", "a/2.wav", "b.wav"):
        (d / n).write_bytes(b"x")
    _write(d / "labels.csv", "path,label,seconds\na/1.wav,dog,1\na/2.wav,dog,1\nb.wav,cat,2\n")
    ds = evaluate.load_dataset(d)
    assert ds.classes == ("cat", "dog") and ds.y.tolist() == [1, 1, 0] and ds.categories is None

    e = tmp_path / "esc"
    (e / "meta").mkdir(parents=True)
    (e / "audio").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for i, (t, c) in enumerate([(0, "dog"), (1, "rooster"), (10, "rain"), (41, "chainsaw")]):
        (e / "audio" / f"{i}.wav").write_bytes(b"x")
        rows.append(f"{i}.wav,1,{t},{c},False,1,A")
    _write(e / "meta" / "esc50.csv", "\n".join(rows) + "\n")
    ds = evaluate.load_dataset(e)
    assert ds.class_categories() == {
        "dog": "animals",
        "rooster": "animals",
        "rain": "natural soundscapes",
        "chainsaw": "exterior/urban",
    }


@pytest.mark.parametrize(
    "csv_text, match",
    [
        ("file,name\nx.wav,dog\n", "path,label"),
        ("path,label\n", "no clips"),
        ("path,label\nmissing.wav,dog\nother.wav,cat\n", "not found"),
        ("path,label\nx.wav,\n", "empty"),
    ],
)
def test_bad_labels_csv_is_a_user_error(tmp_path, csv_text, match):
    (tmp_path / "x.wav").write_bytes(b"x")
    _write(tmp_path / "labels.csv", csv_text)
    with pytest.raises(UserError, match=match):
        evaluate.load_dataset(tmp_path)


def test_missing_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        evaluate.load_dataset(tmp_path / "nope")
    with pytest.raises(UserError, match="neither labels.csv"):
        evaluate.load_dataset(tmp_path)
