"""The one small interface every sink implements (jsonl, mqtt, terminal, clips).

The pipeline calls ``publish(event)`` for every event in ``seq`` order, optionally
``on_scores(scores)`` for every window, ``on_audio(...)`` for the audio itself, ``set_labels(labels)`` when the label set changes,
reads ``status()`` for the live view and calls ``close()`` once at shutdown (after the
final ``end`` events). A sink must never block the pipeline for long: slow I/O goes to its
own thread or a durable outbox.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from monitor.types import Event, Scores


class Sink:
    name: str = "sink"

    def publish(self, event: Event) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def on_status(self, snapshot: object) -> None:
        """The run's numbers (``monitor.metrics.Snapshot``) every few seconds; most sinks ignore them."""

    def annotate(self, event: Event) -> Event:
        """Add to an event before any sink publishes it (the clips sink: the clip's path)."""
        return event

    def on_scores(self, scores: Scores) -> None:
        """Per-window scores; most sinks ignore them."""

    def on_audio(self, start_s: float, samples: np.ndarray, sample_rate_hz: int) -> None:
        """Model-rate mono audio as it is windowed (stream time ``start_s``); only sinks
        that override this (clips) receive it. Audio never leaves the device."""

    def set_labels(self, labels: Sequence[str]) -> None:
        """The active label names changed (start-up, hot reload)."""

    def last_seq(self) -> int:
        """The highest event ``seq`` this sink holds from earlier runs (outbox, events file),
        so that numbering never repeats one; 0 when it keeps none."""
        return 0

    def status(self) -> dict:
        """Short status for the live view and logs, e.g. {"state": "connected", "backlog": 0}."""
        return {"state": "ok"}

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
