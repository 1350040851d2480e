"""Event tracker: per-label scores -> start/end events. Pure logic; time is passed in.

Per label: a window is *on* when its score is at or above ``threshold``, no veto beats the
label in it (monitor/scoring.py) and it begins at least ``cooldown_s`` (stream time) after
the label's last event ended. An event starts when ``min_windows`` of the last
``within_windows`` windows are on (k-of-n confirmation; by default ``within_windows`` =
``min_windows``: that many in a row); it ends when the score falls below ``threshold -
hysteresis``, after ``max_event_s`` (a stuck sensor), or when the stream ends
(``close_all``). After a forced end the label must first fall below the off level before it
can start again.

Stream times: ``start_s`` is the start of the first on window of those that confirmed it,
``end_s`` the end of the last window above the off level.

Why not: after each window ``held`` says, for each label at or above its threshold that did
not start or continue an event, why: ``veto:<name>``, ``confirming 1/2``, ``cooldown``,
``paused``, ``switched off``, ``below gate`` (the window was below the level gate after one
at or above the threshold), ``re-arming`` (after ``max_event_s``, until it falls below the
off level).
"""

from __future__ import annotations

import collections
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
    within_windows: int = 0  # k-of-n confirmation: min_windows of the last within_windows (0: = min_windows)
    off_reason: str = ""  # why not enabled: "paused" or "switched off"

    @property
    def window_span(self) -> int:
        return max(self.min_windows, self.within_windows)

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
            within_windows=lab.within_windows or cfg.within_windows or 0,
        )
    return out


@dataclass
class _LabelState:
    active: bool = False
    # the last within_windows windows: (start_s, on) -- the k-of-n confirmation
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=1))
    last_on: bool = False  # the last scored (not gated) window was at or above the threshold
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
        self._state = {name: self._new_state(rule) for name, rule in self.rules.items()}
        self.held: dict[str, str] = {}  # after each update: why labels at/above threshold did not fire
        # Unix time of stream time 0 (set by the pipeline from the first audio block): an
        # event's ``start_time`` is this + start_s; None: events carry no start_time
        self.origin_unix: float | None = None

    @staticmethod
    def _new_state(rule: LabelRule) -> _LabelState:
        st = _LabelState()
        st.recent = collections.deque(maxlen=rule.window_span)
        return st

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
            st = self._state.setdefault(name, self._new_state(rule))
            if st.recent.maxlen != rule.window_span:
                st.recent = collections.deque(st.recent, maxlen=rule.window_span)
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
        st.recent.clear()
        st.last_end_s = end_s
        return ev

    def update(self, scores: Scores) -> list[Event]:
        events: list[Event] = []
        self.held = {}
        values = scores.as_dict()
        for name, rule in self.rules.items():
            st = self._state[name]
            s = float(values.get(name, 0.0))
            was_on, st.last_on = st.last_on, (st.last_on if scores.gated else s >= rule.threshold)
            if not rule.enabled:
                st.recent.clear()
                if s >= rule.threshold:
                    self.held[name] = rule.off_reason or "switched off"
                continue
            if st.active:
                if s >= rule.off_level:
                    st.peak = max(st.peak, s)
                    st.last_above_end_s = scores.end_s
                    if scores.end_s - st.start_s >= rule.max_event_s:
                        events.append(self._end(name, st, s, scores.end_s))
                        st.must_rearm = True
                else:
                    events.append(self._end(name, st, s, st.last_above_end_s))
                    if scores.gated and was_on:  # the sound went under the level gate
                        self.held[name] = "below gate"
                continue
            if st.must_rearm:
                if s < rule.off_level:
                    st.must_rearm = False
                else:
                    if s >= rule.threshold:
                        self.held[name] = "re-arming"
                    continue
            started = self._count(name, rule, st, scores, s, was_on)
            if started is not None:
                events.append(started)
        return events

    def _count(
        self, name: str, rule: LabelRule, st: _LabelState, scores: Scores, s: float, was_on: bool
    ) -> Event | None:
        """The window in the label's k-of-n confirmation; the start event when it confirms."""
        check = scores.vetoes.get(name)
        if scores.gated:
            st.recent.append((scores.start_s, False))
            if was_on:
                self.held[name] = "below gate"
            return None
        if s < rule.threshold or (check is not None and check.beats):
            st.recent.append((scores.start_s, False))
            if check is not None and check.raw >= rule.threshold:
                self.held[name] = f"veto:{check.veto}"
            return None
        if not self.cooled(name, scores.start_s):
            # a window that begins before the last end + cooldown never counts: the next
            # event's start_s (its first on window) cannot lie in the last one
            st.recent.clear()
            self.held[name] = "cooldown"
            return None
        st.recent.append((scores.start_s, True))
        on = [t for t, is_on in st.recent if is_on]
        if len(on) < rule.min_windows:
            self.held[name] = f"confirming {len(on)}/{rule.min_windows}"
            return None
        st.active = True
        st.event_id = uuid.uuid4().hex
        st.start_s = on[0]
        st.peak = s
        st.last_above_end_s = scores.end_s
        return self._event("start", name, st, s, None)

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
            st.recent.clear()
            st.last_on = False
        return ends
