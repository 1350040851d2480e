"""The one small interface every sink implements (jsonl, mqtt, terminal, clips, metrics).

The pipeline calls ``publish(event)`` for every event in ``seq`` order, ``on_scores(scores)``
for every window and ``set_labels(labels)`` when the label set changes; the service calls
``on_rules(rules)`` with the rules in force (start, reload, remote command), ``on_status``
with the run's numbers every few seconds, reads ``status()`` for the live view and /metrics,
and calls ``close()`` once at shutdown (after the final ``end`` events). A sink must never
block the pipeline for long: slow I/O goes to its own thread or a durable outbox.

Optional abilities are declared, not probed: ``wants_audio`` (the pipeline calls
``on_audio`` with the model-rate audio: clips) and ``takes_commands`` (the service attaches
the control plane's command handler with ``attach_commands``: MQTT; the web page next).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from monitor.types import Event, Scores

if TYPE_CHECKING:
    from monitor.runtime.control import CommandHandler, RulesInForce


@dataclass(frozen=True)
class SinkStatus:
    """A sink's state for the live view and /metrics."""

    state: str = "ok"
    backlog: int | None = None  # events waiting for delivery (None: this sink keeps no backlog)
    backlog_age_s: float = 0.0  # how long the oldest of them has waited
    rejected: int = 0  # events the receiver refused (they stay in the backlog)
    connected: bool | None = None  # None: not a connection

    def describe(self) -> str:
        text = self.state
        if self.backlog is not None:
            text += f", backlog {self.backlog}" + (f" ({self.backlog_age_s:.0f} s)" if self.backlog else "")
        return text


class Sink:
    name: str = "sink"
    wants_audio: bool = False  # on_audio is called (model-rate audio as it is windowed)
    takes_commands: bool = False  # attach_commands is called with the control plane's handler

    def publish(self, event: Event) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def on_status(self, snapshot: object) -> None:
        """The run's numbers (``monitor.runtime.metrics.Snapshot``) every few seconds; most sinks ignore them."""

    def annotate(self, event: Event) -> Event:
        """Add to an event before any sink publishes it (the clips sink: the clip's path)."""
        return event

    def on_scores(self, scores: Scores) -> None:
        """Per-window scores; most sinks ignore them."""

    def on_audio(self, start_s: float, samples: np.ndarray, sample_rate_hz: int) -> None:
        """Model-rate mono audio as it is windowed (stream time ``start_s``); only sinks
        that declare ``wants_audio`` (clips) receive it. Audio never leaves the device."""

    def set_labels(self, labels: Sequence[str]) -> None:
        """The active label names changed (start-up, hot reload)."""

    def on_rules(self, rules: RulesInForce) -> None:
        """The rules in force changed (start, reload, a remote command); most sinks ignore them."""

    def attach_commands(self, handler: CommandHandler) -> None:
        """Where this sink's remote commands go (only called when ``takes_commands``)."""

    def last_seq(self) -> int:
        """The highest event ``seq`` this sink holds from earlier runs (outbox, events file),
        so that numbering never repeats one; 0 when it keeps none."""
        return 0

    def status(self) -> SinkStatus:
        """Short status for the live view, logs and /metrics."""
        return SinkStatus()

    def close(self) -> None:
        """Flush and release resources; called once."""


class OpenLabels:
    """Which labels are ON: a label is ON while any source has an event of it open (with
    several sources one start is not undone by another source's end). Not thread-safe: the
    sink that owns it locks."""

    def __init__(self) -> None:
        self._open: dict[str, dict[str, str]] = {}  # label -> {event_id: source}

    def apply(self, event: Event) -> bool:
        """Take a start or end into account; True when ``event.label`` is ON afterwards."""
        ids = self._open.setdefault(event.label, {})
        if event.type == "start":
            ids[event.event_id] = event.source
        else:
            ids.pop(event.event_id, None)
        return bool(ids)

    def is_on(self, label: str) -> bool:
        return bool(self._open.get(label))

    def sources(self, label: str) -> set[str]:
        return set(self._open.get(label, {}).values())

    def keep(self, labels: Sequence[str]) -> None:
        """Forget labels that are no longer configured."""
        self._open = {lab: self._open[lab] for lab in labels if lab in self._open}
