"""Event tracker: per-label scores -> start/end events. Pure logic; time is passed in.

Per label: an event starts when the score is at or above ``threshold`` for ``min_windows``
consecutive windows and at least ``cooldown_s`` (stream time) has passed since the label's
last event ended; it ends when the score falls below ``threshold - hysteresis``, after
``max_event_s`` (a stuck sensor), or when the stream ends (``close_all``). After a forced
end the label must first fall below the off level before it can start again.

Stream times: ``start_s`` is the start of the first window of the run above threshold,
``end_s`` the end of the last window above the off level.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from monitor.config import EventsConfig, LabelConfig
from monitor.types import Event, Scores


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_utc(unix_s: float) -> str:
    """Unix seconds -> ISO 8601 UTC with milliseconds and "Z" (the events' time format)."""
    return datetime.fromtimestamp(unix_s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def lowest_threshold(hysteresis: float, step: float = 0.01) -> float:
    """The lowest threshold above 0 on a ``step`` grid that ``hysteresis`` allows (what the
    Home Assistant ``number`` entity announces as its ``min``)."""
    if hysteresis <= 0:
        return 0.0
    return round((math.floor(hysteresis / step + 1e-9) + 1) * step, 4)


@dataclass(frozen=True)
class LabelRule:
    threshold: float
    off_level: float
    min_windows: int
    cooldown_s: float
    max_event_s: float
    enabled: bool = True  # False (switched off over MQTT, or the device paused): no events
    hysteresis: float = 0.0  # threshold - off_level before clamping at 0 (a new threshold keeps it)

    def with_threshold(self, threshold: float) -> LabelRule:
        return replace(self, threshold=threshold, off_level=max(0.0, threshold - self.hysteresis))


def rules_for(labels: Sequence[LabelConfig], cfg: EventsConfig) -> dict[str, LabelRule]:
    out = {}
    for lab in labels:
        thr = cfg.threshold if lab.threshold is None else lab.threshold
        hyst = cfg.hysteresis if lab.hysteresis is None else lab.hysteresis
        out[lab.name] = LabelRule(
            threshold=thr,
            off_level=max(0.0, thr - hyst),
            min_windows=cfg.min_windows if lab.min_windows is None else lab.min_windows,
            cooldown_s=cfg.cooldown_s if lab.cooldown_s is None else lab.cooldown_s,
            max_event_s=cfg.max_event_s,
            hysteresis=hyst,
        )
    return out


@dataclass
class _LabelState:
    active: bool = False
    run: int = 0  # consecutive windows at/above threshold
    run_start_s: float = 0.0
    event_id: str = ""
    start_s: float = 0.0
    last_above_end_s: float = 0.0
    peak: float = 0.0
    last_end_s: float | None = None
    must_rearm: bool = False


class EventTracker:
    def __init__(
        self,
        rules: dict[str, LabelRule],
        *,
        device_id: str,
        source: str,
        model: str,
        next_seq: Callable[[], int],
        wall_clock: Callable[[], str] = utc_now_iso,
    ):
        self.rules = dict(rules)
        self.device_id = device_id
        self.source = source
        self.model = model
        self._next_seq = next_seq
        self._wall = wall_clock
        self._state = {name: _LabelState() for name in self.rules}
        # Unix time of stream time 0 (set by the pipeline from the first audio block): an
        # event's ``start_time`` is this + start_s; None: events carry no start_time
        self.origin_unix: float | None = None

    # -- queries ------------------------------------------------------------------
    def active_labels(self) -> list[str]:
        return [n for n, s in self._state.items() if s.active]

    def set_rules(self, rules: dict[str, LabelRule], end_s: float) -> list[Event]:
        """Replace the label rules (hot reload); removed labels' open events end now."""
        events = []
        for name in list(self._state):
            if name not in rules:
                st = self._state.pop(name)
                if st.active:
                    events.append(self._end(name, st, st.peak, st.last_above_end_s or end_s))
        for name, rule in rules.items():
            st = self._state.setdefault(name, _LabelState())
            if st.active and not rule.enabled:  # switched off: its open event ends now
                events.append(self._end(name, st, st.peak, st.last_above_end_s or end_s))
        self.rules = dict(rules)
        return events

    # -- transitions ----------------------------------------------------------------
    def _event(self, kind: str, name: str, st: _LabelState, score: float, end_s: float | None) -> Event:
        return Event(
            type=kind,  # type: ignore[arg-type]
            event_id=st.event_id,
            seq=self._next_seq(),
            label=name,
            score=round(float(score), 6),
            peak_score=round(float(st.peak), 6),
            start_s=round(st.start_s, 6),
            end_s=None if end_s is None else round(end_s, 6),
            duration_s=None if end_s is None else round(end_s - st.start_s, 6),
            wall_time=self._wall(),
            device_id=self.device_id,
            source=self.source,
            model=self.model,
            start_time=None if self.origin_unix is None else iso_utc(self.origin_unix + st.start_s),
        )

    def _end(self, name: str, st: _LabelState, score: float, end_s: float) -> Event:
        ev = self._event("end", name, st, score, max(end_s, st.start_s))
        st.active = False
        st.run = 0
        st.last_end_s = end_s
        return ev

    def update(self, scores: Scores) -> list[Event]:
        events: list[Event] = []
        values = scores.as_dict()
        for name, rule in self.rules.items():
            st = self._state[name]
            if not rule.enabled:
                st.run = 0
                continue
            s = float(values.get(name, 0.0))
            if st.active:
                if s >= rule.off_level:
                    st.peak = max(st.peak, s)
                    st.last_above_end_s = scores.end_s
                    if scores.end_s - st.start_s >= rule.max_event_s:
                        events.append(self._end(name, st, s, scores.end_s))
                        st.must_rearm = True
                else:
                    events.append(self._end(name, st, s, st.last_above_end_s))
                continue
            if st.must_rearm:
                if s < rule.off_level:
                    st.must_rearm = False
                else:
                    continue
            if s >= rule.threshold:
                if not self.cooled(name, scores.start_s):
                    # a window that begins before the last end + cooldown never counts: the
                    # next event's start_s (its run's first window) cannot lie in the last one
                    st.run = 0
                    continue
                if st.run == 0:
                    st.run_start_s = scores.start_s
                st.run += 1
                if st.run >= rule.min_windows:
                    st.active = True
                    st.event_id = uuid.uuid4().hex
                    st.start_s = st.run_start_s
                    st.peak = s
                    st.last_above_end_s = scores.end_s
                    events.append(self._event("start", name, st, s, None))
            else:
                st.run = 0
        return events

    def cooled(self, name: str, start_s: float) -> bool:
        """Whether a window starting at ``start_s`` is past the label's last end + cooldown."""
        st, rule = self._state[name], self.rules[name]
        return st.last_end_s is None or start_s >= st.last_end_s + rule.cooldown_s

    def close_all(self) -> list[Event]:
        """End every open event (stream end, source lost, shutdown) at its last window above,
        and forget every label's run of windows above threshold: audio after a gap never
        completes a run that began before it."""
        ends = [self._end(name, st, st.peak, st.last_above_end_s) for name, st in self._state.items() if st.active]
        for st in self._state.values():
            st.run = 0
        return ends
