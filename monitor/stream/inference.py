"""Window inference: windows -> per-label scores.

The level gate (windows below ``gate_dbfs`` are not scored), the change gate (a window
whose sound has not changed reuses the last real scores: monitor/stream/change_gate.py), batches of
equal-length windows through the encoder that every source shares, and scoring against the
current labels (the scorer is swapped on a reload). The gate decides on what the event
rules say (each enabled label's off level, whether an event is open): the caller passes
that in, the stage reads no tracker."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from monitor.config import StreamConfig
from monitor.scoring import Scorer
from monitor.stream.change_gate import ChangeGate, WindowSig
from monitor.stream.shared_encoder import SharedEncoder
from monitor.types import Scores, Window

GateState = Callable[[], tuple[Mapping[str, float], bool]]  # -> (off level per enabled label, any event open)
Emit = Callable[[Scores], None]


def change_gate_of(cfg: StreamConfig) -> ChangeGate | None:
    return ChangeGate(cfg.change_gate) if cfg.change_gate.enabled else None


@dataclass
class InferenceStats:
    windows: int = 0  # scored (gated and reused included)
    gated: int = 0  # below the level gate
    reused: int = 0  # the change gate reused the last real scores (no model run)
    gate_ran: dict[str, int] = field(default_factory=dict)  # why the change gate let windows through
    inference_ms: float | None = None  # the model's time per window of the latest batch (None: not run yet)
    level_dbfs: float = -150.0
    stream_s: float = 0.0  # end of the latest window


class WindowInference:
    def __init__(self, encoder: SharedEncoder, scorer: Scorer, cfg: StreamConfig, name: str):
        self.encoder = encoder
        self.scorer = scorer
        self.gate_dbfs = cfg.gate_dbfs
        self.name = name
        self.change_gate = change_gate_of(cfg)
        self.stats = InferenceStats()
        self._last_vetoes: dict = {}

    def forget(self) -> None:
        """New labels or rules, or a gap: the next window runs the model."""
        self._last_vetoes = {}
        if self.change_gate is not None:
            self.change_gate.forget()

    def process(self, windows: list[Window], gate_state: GateState, emit: Emit) -> None:
        """Score ``windows`` in order and ``emit`` each one's scores (the caller tracks events
        between them: while quiet, each window is decided against the latest real run)."""
        gate = self.change_gate
        if gate is not None and len(windows) > 1 and gate.quiet(*gate_state()):
            for w in windows:
                self._batch([w], gate_state, emit)
            return
        self._batch(windows, gate_state, emit)

    def _batch(self, windows: list[Window], gate_state: GateState, emit: Emit) -> None:
        live = [w for w in windows if w.level_dbfs >= self.gate_dbfs]
        reuse, sigs = self._change_gate(live, gate_state)
        live = [w for w in live if w.index not in reuse]
        emb, ms = self._embed(live)
        labels = self.scorer.labels
        for w in windows:
            if w.index in reuse:
                values = tuple(float(reuse[w.index].get(n, 0.0)) for n in labels)
                self.stats.reused += 1
                last = self._last_vetoes
                sc = Scores(
                    w.index,
                    w.start_s,
                    w.end_s,
                    w.level_dbfs,
                    labels,
                    values,
                    source=self.name,
                    reused=True,
                    vetoes=last,
                )
                self._emit(sc, emit)
                continue
            gated = w.index not in emb
            vetoes: dict = {}
            if gated:
                values = tuple(0.0 for _ in labels)
                self.stats.gated += 1
            else:
                values, vetoes = self.scorer.score_window(emb[w.index])
                self._last_vetoes = vetoes  # a reused window is the same sound: the same vetoes
                if self.change_gate is not None:
                    self.change_gate.ran_on(sigs[w.index], w.start_s, labels, values)
            ms_w = 0.0 if gated else ms
            sc = Scores(
                w.index, w.start_s, w.end_s, w.level_dbfs, labels, values, gated, ms_w, self.name, vetoes=vetoes
            )
            self._emit(sc, emit)

    def _emit(self, sc: Scores, emit: Emit) -> None:
        st = self.stats
        st.windows += 1
        st.level_dbfs = sc.level_dbfs
        st.stream_s = sc.end_s
        if not sc.gated and not sc.reused:  # the model's time per window, when it ran
            st.inference_ms = sc.inference_ms
        emit(sc)

    def _embed(self, live: list[Window]) -> tuple[dict[int, np.ndarray], float]:
        """Embeddings of the windows that run (equal lengths in one batch; a short tail window
        on its own), and the model's time per window in ms."""
        if not live:
            return {}, 0.0
        t0 = time.perf_counter()
        by_len: dict[int, list[Window]] = {}
        for w in live:
            by_len.setdefault(w.samples.size, []).append(w)
        emb: dict[int, np.ndarray] = {}
        for group in by_len.values():
            for w, v in zip(group, self.encoder.embed(group, self.name)):
                emb[w.index] = v
        return emb, (time.perf_counter() - t0) * 1000.0 / len(live)

    def _change_gate(self, live: list[Window], gate_state: GateState) -> tuple[dict[int, dict], dict[int, WindowSig]]:
        """Which windows may reuse the last real scores ({index: scores}), and every live
        window's signature (the ones that run become the gate's reference)."""
        if self.change_gate is None or not live:
            return {}, {}
        off, any_open = gate_state()
        reuse: dict[int, dict] = {}
        sigs: dict[int, WindowSig] = {}
        for w in live:
            rate = w.sample_rate_hz
            sigs[w.index] = self.change_gate.signature_at(w.samples, rate, round(w.start_s * rate))
            got = self.change_gate.reuse(sigs[w.index], w.start_s, off, any_open)
            if got is not None:
                reuse[w.index] = got
        self.stats.gate_ran = dict(self.change_gate.why)
        return reuse, sigs
