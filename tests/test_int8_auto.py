"""model.int8: auto -- time fp32 against int8 on real windows, keep the decision per machine."""

from __future__ import annotations

import json
import shutil

from monitor.config import ModelConfig
from monitor.models.clap.int8_auto import CHOICE_FILE, decide, machine_key
from monitor.models.select import load_dir


def test_the_rule():
    assert decide(70.0, 42.0, 0.997, 6, 6).int8  # clearly faster and agreeing
    slow = decide(70.0, 60.0, 0.999, 6, 6)
    assert not slow.int8 and "not clearly faster" in slow.why and "int8 60 ms vs fp32 70 ms" in slow.why
    assert not decide(70.0, 40.0, 0.95, 6, 6).int8  # fast but a different embedding
    assert "disagrees" in decide(70.0, 40.0, 0.999, 5, 6).why  # one top-1 differs
    # half the time, but 2 ms saved per window: noise on a model this small, fp32 stays
    assert not decide(4.0, 2.0, 0.999, 6, 6).int8
    assert ModelConfig().int8 == "auto"  # the monitor's default


def test_auto_measures_once_per_machine_and_says_why(tiny_clap_export, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_clap_export, d)
    (d / CHOICE_FILE).unlink(missing_ok=True)  # a `run` test may have measured the shared export already
    b = load_dir(d, ModelConfig(int8="auto"), ["dog barking", "smoke alarm", "dog barking"])
    # the tiny test model saves well under MIN_SAVING_MS whatever the timing: fp32, every time
    assert b.int8_choice.startswith("fp32: int8 is not clearly faster") and "per window" in b.int8_choice
    assert not b.int8 and "-int8@" not in b.name
    kept = json.loads((d / CHOICE_FILE).read_text())
    assert list(kept) == [machine_key(2)] and kept[machine_key(2)]["int8"] == b.int8
    assert kept[machine_key(2)]["labels"] == ["dog barking", "smoke alarm"]  # the configured labels' top-1
    again = load_dir(d, ModelConfig(int8="auto"))
    assert again.int8 == b.int8 and again.int8_choice.endswith("kept)")  # not measured again
    other = load_dir(d, ModelConfig(int8="auto", threads=1))  # another thread count: measured for itself
    assert "kept" not in other.int8_choice and len(json.loads((d / CHOICE_FILE).read_text())) == 2
    assert load_dir(d, ModelConfig(int8=False)).int8_choice == ""  # asked for fp32: nothing measured


def test_auto_without_an_int8_encoder_runs_fp32(tiny_clap_export, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_clap_export, d)
    m = json.loads((d / "manifest.json").read_text())
    m["audio"].pop("int8_file", None)
    (d / "manifest.json").write_text(json.dumps(m))
    b = load_dir(d, ModelConfig(int8="auto"))
    assert not b.int8 and b.int8_choice.startswith("fp32: this export has no int8 encoder")
