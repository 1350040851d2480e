"""Choosing the CLAP preset by CPU budget (issue 31, monitor/models/budget.py): estimated
before any download from each preset's work per window and this machine's matmul rate
(injected here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.config import CLAP_PRESETS, Config
from monitor.models.budget import GATE_RUN_SHARE, PRESET_COST, choose, estimate_pct
from monitor.models.select import by_budget


def test_the_estimate_is_the_floor_times_the_measured_overhead_and_the_gates_share():
    c = PRESET_COST["htsat-unfused"]
    got = estimate_pct("htsat-unfused", 100.0, 1.0, 2, gate=False)
    assert got == pytest.approx(100.0 * c["gflop"] / 100.0 * c["over_floor"] / 2)
    assert estimate_pct("htsat-unfused", 100.0, 1.0, 2) == pytest.approx(got * GATE_RUN_SHARE)
    assert estimate_pct("htsat-unfused", 100.0, 2.0, 2) == pytest.approx(got * GATE_RUN_SHARE / 2)  # half the windows


def test_a_budget_picks_the_larger_preset_when_it_fits_and_the_smaller_when_not():
    # a home server (170 GFLOP/s a core, 2 cores): larger ~2.8 %, htsat ~1.2 % at a 1 s hop
    c = choose(5.0, 170.0, 1.0, ncpu=2)
    assert c.preset == "larger-general" and "the most accurate that fits" in c.reason
    c = choose(2.0, 170.0, 1.0, ncpu=2)
    assert c.preset == "htsat-unfused" and c.estimates["larger-general"] > 2.0
    # a Raspberry Pi class core (10 GFLOP/s, 4 cores): larger ~24 %, htsat ~10 %
    assert choose(15.0, 10.0, 1.0, ncpu=4).preset == "htsat-unfused"
    assert choose(30.0, 10.0, 1.0, ncpu=4).preset == "larger-general"
    # nothing fits: the cheapest, and the banner says so
    c = choose(1.0, 10.0, 1.0, ncpu=4)
    assert c.preset == "htsat-unfused" and "no preset fits" in c.reason
    # without the change gate every window runs the model
    assert choose(5.0, 170.0, 1.0, ncpu=2, gate=False).preset == "htsat-unfused"


def test_auto_with_a_budget_configures_the_chosen_presets_pins():
    cfg = Config.model_validate({"model": {"cpu_budget_pct": 5}}).model
    chosen, why = by_budget(cfg, hop_s=1.0, gate=True, rate=lambda: 170.0)
    assert chosen.hub.preset == "larger-general" and chosen.hub.repo == CLAP_PRESETS["larger-general"]["repo"]
    assert chosen.hub.revision == CLAP_PRESETS["larger-general"]["revision"] and "budget 5 %" in why
    chosen, _ = by_budget(cfg, hop_s=1.0, gate=True, rate=lambda: 20.0)
    assert chosen.hub.preset == "htsat-unfused"
    assert chosen.hub.checkpoint_revision == CLAP_PRESETS["htsat-unfused"]["checkpoint_revision"]


def test_a_budget_outside_0_100_is_refused():
    for bad in (0, -5, 150):
        with pytest.raises(Exception, match="cpu_budget_pct"):
            Config.model_validate({"model": {"cpu_budget_pct": bad}})


def test_the_budget_is_checked_on_the_run_after_its_first_minute():
    from monitor.models.budget import BudgetCheck

    t = [0.0]
    cpu = [0.0]
    check = BudgetCheck(10.0, "clap-larger-general", after_s=60.0, clock=lambda: t[0], cpu_clock=lambda: cpu[0], ncpu=2)
    t[0], cpu[0] = 30.0, 3.0
    assert check.poll() is None  # not yet a minute
    t[0], cpu[0] = 60.0, 18.0  # 18 CPU s in 60 s on 2 cores: 15 %
    said = check.poll()
    assert said is not None and "used 15.0 % of this machine over its first 60 s (budget 10 %" in said
    assert "over budget" in said and check.poll() is None  # said once
    ok = BudgetCheck(20.0, "x", after_s=60.0, clock=lambda: t[0] + 0.0, cpu_clock=lambda: 0.0, ncpu=2)
    t[0] += 60.0
    assert "over budget" not in (ok.poll() or "")


def _msclap_export(models: Path, version: str = "2023") -> Path:
    """A folder as `export --model msclap:2023` leaves it (its manifest is what counts here)."""
    d = models / f"msclap-{version}"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"kind": "clap", "family": "msclap", "name": f"msclap-{version}"}))
    return d


def test_microsoft_clap_2023_competes_only_when_its_export_is_present(tmp_path):
    # a budget between Microsoft CLAP 2023's estimate and larger-general's (the latter costs more)
    rate = 100.0
    est = {p: estimate_pct(p, rate, 1.0, 2) for p in PRESET_COST}
    budget = (est["larger-general"] + est["msclap-2023"]) / 2
    assert est["larger-general"] > budget > max(est["msclap-2023"], est["htsat-unfused"])
    assert choose(budget, rate, 1.0, ncpu=2).preset == "htsat-unfused"  # no export: not a candidate
    c = choose(budget, rate, 1.0, ncpu=2, present={"msclap-2023"})
    assert c.preset == "msclap-2023" and "msclap-2023, the most accurate that fits" in c.reason
    # through the config: the budget finds the export among the models and runs it
    models = tmp_path / "models"
    cfg = Config.model_validate({"model": {"cpu_budget_pct": budget, "models_dir": str(models)}}).model
    chosen, _ = by_budget(cfg, hop_s=1.0, gate=True, rate=lambda: rate)
    assert chosen.spec == "auto" and chosen.hub.preset == "htsat-unfused"
    folder = _msclap_export(models)
    _msclap_export(models, "2022")  # not a budget candidate (no accuracy figure on this protocol)
    chosen, why = by_budget(cfg, hop_s=1.0, gate=True, rate=lambda: rate)
    assert chosen.spec == str(folder) and "msclap-2023, the most accurate that fits" in why
    # larger-general fits a bigger budget and is more accurate still
    big = cfg.model_copy(update={"cpu_budget_pct": 50.0})
    assert by_budget(big, hop_s=1.0, gate=True, rate=lambda: rate)[0].hub.preset == "larger-general"


def test_larger_music_speech_is_pinned_but_never_chosen_by_a_budget():
    hub = Config.model_validate({"model": {"hub": {"preset": "larger-music-speech"}}}).model.hub
    assert (hub.repo, hub.checkpoint_repo) == (
        "Xenova/larger_clap_music_and_speech",
        "laion/larger_clap_music_and_speech",
    )
    assert len(hub.revision) == 40 and len(hub.checkpoint_revision) == 40
    assert "larger-music-speech" not in PRESET_COST
