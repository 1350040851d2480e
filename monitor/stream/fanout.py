"""The sink fan-out: events and per-window scores to every sink, in order, under the run's
output lock (assigning ``seq`` and handing an event to the sinks is one step across
sources). One sink's failure is logged (scores: once per sink) and never stops the rest."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from monitor.sinks.base import Sink
from monitor.types import Event, Scores

log = logging.getLogger("monitor.stream.pipeline")


def publish_to(sinks: Sequence[Sink], ev: Event) -> None:
    """Hand an event to every sink; one sink's failure is logged and does not stop the rest.
    Sinks that add to an event (the clips sink names the clip it will write) do so first,
    so that every sink gets the same event."""
    for s in sinks:
        try:
            ev = s.annotate(ev)
        except Exception as e:  # noqa: BLE001 - one sink's failure must not stop the rest
            log.error("sink %s failed to annotate event %s: %s", s.name, ev.seq, e)
    for s in sinks:
        try:
            s.publish(ev)
        except Exception as e:  # noqa: BLE001 - one sink's failure must not stop the rest
            log.error("sink %s failed to publish event %s: %s", s.name, ev.seq, e)


def close_sinks(sinks: Sequence[Sink]) -> None:
    """Close every sink once (after the last event); one failing sink does not stop the rest."""
    for s in sinks:
        try:
            s.close()
        except Exception as e:  # noqa: BLE001 - one failing sink must not keep the rest open
            log.error("sink %s failed to close: %s", s.name, e)


@dataclass
class FanoutStats:
    events: int = 0  # start and end messages
    started: int = 0


class SinkFanout:
    def __init__(self, sinks: Sequence[Sink], out_lock: threading.RLock):
        self.sinks = list(sinks)
        self.lock = out_lock
        self.stats = FanoutStats()
        self._failed_scores: set[str] = set()

    @property
    def audio_sinks(self) -> list[Sink]:
        return [s for s in self.sinks if s.wants_audio]

    def event(self, ev: Event) -> None:
        """One event to every sink (call with ``lock`` held, with the step that made it)."""
        self.stats.events += 1
        if ev.type == "start":
            self.stats.started += 1
        publish_to(self.sinks, ev)

    def scores(self, sc: Scores) -> None:
        for s in self.sinks:
            try:
                s.on_scores(sc)
            except Exception as e:  # noqa: BLE001 - a failing sink must not stop monitoring
                if s.name not in self._failed_scores:
                    log.error("sink %s failed on scores (reported once): %s", s.name, e)
                    self._failed_scores.add(s.name)

    def labels(self, labels: Sequence[str]) -> None:
        for s in self.sinks:
            try:
                s.set_labels(list(labels))
            except Exception as e:  # noqa: BLE001 - one failing sink must not stop a reload
                log.error("sink %s failed to change labels: %s", s.name, e)
