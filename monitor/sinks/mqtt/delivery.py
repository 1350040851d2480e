"""Delivery: every event goes to the SQLite outbox first; a pump thread publishes outbox
entries in ``seq`` order (QoS 1) while connected, and an entry leaves the outbox only on its
PUBACK. paho itself re-sends what was in flight when a connection dropped, so after a
reconnect the pump continues after the last entry it handed to paho; after a restart it
starts from the oldest entry.

MQTT v5 by default: a PUBACK with a failure reason code (an ACL that denies the topic)
leaves the event in the outbox and is reported once per reason; an MQTT 3.1.1 broker
acknowledges a denied publish like a delivered one, so with ``mqtt.protocol: "3.1.1"`` such
a loss cannot be seen. Every QoS 1 message of the sink goes through ``send`` here, so its
acknowledgement (or refusal) is matched on its message id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from monitor.outbox import Outbox

log = logging.getLogger("monitor.sinks.mqtt")

Publish = Callable[..., int]  # (topic, payload, *, qos, retain) -> message id


class Delivery:
    def __init__(self, outbox: Outbox, events_topic: str, where: str):
        self.outbox = outbox
        self.events_topic = events_topic
        self.where = where
        self._publish: Publish | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._connected = False
        self._closing = False
        self._last_handed = 0  # highest seq handed to paho in this connection's lifetime
        # what each mid is (("seq", n) | ("topic", t)); PUBACKs that beat the registration wait in _early
        self._mid_lock = threading.Lock()
        self._mids: dict[int, tuple[str, object]] = {}
        self._early: dict[int, object] = {}
        self._rejected_logged: set[str] = set()
        self.rejected = 0  # events the broker refused (MQTT v5 PUBACK reason code)
        self._thread = threading.Thread(target=self._pump, name="mqtt-pump", daemon=True)

    def start(self, publish: Publish) -> None:
        self._publish = publish
        backlog = self.outbox.size()
        if backlog:
            log.warning("MQTT outbox holds %d undelivered event(s) from before; they go first", backlog)
        self._thread.start()

    # -- the connection's state ---------------------------------------------------------------
    def connected(self, up: bool) -> None:
        with self._lock:
            self._connected = up
            self._wake.notify_all()

    # -- sending and acknowledgements -----------------------------------------------------------
    def add(self, seq: int, payload: str) -> None:
        """An event into the outbox (durable first); the pump sends it."""
        self.outbox.add(seq, self.events_topic, payload)
        with self._lock:
            self._wake.notify_all()

    def send(
        self, topic: str, payload: str | bytes | None, *, retain: bool, seq: int | None = None, qos: int = 1
    ) -> None:
        assert self._publish is not None
        mid = self._publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            with self._mid_lock:
                self._early.pop(mid, None)
            return
        what = ("seq", seq) if seq is not None else ("topic", topic)
        with self._mid_lock:
            early = self._early.pop(mid, None) if mid in self._early else None
            if early is None:
                self._mids[mid] = what
        if early is not None:
            self._acked(what, early)

    def on_publish(self, mid: int, reason_code: Any) -> None:
        """paho's PUBACK callback (network thread)."""
        with self._mid_lock:
            what = self._mids.pop(mid, None)
            if what is None:
                self._early[mid] = reason_code
                return
        self._acked(what, reason_code)

    def _acked(self, what: tuple[str, object], reason_code: Any) -> None:
        failed = bool(getattr(reason_code, "is_failure", False))
        kind, value = what
        if kind == "seq":
            if not failed:
                self.outbox.remove(int(str(value)))
                with self._lock:
                    self._wake.notify_all()
                return
            self.rejected += 1
            key = f"events:{reason_code}"
            if key not in self._rejected_logged:
                self._rejected_logged.add(key)
                log.error(
                    "MQTT broker %s rejected event seq %s on %s: %s (an ACL that denies the topic?); it "
                    "stays in the outbox and is sent again after the next start",
                    self.where,
                    value,
                    self.events_topic,
                    reason_code,
                )
        elif failed and value not in self._rejected_logged:
            self._rejected_logged.add(str(value))
            log.error("MQTT broker %s rejected the publish to %s: %s", self.where, value, reason_code)

    # -- the pump -----------------------------------------------------------------------------------
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
                with self._lock:
                    self._last_handed = seq
                self.send(topic, payload, retain=False, seq=seq)

    def drain(self, timeout_s: float, connected: Callable[[], bool]) -> None:
        """Wait (up to ``timeout_s``) for the broker to acknowledge what is in the outbox."""
        deadline = time.monotonic() + timeout_s
        while self.outbox.size() > self.rejected and connected() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.outbox.size()
        if left:
            log.warning("MQTT: %d event(s) not yet acknowledged stay in the outbox for the next start", left)

    def stop(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.notify_all()

    def close(self) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.outbox.close()
