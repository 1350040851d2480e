"""Choosing the CLAP preset by CPU budget (``model.cpu_budget_pct``, `run --model auto`).

Before any download, each preset's cost at the run's hop is estimated from its encoder's
work per window (GFLOP, counted on its full-size architecture by
scripts/measure_presets.py) and this machine's matmul rate (measured at start with the
``bench`` machinery, one thread, a fraction of a second):

    estimate % = work / rate / hop / CPUs x (measured / floor time) x (share of windows the
                 model runs with the change gate on)

``auto`` takes the most accurate preset whose estimate fits the budget; the banner says
which and why. The figures are this module's constants, each with where it was measured.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

# per preset: the audio encoder's work per window (GFLOP, counted from its full-size graph by
# scripts/measure_presets.py, notes/issue31-costs.json, AMD EPYC),
# the encoder's measured time over its matmul floor (one thread), and zero-shot accuracy
# (MTEB/MAEB result files: ESC-50, UrbanSound8K) -- the order auto prefers.
# larger-music-speech is not here: no general-sound accuracy figure is known for it (it is
# trained for music and speech), so a budget never picks it; `preset: larger-music-speech` does.
PRESET_COST: dict[str, dict[str, float]] = {
    "htsat-unfused": {"gflop": 11.82, "over_floor": 1.16, "esc50": 0.817, "us8k": 0.744},
    "larger-general": {"gflop": 30.65, "over_floor": 1.04, "esc50": 0.905, "us8k": 0.796},
    # Microsoft CLAP 2023 (7 s windows): not on the hub, exported with torch (`make export-msclap`);
    # a candidate only when its export is present (EXPORT_ONLY). Counted: the same work per
    # window as htsat-unfused (both HTSAT on the same spectrogram size), at a higher accuracy
    "msclap-2023": {"gflop": 11.82, "over_floor": 1.17, "esc50": 0.8985, "us8k": 0.830},
}
EXPORT_ONLY = frozenset({"msclap-2023"})
# the share of windows on which the model runs with the change gate on: 1,049 of 3,596 on
# the busy-home stream of README "Cost per hour" (110 sounds an hour)
GATE_RUN_SHARE = 0.30


@dataclass(frozen=True)
class Choice:
    preset: str
    reason: str
    estimates: dict[str, float]  # preset -> estimated % of the machine


def estimate_pct(preset: str, gflops_one_thread: float, hop_s: float, ncpu: int, gate: bool = True) -> float:
    """The estimated share of the whole machine (%) the preset's encoder takes at ``hop_s``."""
    c = PRESET_COST[preset]
    floor_s = c["gflop"] / gflops_one_thread  # one window's work at one core's rate
    share = floor_s * c["over_floor"] / hop_s / max(ncpu, 1)
    return 100.0 * share * (GATE_RUN_SHARE if gate else 1.0)


def choose(
    budget_pct: float,
    gflops_one_thread: float,
    hop_s: float,
    ncpu: int | None = None,
    gate: bool = True,
    present: frozenset[str] | set[str] = frozenset(),
) -> Choice:
    """The most accurate preset whose estimate fits ``budget_pct`` (the cheapest when none does);
    an export-only model (``EXPORT_ONLY``) is a candidate when it is in ``present``."""
    n = ncpu or os.cpu_count() or 1
    candidates = [p for p in PRESET_COST if p not in EXPORT_ONLY or p in present]
    est = {p: round(estimate_pct(p, gflops_one_thread, hop_s, n, gate), 1) for p in candidates}
    by_accuracy = sorted(candidates, key=lambda p: -PRESET_COST[p]["esc50"])
    fits = [p for p in by_accuracy if est[p] <= budget_pct]
    where = (
        f"at a {hop_s:g} s hop{' with the change gate' if gate else ''} on {n} CPUs "
        f"({gflops_one_thread:.0f} GFLOP/s a core)"
    )
    listed = ", ".join(f"{p} ~{est[p]:g} %" for p in by_accuracy)
    if fits:
        p = fits[0]
        return Choice(p, f"budget {budget_pct:g} %: {p}, the most accurate that fits {where}: {listed}", est)
    p = min((k for k in est if k not in EXPORT_ONLY), key=lambda k: est[k])
    return Choice(p, f"budget {budget_pct:g} %: no preset fits {where} ({listed}); the cheapest, {p}", est)


def machine_rate(threads: int = 1) -> float:
    """This machine's fp32 matmul rate with one thread (GFLOP/s, median of a short run)."""
    import statistics

    from monitor.bench import matmul_gflops

    return float(statistics.median(matmul_gflops(threads, repeats=5, m=512)))


RateFn = Callable[[], float]


class BudgetCheck:
    """The estimate confirmed on the run itself: once ``after_s`` of real time has passed,
    the process's CPU share of the whole machine over that time, against the budget (said
    once; a share over budget says what to change)."""

    def __init__(
        self,
        budget_pct: float,
        preset: str,
        after_s: float = 60.0,
        clock: Callable[[], float] | None = None,
        cpu_clock: Callable[[], float] | None = None,
        ncpu: int | None = None,
    ):
        import time

        self.budget_pct, self.preset, self.after_s = budget_pct, preset, after_s
        self._clock = clock or time.monotonic
        self._cpu = cpu_clock or time.process_time
        self._ncpu = ncpu or os.cpu_count() or 1
        self._t0, self._c0 = self._clock(), self._cpu()
        self.done = False

    def poll(self) -> str | None:
        if self.done:
            return None
        wall = self._clock() - self._t0
        if wall < self.after_s:
            return None
        self.done = True
        pct = 100.0 * (self._cpu() - self._c0) / wall / self._ncpu
        msg = (
            f"budget check: the monitor used {pct:.1f} % of this machine over its first {wall:.0f} s "
            f"(budget {self.budget_pct:g} %, preset {self.preset})"
        )
        if pct > self.budget_pct:
            msg += (
                "; over budget: a lower model.cpu_budget_pct picks a cheaper preset, a longer stream.hop_s costs less"
            )
        return msg
