"""Terminal output: a rich live view on a TTY, plain log lines otherwise.

The view is drawn from a ``ViewState`` snapshot, so ``render(state)`` can be printed to a
recording Console in tests. rich is imported only here. Plain lines (events, a status line
every few seconds) go through the ``sound-monitor`` logger, in the one log format; under the
live view every log line is printed above it (monitor/logs.py), so nothing breaks it. With
more labels than the terminal has rows, the view shows the highest-scoring ones (active
first) and says how many are left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from monitor.logs import NAME, under_live
from monitor.sinks.base import OpenLabels, Sink
from monitor.types import Event, Scores

if TYPE_CHECKING:
    from monitor.runtime.control import RulesInForce


@dataclass
class ViewState:
    model: str = ""
    source: str = ""
    labels: tuple[str, ...] = ()
    thresholds: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    active: set = field(default_factory=set)
    level_dbfs: float = -150.0
    gate_dbfs: float = -70.0
    inference_ms: float = 0.0
    windows: int = 0
    reused: int = 0  # windows the change gate answered without the model
    dropped_windows: int = 0
    dropped_frames: int = 0
    stream_s: float = 0.0
    sinks: dict = field(default_factory=dict)
    recent: list = field(default_factory=list)  # last few event lines
    demo: bool = False
    source_status: str = "ok"  # ok | stalled | retrying | silent | lost ... (monitor/stream/supervise.py)
    # several sources: name -> {"scores": {...}, "level_dbfs": x, "stream_s": t}
    by_source: dict = field(default_factory=dict)
    active_sources: dict = field(default_factory=dict)  # label -> sources with it open
    paused: bool = False  # the device's detection switch is off (no events at all)
    switched_off: frozenset = frozenset()  # labels whose own switch is off
    held: dict = field(default_factory=dict)  # label -> why it is at/above its threshold but did not fire


def _bar(value: float, threshold: float, width: int = 30) -> str:
    n = max(0, min(width, int(round(value * width))))
    mark = max(0, min(width - 1, int(round(threshold * width))))
    cells = ["█" if i < n else "·" for i in range(width)]
    cells[mark] = "|"
    return "".join(cells)


FIXED_ROWS = 12  # panel border, title, header, level/status lines, recent-events heading


def _label_table(state: ViewState, height: int | None) -> tuple[Any, int]:
    """A row per label (score per source, bar with the threshold mark, ACTIVE / switched off
    / paused); with more labels than rows, the highest-scoring ones (active first). -> (table,
    how many recent events fit below it)."""
    from rich.table import Table
    from rich.text import Text

    several = len(state.by_source) > 1
    names = sorted(state.by_source)
    t = Table(expand=False, box=None, pad_edge=False)
    t.add_column("label")
    for name in names if several else ["score"]:
        t.add_column(name[:24], justify="right")
    t.add_column("bar (| = threshold)")
    t.add_column("")
    n_recent = 5
    labels = list(state.labels)
    hidden = 0
    if height is not None:
        room = max(1, height - FIXED_ROWS - n_recent - (len(state.by_source) if several else 0))
        if len(labels) > room:
            n_recent = max(1, min(n_recent, height - FIXED_ROWS - 4))
            room = max(1, height - FIXED_ROWS - n_recent - 1 - (len(state.by_source) if several else 0))

            def score(lab: str) -> float:
                if several:
                    return max(float(state.by_source[n]["scores"].get(lab, 0.0)) for n in names)
                return float(state.scores.get(lab, 0.0))

            keep = set(sorted(labels, key=lambda lab: (lab not in state.active, -score(lab)))[:room])
            hidden = len(labels) - len(keep)
            labels = [lab for lab in labels if lab in keep]
    for lab in labels:
        if several:
            per = [float(state.by_source[n]["scores"].get(lab, 0.0)) for n in names]
            s = max(per)
            cells = [f"{v:.2f}" for v in per]
        else:
            s = float(state.scores.get(lab, 0.0))
            cells = [f"{s:.2f}"]
        thr = float(state.thresholds.get(lab, 0.5))
        on = lab in state.active
        style = "bold red" if on else ("yellow" if s >= thr else "")
        mark = "● ACTIVE"
        if on and several and state.active_sources.get(lab):
            mark += " (" + ", ".join(sorted(state.active_sources[lab])) + ")"
        if on:
            note = Text(mark, style="bold red")
        elif lab in state.switched_off or state.paused:
            note = Text("switched off" if lab in state.switched_off else "paused", style="dim")
        elif lab in state.held:
            note = Text(f"held: {state.held[lab]}", style="yellow")
        else:
            note = Text("")
        t.add_row(Text(lab, style=style), *cells, Text(_bar(s, thr), style=style), note)
    if hidden:
        t.add_row(Text(f"… {hidden} more label(s) below these scores", style="dim"))
    return t, n_recent


def render(state: ViewState, height: int | None = None) -> Any:
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    title = (
        f"sound-monitor — {state.model} — {state.source}"
        + ("  [DEMO RECORDING]" if state.demo else "")
        + ("  [PAUSED: no events]" if state.paused else "")
    )
    several = len(state.by_source) > 1
    names = sorted(state.by_source)
    t, n_recent = _label_table(state, height)
    if several:
        lines = []
        for n in names:
            d = state.by_source[n]
            lvl = max(-90.0, min(0.0, d["level_dbfs"]))
            meter = _bar((lvl + 90.0) / 90.0, (state.gate_dbfs + 90.0) / 90.0, 20)
            lines.append(f"{n[:24]:<24} level {d['level_dbfs']:6.1f} dBFS {meter}  t={d['stream_s']:8.1f} s")
        levels = "\n".join(lines) + f"\ngate {state.gate_dbfs:.0f} dBFS\n"
    else:
        lvl = max(-90.0, min(0.0, state.level_dbfs))
        meter = _bar((lvl + 90.0) / 90.0, (state.gate_dbfs + 90.0) / 90.0, 30)
        levels = f"level {state.level_dbfs:6.1f} dBFS {meter}  gate {state.gate_dbfs:.0f}\n"
    info = Text(
        levels
        + f"t={state.stream_s:8.1f} s  windows {state.windows}"
        + (f" ({state.reused} reused)" if state.reused else "")
        + f"  inference {state.inference_ms:6.1f} ms/window  "
        f"dropped windows {state.dropped_windows}  dropped samples {state.dropped_frames}\n"
        + f"source: {state.source_status}  "
        + "sinks: "
        + ", ".join(f"{k}: {v}" for k, v in state.sinks.items())
    )
    recent = Text("\n".join(state.recent[-n_recent:]) or "no events yet")
    return Panel(Group(t, info, Text("recent events:", style="bold"), recent), title=title)


def format_event(ev: Event) -> str:
    if ev.type == "start":
        return f"START {ev.label!r} at {ev.start_s:.1f} s (score {ev.score:.2f})"
    if ev.end_s is None:  # ended on the next start after a crash
        return f"END   {ev.label!r} from {ev.start_s:.1f} s ({ev.reason or 'ended'}; peak {ev.peak_score:.2f})"
    return f"END   {ev.label!r} {ev.start_s:.1f}–{ev.end_s:.1f} s ({ev.duration_s:.1f} s, peak {ev.peak_score:.2f})"


class TerminalSink(Sink):
    """Keeps the view state; ``live=True`` draws it with rich.Live, else logs plain lines."""

    name = "terminal"

    def __init__(self, state: ViewState, *, live: bool, status_every_s: float = 10.0, stream: TextIO | None = None):
        import sys

        self.state = state
        self.live = live
        self._stream = stream or sys.stderr  # the live view's terminal
        self._log = logging.getLogger(NAME)
        self._every = status_every_s
        self._last_status: dict[str, float] = {}
        self._lock = threading.Lock()
        self._live = None
        self._open = OpenLabels()

    def publish(self, event: Event) -> None:
        line = format_event(event)
        if event.source and len(self.state.by_source) > 1:
            line += f" [{event.source}]"
        with self._lock:
            if self._open.apply(event):
                self.state.active.add(event.label)
            else:
                self.state.active.discard(event.label)
            self.state.active_sources[event.label] = self._open.sources(event.label)
            self.state.recent.append(f"{event.wall_time[11:19]}Z {line}")
            del self.state.recent[:-20]
        if not self.live:
            self._log.info("%s", line)

    def on_scores(self, scores: Scores) -> None:
        with self._lock:
            self.state.scores = scores.as_dict()
            self.state.held = dict(scores.held)
            if scores.source:
                self.state.by_source[scores.source] = {
                    "scores": self.state.scores,
                    "level_dbfs": scores.level_dbfs,
                    "stream_s": scores.end_s,
                }
            self.state.level_dbfs = scores.level_dbfs
            self.state.stream_s = scores.end_s
            self.state.windows += 1
            if scores.reused:
                self.state.reused += 1
            elif not scores.gated:
                self.state.inference_ms = scores.inference_ms
        now = time.monotonic()
        last = self._last_status.get(scores.source, 0.0)  # one status line per source every _every s
        if not self.live and now - last >= self._every:
            self._last_status[scores.source] = now
            top = sorted(self.state.scores.items(), key=lambda kv: -kv[1])[:3]
            tops = ", ".join(f"{k} {v:.2f}" for k, v in top)
            who = f"[{scores.source}] " if len(self.state.by_source) > 1 else ""
            held = "; held: " + ", ".join(f"{k} ({v})" for k, v in scores.held.items()) if scores.held else ""
            self._log.info(
                "%st=%.1fs level %.1f dBFS%s top: %s%s%s",
                who,
                scores.end_s,
                scores.level_dbfs,
                " (gated)" if scores.gated else " (reused)" if scores.reused else "",
                tops,
                held,
                " [PAUSED: no events]" if self.state.paused else "",
            )

    # -- the only writers of the view state besides publish/on_scores (all under the lock) --
    def on_rules(self, rules: RulesInForce) -> None:
        """The label set, thresholds and switches in force (start, hot reload, remote control)."""
        with self._lock:
            self.state.labels = tuple(rules.labels)
            self.state.thresholds = rules.thresholds()
            self.state.active &= set(rules.labels)
            self.state.switched_off = frozenset(rules.switched_off())
            self.state.paused = not rules.detection_enabled

    def set_status(self, **fields: object) -> None:
        """One snapshot of run status (dropped windows/samples, sinks, source) for the view."""
        with self._lock:
            for k, v in fields.items():
                setattr(self.state, k, v)

    def run_live(self, refresh: Callable[[], None], done: threading.Event) -> None:
        """Draw the live view until ``done`` is set (called on the main thread); ``refresh``
        is called before each frame (it reports status through ``set_status``)."""
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self._stream)
        with (
            Live(
                render(self.state, console.size.height), console=console, refresh_per_second=4, transient=False
            ) as live,
            under_live(live.console),
        ):
            while not done.wait(0.25):
                refresh()
                with self._lock:
                    live.update(render(self.state, live.console.size.height))
            refresh()
            with self._lock:
                live.update(render(self.state, live.console.size.height))
