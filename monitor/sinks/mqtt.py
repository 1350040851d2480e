"""MQTT sink (paho-mqtt, v2 callback API) with Home Assistant discovery and a durable outbox.

Every event goes to the SQLite outbox first; a pump thread publishes outbox entries in
``seq`` order (QoS 1) while connected, and an entry leaves the outbox only on its PUBACK.
paho itself re-sends messages that were in flight when a connection dropped, so after a
reconnect the pump simply continues after the last entry it handed to paho; after a
restart it starts from the oldest entry. Reconnects use exponential backoff with jitter.
A refused connection (bad credentials, not authorised) is reported as such.

Passwords come from an environment variable or a file, never from the config text, and
are never logged. paho is imported only here.
"""

from __future__ import annotations

import json
import logging
import os
import random
import ssl
import threading
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from monitor import __version__
from monitor.config import MQTTConfig
from monitor.errors import UserError
from monitor.outbox import Outbox
from monitor.sinks.base import Sink
from monitor.topics import Topics, label_slugs
from monitor.types import Event, Scores

log = logging.getLogger(__name__)


def parse_mqtt_url(url: str) -> dict:
    """``mqtt://[user@]host[:port]`` / ``mqtts://...`` -> dotted config overrides."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise UserError(f"invalid MQTT URL {url!r}: {e}") from None
    if u.scheme not in ("mqtt", "mqtts"):
        raise UserError(f"invalid MQTT URL {url!r}: use mqtt://host[:port] or mqtts://host[:port]")
    if not u.hostname:
        raise UserError(f"invalid MQTT URL {url!r}: no host")
    if u.password is not None:
        raise UserError("do not put the MQTT password in the URL: set SOUND_MONITOR_MQTT_PASSWORD "
                         "or mqtt.password_file")
    tls = u.scheme == "mqtts"
    ov = {"mqtt.host": u.hostname, "mqtt.port": port or (8883 if tls else 1883), "mqtt.tls.enabled": tls}
    if u.username:
        ov["mqtt.username"] = u.username
    return ov


def read_password(cfg: MQTTConfig) -> str | None:
    if cfg.password_file:
        try:
            return Path(cfg.password_file).expanduser().read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as e:
            raise UserError(f"cannot read the MQTT password file {cfg.password_file}: "
                            f"{e.strerror if isinstance(e, OSError) else 'empty file'}") from None
    if cfg.password_env:
        return os.environ.get(cfg.password_env) or None
    return None


class MqttSink(Sink):
    name = "mqtt"

    def __init__(self, cfg: MQTTConfig, *, device_id: str, labels: Sequence[str], state_dir: Path,
                 model_name: str, source_name: str):
        import paho.mqtt.client as mqtt

        self.cfg = cfg
        self.topics = Topics(cfg.prefix, device_id, cfg.discovery_prefix)
        self.model_name = model_name
        self.source_name = source_name
        self.outbox = Outbox(Path(state_dir) / f"outbox-{self.topics.dev}.sqlite3")
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._connected = False
        self._state = "connecting"
        self._closing = False
        self._mid_to_seq: dict[int, int] = {}
        self._last_handed = 0  # highest seq handed to paho in this connection's lifetime
        self._labels: list[str] = []
        self._slugs: dict[str, str] = {}
        # label -> event_ids of its open events: with several sources a label is ON while
        # any source has it open, OFF only when the last one ends
        self._open: dict[str, set[str]] = {}
        self._last_scores_t = 0.0
        self._refused_logged = False

        client_id = cfg.client_id or f"sound-monitor-{self.topics.dev}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.max_inflight_messages_set(20)
        self.client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        if cfg.username:
            self.client.username_pw_set(cfg.username, read_password(cfg))
        if cfg.tls.enabled:
            try:
                self.client.tls_set(
                    ca_certs=cfg.tls.ca_file, certfile=cfg.tls.cert_file, keyfile=cfg.tls.key_file,
                    cert_reqs=ssl.CERT_NONE if cfg.tls.insecure else ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError, ValueError) as e:
                raise UserError(f"MQTT TLS setup failed: {e}") from None
            if cfg.tls.insecure:
                log.warning("MQTT TLS certificate verification is OFF (mqtt.tls.insecure): the broker is not authenticated")
                self.client.tls_insecure_set(True)
        self.client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.set_labels(labels)
        self._pump_thread = threading.Thread(target=self._pump, name="mqtt-pump", daemon=True)
        self._pump_thread.start()
        backlog = self.outbox.size()
        if backlog:
            log.warning("MQTT outbox holds %d undelivered event(s) from before; they go first", backlog)
        try:
            self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot start MQTT connection to {cfg.host}:{cfg.port}: {e}") from None
        self.client.loop_start()

    @classmethod
    def from_config(cls, mqtt_cfg: MQTTConfig, *, device_id: str, labels: Sequence[str], state_dir: Path,
                    model_name: str, source_name: str) -> "MqttSink":
        return cls(mqtt_cfg, device_id=device_id, labels=labels, state_dir=state_dir,
                   model_name=model_name, source_name=source_name)

    # -- paho callbacks (network thread) -------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            with self._lock:
                self._connected = False
                self._state = f"refused: {reason_code}"
            if not self._refused_logged:
                log.error("MQTT broker %s:%s refused the connection: %s (check username/password and ACL)",
                          self.cfg.host, self.cfg.port, reason_code)
                self._refused_logged = True
            return
        self._refused_logged = False
        client.publish(self.topics.availability, "online", qos=1, retain=True)
        if self.cfg.discovery:
            client.subscribe(self.topics.ha_status, qos=1)
        self._publish_labels(client)
        with self._lock:
            self._connected = True
            self._state = "connected"
            self._wake.notify_all()
        log.info("MQTT connected to %s:%s", self.cfg.host, self.cfg.port)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._lock:
            self._connected = False
            if not self._state.startswith("refused"):
                self._state = "disconnected (retrying)"
        if not self._closing:
            log.warning("MQTT disconnected (%s); %d event(s) waiting in the outbox", reason_code, self.outbox.size())
            # jitter: spread the reconnects of many devices after a broker restart
            lo = self.cfg.reconnect_min_s
            client.reconnect_delay_set(lo * (1.0 + random.random()), self.cfg.reconnect_max_s)

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._lock:
            seq = self._mid_to_seq.pop(mid, None)
        if seq is not None and not getattr(reason_code, "is_failure", False):
            self.outbox.remove(seq)
            with self._lock:
                self._wake.notify_all()

    def _on_message(self, client, userdata, msg):
        if msg.topic == self.topics.ha_status and msg.payload == b"online":
            self._publish_labels(client, states=False)

    # -- publishing ----------------------------------------------------------------------------
    def _publish_labels(self, client, states: bool = True) -> None:
        with self._lock:
            labels = list(self._labels)
            slugs = dict(self._slugs)
            on = {lab: bool(ids) for lab, ids in self._open.items()}
        for lab in labels:
            s = slugs[lab]
            if self.cfg.discovery:
                payload = self.topics.discovery_payload(lab, s, self.model_name, __version__)
                client.publish(self.topics.discovery(s), json.dumps(payload), qos=1, retain=True)
            if states:
                client.publish(self.topics.state(s), "ON" if on.get(lab) else "OFF", qos=1, retain=True)

    def _pump(self) -> None:
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._closing or self._connected, timeout=1.0)
                if self._closing and self.outbox.size() == 0:
                    return
                connected = self._connected
                after = self._last_handed
            if not connected:
                if self._closing:
                    return
                continue
            rows = self.outbox.after(after, limit=50)
            if not rows:
                with self._lock:
                    self._wake.wait(timeout=0.5)
                    if self._closing:
                        return
                continue
            for seq, topic, payload in rows:
                info = self.client.publish(topic, payload, qos=1, retain=False)
                with self._lock:
                    self._mid_to_seq[info.mid] = seq
                    self._last_handed = seq

    def publish(self, event: Event) -> None:
        self.outbox.add(event.seq, self.topics.events, event.to_json())
        with self._lock:
            on = False
            if event.label in self._slugs:
                ids = self._open.setdefault(event.label, set())
                if event.type == "start":
                    ids.add(event.event_id)
                else:
                    ids.discard(event.event_id)
                on = bool(ids)
            slug = self._slugs.get(event.label)
            connected = self._connected
            self._wake.notify_all()
        if slug and connected:
            self.client.publish(self.topics.state(slug), "ON" if on else "OFF", qos=1, retain=True)

    def on_scores(self, scores: Scores) -> None:
        if not self.cfg.scores_interval_s or scores.gated:
            return
        now = time.monotonic()
        if now - self._last_scores_t < self.cfg.scores_interval_s:
            return
        self._last_scores_t = now
        if self._connected:
            self.client.publish(self.topics.scores, json.dumps({"t_s": scores.start_s, "scores": scores.as_dict()}), qos=0)

    def set_labels(self, labels: Sequence[str]) -> None:
        with self._lock:
            removed = [self._slugs[l] for l in self._labels if l not in labels]
            self._labels = list(labels)
            self._slugs = label_slugs(self._labels)
            self._open = {l: self._open.get(l, set()) for l in self._labels}
            connected = self._connected
        if connected:
            for s in removed:
                self.client.publish(self.topics.discovery(s), b"", qos=1, retain=True)
                self.client.publish(self.topics.state(s), b"", qos=1, retain=True)
            self._publish_labels(self.client)

    def last_seq(self) -> int:
        return self.outbox.high_seq

    def status(self) -> dict:
        with self._lock:
            state = self._state
        if self.outbox.in_memory:
            state += f"; outbox not writable, {self.outbox.in_memory} event(s) in memory"
        return {"state": state, "backlog": self.outbox.size(), "backlog_age_s": round(self.outbox.oldest_age_s(), 1)}

    def close(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.outbox.size() and self._connected and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.outbox.size()
        if left:
            log.warning("MQTT: %d event(s) not yet acknowledged stay in the outbox for the next start", left)
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        try:
            if self._connected:
                info = self.client.publish(self.topics.availability, "offline", qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout=2.0)
                except (RuntimeError, ValueError):
                    pass
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            self._pump_thread.join(timeout=2.0)
            self.outbox.close()
