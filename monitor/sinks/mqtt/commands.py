"""Commands over MQTT: a ``…/set`` topic and its payload become a ``Command`` for the control
plane (monitor/runtime/control.py), which validates, keeps and applies it. Retained commands are
stale and ignored (values come from the state dir). Refusals are logged at most once a
minute per kind of command, with the count of those in between: a flood costs neither
memory nor log lines."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from monitor.logs import Throttle, held_note
from monitor.runtime.control import Command, CommandHandler
from monitor.topics import Topics

log = logging.getLogger("monitor.sinks.mqtt")


class CommandRouter:
    def __init__(self, topics: Topics, enabled: bool, label_of: Callable[[str], str | None]):
        self.topics = topics
        self.enabled = enabled  # mqtt.control
        self._label_of = label_of
        self.handler: CommandHandler | None = None
        self._refusals = Throttle(60.0)

    @property
    def filters(self) -> tuple[str, ...]:
        """The topics to subscribe (none with remote control off)."""
        return self.topics.command_filters if self.enabled else ()

    def route(self, msg: Any) -> bool:
        """Handle ``msg`` when it is a command topic (True), else leave it (False)."""
        cmd = self.topics.command_of(msg.topic)
        if cmd is None:
            return False
        if msg.retain:  # a retained command is stale: values come from the state dir
            return True
        kind, slug = cmd
        label = self._label_of(slug) if slug else None
        if slug and label is None:
            self._refuse(kind, msg.topic, "no such label on this device")
            return True
        handler = self.handler
        if handler is None:
            why = "the monitor is still starting" if self.enabled else "remote control is off (mqtt.control: false)"
            self._refuse(kind, msg.topic, why)
            return True
        try:
            problem = handler(Command(kind, label, bytes(msg.payload), via="MQTT"))  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - a command must never take the network thread down
            problem = f"{type(e).__name__}: {e}"
        if problem:
            self._refuse(kind, msg.topic, problem)
        return True

    def _refuse(self, kind: str, topic: str, why: str) -> None:
        held = self._refusals.take(kind)
        if held is not None:
            log.warning("MQTT command on %s ignored: %s%s", topic, why, held_note(held, self._refusals.interval_s))
