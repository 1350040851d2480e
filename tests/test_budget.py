"""Choosing the CLAP preset by CPU budget (issue 31, monitor/models/budget.py): estimated
before any download from each preset's work per window and this machine's matmul rate
(injected here)."""

from __future__ import annotations

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
