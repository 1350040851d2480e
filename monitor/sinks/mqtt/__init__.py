"""MQTT sink with Home Assistant discovery and a durable outbox, split by job:

- ``connection``: the paho client, credentials, TLS, backoff with jitter, why a connection
  fails (paho is imported there only);
- ``delivery``: the SQLite outbox and the pump that publishes it in ``seq`` order, PUBACKs,
  refusals, the drain at close;
- ``homeassistant``: discovery, retained label topics, event entities, sensors, the
  announcement on every connection, stale-topic clearing;
- ``commands``: ``…/set`` topics → ``Command`` for the control plane.

``MqttSink`` wires them and is the ``Sink`` the service sees. Passwords come from an
environment variable or a file, never from the config text, and are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor.config import MQTTConfig
from monitor.outbox import Outbox
from monitor.runtime.state import state_file
from monitor.sinks.base import Sink, SinkStatus
from monitor.sinks.mqtt.commands import CommandRouter
from monitor.sinks.mqtt.connection import Connection, diagnose, parse_mqtt_url, read_password
from monitor.sinks.mqtt.delivery import Delivery
from monitor.sinks.mqtt.homeassistant import HomeAssistant
from monitor.topics import Topics
from monitor.types import Event, Scores

if TYPE_CHECKING:
    from monitor.runtime.control import CommandHandler, RulesInForce

__all__ = ["MqttSink", "diagnose", "parse_mqtt_url", "read_password"]

log = logging.getLogger(__name__)


class MqttSink(Sink):
    name = "mqtt"

    def __init__(
        self,
        cfg: MQTTConfig,
        *,
        device_id: str,
        labels: Sequence[str],
        state_dir: Path,
        model_name: str,
        source_name: str,
    ):
        self.cfg = cfg
        self.topics = Topics(cfg.prefix, device_id, cfg.discovery_prefix)
        self.source_name = source_name
        self.takes_commands = cfg.control
        outbox = Outbox(state_file(state_dir, "outbox", device_id, ".sqlite3"))
        self.delivery = Delivery(outbox, self.topics.events, f"{cfg.host}:{cfg.port}")
        known = state_file(state_dir, "discovery", device_id, ".json")
        self.ha = HomeAssistant(cfg, self.topics, model_name, known, self.delivery.send)
        self.commands = CommandRouter(self.topics, cfg.control, self.ha.label_of)
        self.conn = Connection(
            cfg,
            client_id=cfg.client_id or f"sound-monitor-{self.topics.dev}",
            will_topic=self.topics.availability,
            on_up=self._on_up,
            on_down=self._on_down,
            on_message=self._on_message,
            on_publish=self.delivery.on_publish,
        )
        self.conn.waiting = outbox.size
        self.ha.set_labels(labels)
        self.delivery.start(self.conn.publish)
        self.conn.start()

    @classmethod
    def from_config(
        cls,
        mqtt_cfg: MQTTConfig,
        *,
        device_id: str,
        labels: Sequence[str],
        state_dir: Path,
        model_name: str,
        source_name: str,
    ) -> MqttSink:
        return cls(
            mqtt_cfg,
            device_id=device_id,
            labels=labels,
            state_dir=state_dir,
            model_name=model_name,
            source_name=source_name,
        )

    # -- the connection's events (network thread) ------------------------------------------
    def _on_up(self) -> None:
        if self.cfg.discovery:
            self.conn.subscribe(self.topics.ha_status)
        for f in self.commands.filters:
            self.conn.subscribe(f)
        self.ha.announce()
        self.ha.clear_stale()
        self.delivery.connected(True)

    def _on_down(self) -> None:
        self.ha.connection_lost()
        self.delivery.connected(False)

    def _on_message(self, msg: Any) -> None:
        if msg.topic == self.topics.ha_status:
            if msg.payload == b"online":
                self.ha.rediscover()
            return
        self.commands.route(msg)

    # -- the Sink interface --------------------------------------------------------------
    def publish(self, event: Event) -> None:
        self.delivery.add(event.seq, event.to_json())
        self.ha.event(event)

    def on_scores(self, scores: Scores) -> None:
        self.ha.scores(scores, self.conn.connected)

    def on_status(self, snapshot: Any) -> None:
        self.ha.diagnostics(snapshot, self.delivery.outbox.size(), self.conn.connected)

    def set_labels(self, labels: Sequence[str]) -> None:
        if self.ha.set_labels(labels):
            self.ha.clear_stale()

    def on_rules(self, rules: RulesInForce) -> None:
        self.ha.on_rules(rules)

    def attach_commands(self, handler: CommandHandler) -> None:
        self.commands.handler = handler

    def last_seq(self) -> int:
        return self.delivery.outbox.high_seq

    @property
    def rejected(self) -> int:
        return self.delivery.rejected

    def status(self) -> SinkStatus:
        state = self.conn.state
        outbox = self.delivery.outbox
        if outbox.in_memory:
            state += f"; outbox not writable, {outbox.in_memory} event(s) in memory"
        if self.delivery.rejected:
            state += f"; {self.delivery.rejected} event(s) rejected by the broker"
        return SinkStatus(
            state,
            backlog=outbox.size(),
            backlog_age_s=round(outbox.oldest_age_s(), 1),
            rejected=self.delivery.rejected,
            connected=self.conn.connected,
        )

    def close(self, timeout_s: float = 5.0) -> None:
        self.delivery.drain(timeout_s, lambda: self.conn.connected)
        self.delivery.stop()
        try:
            self.conn.close(goodbye=(self.topics.availability, "offline"))
        finally:
            self.delivery.close()
