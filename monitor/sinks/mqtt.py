"""MQTT sink (paho-mqtt, v2 callback API) with Home Assistant discovery and a durable outbox.

Every event goes to the SQLite outbox first; a pump thread publishes outbox entries in
``seq`` order (QoS 1) while connected, and an entry leaves the outbox only on its PUBACK.
paho itself re-sends messages that were in flight when a connection dropped, so after a
reconnect the pump simply continues after the last entry it handed to paho; after a
restart it starts from the oldest entry. Reconnects use paho's exponential backoff (reset
only by a successful CONNACK) plus a random delay of up to a quarter of it (jitter).
Every change of the connection state is logged once, at WARNING, with its reason (name
not resolved, refused, TLS verification, bad credentials, dropped).

MQTT v5 by default: a PUBACK with a failure reason code (e.g. an ACL that denies the topic)
leaves the event in the outbox and is reported; an MQTT 3.1.1 broker acknowledges a denied
publish like a delivered one, so with ``mqtt.protocol: "3.1.1"`` such a loss cannot be seen.
Discovery topics this device published are remembered in the state dir; on connect the
ones whose labels are gone are cleared (also after a run that ended during an outage).

Passwords come from an environment variable or a file, never from the config text, and
are never logged. paho is imported only here.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from monitor import __version__
from monitor.config import MQTTConfig
from monitor.control import Command, CommandHandler, RulesInForce
from monitor.errors import UserError
from monitor.events import utc_now_iso
from monitor.files import write_text_atomic
from monitor.logs import Throttle, held_note
from monitor.outbox import Outbox
from monitor.sinks.base import OpenLabels, Sink, SinkStatus
from monitor.state import state_file
from monitor.topics import Topics, label_slugs, slugify
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
        raise UserError(
            "do not put the MQTT password in the URL: set SOUND_MONITOR_MQTT_PASSWORD or mqtt.password_file"
        )
    tls = u.scheme == "mqtts"
    ov = {"mqtt.host": u.hostname, "mqtt.port": port or (8883 if tls else 1883), "mqtt.tls.enabled": tls}
    if u.username:
        ov["mqtt.username"] = unquote(u.username)  # user%40example.com -> user@example.com
    return ov


def read_password(cfg: MQTTConfig) -> str | None:
    if cfg.password_file:
        try:
            return Path(cfg.password_file).expanduser().read_text(encoding="utf-8").splitlines()[0].strip()
        except (OSError, IndexError) as e:
            raise UserError(
                f"cannot read the MQTT password file {cfg.password_file}: "
                f"{e.strerror if isinstance(e, OSError) else 'empty file'}"
            ) from None
    if cfg.password_env:
        return os.environ.get(cfg.password_env) or None
    return None


def diagnose(host: str, port: int, tls: ssl.SSLContext | None, timeout_s: float = 5.0) -> str:
    """Why a connection attempt fails: paho's connect-failure callback carries no reason,
    so the same steps (name, TCP, TLS handshake with the same context) are tried once more."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"cannot resolve the host name {host!r} ({e.strerror})"
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port} (no broker listening there?)"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout_s:.0f} s"
    except OSError as e:
        return f"cannot reach {host}:{port} ({e.strerror or e})"
    try:
        if tls is not None:
            try:
                tls.wrap_socket(sock, server_hostname=host).close()
            except ssl.SSLCertVerificationError as e:
                return f"TLS certificate verification failed ({e.verify_message})"
            except ssl.SSLError as e:
                return f"TLS handshake failed ({e.reason or e})"
            except OSError as e:
                return f"TLS handshake failed ({e.strerror or e})"
    finally:
        sock.close()
    return f"the connection to {host}:{port} failed (the broker closed it)"


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
        import paho.mqtt.client as mqtt

        if not cfg.host:
            raise UserError("MQTT needs a broker host (mqtt.host or --mqtt)")
        self.cfg = cfg
        self.host: str = cfg.host
        self.topics = Topics(cfg.prefix, device_id, cfg.discovery_prefix)
        self.model_name = model_name
        self.source_name = source_name
        self.outbox = Outbox(state_file(state_dir, "outbox", device_id, ".sqlite3"))
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._connected = False
        self._state = "connecting"
        self._closing = False
        # what each mid is (("seq", n) | ("topic", t)); PUBACKs that beat the registration wait in _early
        self._mid_lock = threading.Lock()
        self._mids: dict[int, tuple[str, object]] = {}
        self._early: dict[int, object] = {}
        self._last_handed = 0  # highest seq handed to paho in this connection's lifetime
        self._labels: list[str] = []
        self._slugs: dict[str, str] = {}
        # label -> event_ids of its open events: with several sources a label is ON while
        # any source has it open, OFF only when the last one ends
        self._open = OpenLabels()
        self._last_scores_t = 0.0
        self._logged = ""  # the connection state last written to the log
        self._failures = 0  # attempts in a row without a successful CONNACK
        self._attempts = 0
        self._down_since: float | None = None
        self._net_stop = threading.Event()
        self._rejected_logged: set[str] = set()
        self.rejected = 0  # events the broker refused (MQTT v5 PUBACK reason code)
        self._known_path = state_file(state_dir, "discovery", device_id, ".json")
        # runtime control (see monitor/control.py): the current values, published retained,
        # and where commands go (the control plane's handler, attached by the service)
        self.takes_commands = cfg.control
        self._commands: CommandHandler | None = None
        self._controls: dict[str, tuple[float, bool, float]] = {}  # label -> (threshold, enabled, lowest)
        self._device_enabled = True
        self._announced_lowest: dict[str, float] = {}  # label -> the number entity's min last announced
        self._refusals = Throttle(60.0)  # refused commands: a line per kind of topic a minute, with a count
        # Home Assistant's topics (label states, attributes, event entities, controls) go out
        # only after a connection's announcement: until then they wait here (latest retained
        # value per topic; event-entity messages in order, bounded), and the announcement
        # sends states before `online`. One lock orders announcement, events and controls.
        self._ha_lock = threading.RLock()
        self._ha_ready = False
        self._ha_retained: dict[str, str] = {}
        self._ha_events: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)
        self.sensor_interval_s = 10.0  # level / heard / diagnostics: at most one message per this
        self._last_sensor_t = 0.0
        self._last_heard: str | None = None
        self._last_diag_t = 0.0

        client_id = cfg.client_id or f"sound-monitor-{self.topics.dev}"
        if cfg.protocol == "5":
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
            )
        self.client.max_inflight_messages_set(20)
        self.client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        if cfg.username:
            self.client.username_pw_set(cfg.username, read_password(cfg))
        self._tls: ssl.SSLContext | None = None
        if cfg.tls.enabled:
            try:
                ctx = ssl.create_default_context(cafile=cfg.tls.ca_file)
                if cfg.tls.cert_file:
                    ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise UserError(f"MQTT TLS setup failed: {e}") from None
            if cfg.tls.insecure:
                log.warning(
                    "MQTT TLS certificate verification is OFF (mqtt.tls.insecure): the broker is not authenticated"
                )
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._tls = ctx
            self.client.tls_set_context(ctx)
        # paho doubles the wait from min to max and resets it only on a successful CONNACK
        # (paho annotates the delays as int; it computes with floats)
        self.client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
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
            self.client.connect_async(self.host, cfg.port, keepalive=cfg.keepalive_s)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot start MQTT connection to {cfg.host}:{cfg.port}: {e}") from None
        self.client.loop_start()

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

    # -- connection state (logged once per change) ------------------------------------------
    @property
    def _where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def _log_state(self, key: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
        if key != self._logged:
            log.log(level, msg, *args)
            self._logged = key

    def _backoff_s(self) -> float:
        return min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** max(0, self._failures - 1))

    # -- paho callbacks (network thread) -------------------------------------------------------
    def _on_pre_connect(self, client: Any, userdata: Any) -> None:
        # jitter on every reconnect: many devices must not hit a restarted broker together
        if self._attempts:
            self._net_stop.wait(random.uniform(0.0, 0.25 * self._backoff_s()))
        self._attempts += 1

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
        reason = diagnose(self.host, self.cfg.port, self._tls)
        with self._lock:
            self._state = f"unreachable: {reason}"
        self._log_state(
            "fail:" + reason,
            "MQTT cannot connect to %s: %s (retrying, waits double up to %g s)",
            self._where,
            reason,
            self.cfg.reconnect_max_s,
        )

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._failures += 1
            if self._down_since is None:
                self._down_since = time.monotonic()
            with self._lock:
                self._connected = False
                self._state = f"refused: {reason_code}"
            self._log_state(
                f"refused:{reason_code}",
                "MQTT broker %s refused the connection: %s (check username, "
                "password and ACL; retrying, waits double up to %g s)",
                self._where,
                reason_code,
                self.cfg.reconnect_max_s,
            )
            return
        if self.cfg.discovery:
            client.subscribe(self.topics.ha_status, qos=1)
        if self.cfg.control:
            for f in self.topics.command_filters:
                client.subscribe(f, qos=1)
        with self._ha_lock:
            # discovery, then every label's state, controls and what waited for the connection,
            # and only then `online`: Home Assistant never sees a stale `ON` come back to life
            self._publish_labels(states=False)
            self._flush_ha()
            self._publish_states()
            self._flush_ha_events()
            self._pub(self.topics.availability, "online", retain=True)
            self._ha_ready = True
        self._clear_stale()
        with self._lock:
            self._connected = True
            self._state = "connected"
            self._wake.notify_all()
        failures, since = self._failures, self._down_since
        self._failures, self._down_since = 0, None
        if since is not None:
            self._log_state(
                "connected",
                "MQTT connected to %s again after %.0f s (%d failed attempt(s)); %d event(s) in the outbox go out now",
                self._where,
                time.monotonic() - since,
                failures,
                self.outbox.size(),
            )
        else:
            self._log_state("connected", "MQTT connected to %s", self._where, level=logging.INFO)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._ha_lock:
            self._ha_ready = False
        with self._lock:
            self._connected = False
            refused = self._state.startswith("refused")
            if not refused:
                self._state = f"disconnected ({reason_code}), retrying"
        if self._closing or refused:
            return
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._log_state(
            "disconnected",
            "MQTT connection to %s lost (%s); %d event(s) wait in the outbox",
            self._where,
            reason_code,
            self.outbox.size(),
        )

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
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
                    self._where,
                    value,
                    self.topics.events,
                    reason_code,
                )
        elif failed and value not in self._rejected_logged:
            self._rejected_logged.add(str(value))
            log.error("MQTT broker %s rejected the publish to %s: %s", self._where, value, reason_code)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic == self.topics.ha_status:
            if msg.payload == b"online":
                with self._ha_lock:
                    self._publish_labels(states=False)
            return
        cmd = self.topics.command_of(msg.topic)
        if cmd is None or msg.retain:  # a retained command is stale: values come from the state dir
            return
        kind, slug = cmd
        with self._lock:
            label = next((lab for lab, sl in self._slugs.items() if sl == slug), None) if slug else None
        if slug and label is None:
            return self._refuse(kind, msg.topic, "no such label on this device")
        handler = self._commands
        if handler is None:
            why = "the monitor is still starting" if self.cfg.control else "remote control is off (mqtt.control: false)"
            return self._refuse(kind, msg.topic, why)
        try:
            problem = handler(Command(kind, label, bytes(msg.payload), via="MQTT"))  # type: ignore[arg-type]
        except Exception as e:  # noqa: BLE001 - a command must never take the network thread down
            problem = f"{type(e).__name__}: {e}"
        if problem:
            self._refuse(kind, msg.topic, problem)

    def _refuse(self, kind: str, topic: str, why: str) -> None:
        """One line per kind of command (threshold, switch, pause) a minute; the refusals in
        between are counted in the next line. A flood costs neither memory nor log lines."""
        held = self._refusals.take(kind)
        if held is not None:
            log.warning("MQTT command on %s ignored: %s%s", topic, why, held_note(held, self._refusals.interval_s))

    # -- publishing ----------------------------------------------------------------------------
    def _pub(
        self, topic: str, payload: str | bytes | None, *, retain: bool, seq: int | None = None, qos: int = 1
    ) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            with self._mid_lock:
                self._early.pop(info.mid, None)
            return
        what = ("seq", seq) if seq is not None else ("topic", topic)
        with self._mid_lock:
            early = self._early.pop(info.mid, None) if info.mid in self._early else None
            if early is None:
                self._mids[info.mid] = what
        if early is not None:
            self._acked(what, early)

    def _label_topics(self, slugs: Iterable[str]) -> set[str]:
        """The retained topics of these labels (state, control values, attributes, discovery)."""
        out = set()
        for s in slugs:
            out.add(self.topics.state(s))
            out.add(self.topics.label_topic(s, "threshold"))
            out.add(self.topics.label_topic(s, "enabled"))
            out.add(self.topics.label_topic(s, "attributes"))
            if self.cfg.discovery:
                out.add(self.topics.discovery(s))
                out.update(self.topics.label_entities("", s, "", "", control=self.cfg.control))
        return out

    def _publish_labels(self, states: bool = True) -> None:
        """Discovery of the device's and every label's entities (and, with ``states``, every
        label's state and the controls); call with ``_ha_lock`` held."""
        with self._lock:
            labels = list(self._labels)
            slugs = dict(self._slugs)
            lowest = {lab: c[2] for lab, c in self._controls.items()}
            self._announced_lowest = dict(lowest)
        control = self.cfg.control
        if self.cfg.discovery and not control:  # no pause switch: an earlier run's is removed
            self._pub(self.topics.discovery("", "switch", "enabled"), b"", retain=True)
        if self.cfg.discovery:
            for topic, payload in self.topics.device_entities(self.model_name, __version__, control=control).items():
                self._pub(topic, json.dumps(payload), retain=True)
        for lab in labels:
            s = slugs[lab]
            if self.cfg.discovery:
                payload = self.topics.discovery_payload(lab, s, self.model_name, __version__)
                self._pub(self.topics.discovery(s), json.dumps(payload), retain=True)
                entities = self.topics.label_entities(
                    lab, s, self.model_name, __version__, min_threshold=lowest.get(lab, 0.0), control=control
                )
                for topic, p in entities.items():
                    self._pub(topic, json.dumps(p), retain=True)
        if states:
            self._publish_states()

    def _publish_states(self) -> None:
        """Every label's state (ON while any source has it open) and the controls (``_ha_lock`` held)."""
        with self._lock:
            on = {lab: (slug, self._open.is_on(lab)) for lab, slug in self._slugs.items()}
        for slug, is_on in on.values():
            self._pub(self.topics.state(slug), "ON" if is_on else "OFF", retain=True)
        self._publish_controls()

    def _publish_controls(self) -> None:
        """The current thresholds and switches, retained (what the number/switch entities show)."""
        with self._lock:
            controls = dict(self._controls)
            slugs = dict(self._slugs)
            dev_on = self._device_enabled
        self._pub(self.topics.device_topic("enabled"), "ON" if dev_on else "OFF", retain=True)
        for lab, (thr, on, _) in controls.items():
            s = slugs.get(lab)
            if s:
                self._pub(self.topics.label_topic(s, "threshold"), f"{thr:g}", retain=True)
                self._pub(self.topics.label_topic(s, "enabled"), "ON" if on else "OFF", retain=True)

    def attach_commands(self, handler: CommandHandler) -> None:
        self._commands = handler

    def on_rules(self, rules: RulesInForce) -> None:
        """Each label's threshold in force, its switch and the lowest threshold its hysteresis
        allows (the number entity's ``min``), and the device switch."""
        values = {
            k: (r.threshold, rules.switches.get(k, True), rules.lowest.get(k, 0.0)) for k, r in rules.rules.items()
        }
        device_enabled = rules.detection_enabled
        with self._ha_lock:
            with self._lock:
                lowest_changed = {k: v[2] for k, v in values.items()} != self._announced_lowest
                self._controls = dict(values)
                self._device_enabled = device_enabled
            if self._ha_ready:  # else the next announcement sends them
                if lowest_changed and self.cfg.discovery and self.cfg.control:
                    self._publish_labels(states=False)  # the number entities' min changed
                self._publish_controls()

    def _known_topics(self) -> set[str] | None:
        try:
            data = json.loads(self._known_path.read_text(encoding="utf-8"))
            return {t for t in data.get("topics", []) if isinstance(t, str)}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as e:
            log.warning(
                "cannot read %s (%s): retained topics of removed labels may stay on the broker", self._known_path, e
            )
            return None

    def _clear_stale(self) -> None:
        """Clear the retained topics of labels this device published before and no longer has
        (remembered in the state dir; on the first start, the slugs of the older slug rule)."""
        with self._lock:
            current = self._label_topics(self._slugs.values())
            legacy = {slugify(lab) for lab in self._labels}
        known = self._known_topics()
        if known is None:
            known = self._label_topics(legacy) | {self.topics.discovery(s) for s in legacy}
        for topic in sorted(known - current):
            self._pub(topic, b"", retain=True)
        try:
            write_text_atomic(self._known_path, json.dumps({"topics": sorted(current)}))
        except OSError as e:
            log.warning("cannot save %s (%s)", self._known_path, e.strerror)

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
                self._pub(topic, payload, retain=False, seq=seq)

    def publish(self, event: Event) -> None:
        self.outbox.add(event.seq, self.topics.events, event.to_json())
        with self._lock:
            on = self._open.apply(event) if event.label in self._slugs else False
            slug = self._slugs.get(event.label)
            self._wake.notify_all()
        if not slug:
            return
        attrs = {
            "score": event.score,
            "peak_score": event.peak_score,
            "source": event.source,
            "event_id": event.event_id,
        }
        # attributes before the state: an automation triggered by `on` reads this event's
        # values. The event entity: each message one occurrence (not retained: a restart of
        # Home Assistant must not replay it); an end says why when it has a reason (restart)
        entity = {"event_type": event.type, **attrs, **({"reason": event.reason} if event.reason else {})}
        with self._ha_lock:
            self._ha_send(self.topics.label_topic(slug, "attributes"), json.dumps(attrs), retain=True)
            self._ha_send(self.topics.state(slug), "ON" if on else "OFF", retain=True)
            self._ha_send(self.topics.label_topic(slug, "event"), json.dumps(entity), retain=False)

    def _ha_send(self, topic: str, payload: str, *, retain: bool) -> None:
        """A Home Assistant topic: out now when announced on this connection, else kept for
        the next announcement (call with ``_ha_lock`` held)."""
        if self._ha_ready:
            self._pub(topic, payload, retain=retain)
        elif retain:
            self._ha_retained[topic] = payload
        else:
            self._ha_events.append((topic, payload))

    def _flush_ha(self) -> None:
        """The retained values that waited for the connection, attributes first (``_ha_lock`` held)."""
        for topic in sorted(self._ha_retained, key=lambda t: not t.endswith("/attributes")):
            self._pub(topic, self._ha_retained[topic], retain=True)
        self._ha_retained.clear()

    def _flush_ha_events(self) -> None:
        """The event-entity messages that waited for the connection, in order (``_ha_lock`` held)."""
        while self._ha_events:
            topic, payload = self._ha_events.popleft()
            self._pub(topic, payload, retain=False)

    def on_scores(self, scores: Scores) -> None:
        self._sensors(scores)
        if not self.cfg.scores_interval_s or scores.gated:
            return
        now = time.monotonic()
        if now - self._last_scores_t < self.cfg.scores_interval_s:
            return
        self._last_scores_t = now
        if self._connected:
            self._pub(
                self.topics.scores, json.dumps({"t_s": scores.start_s, "scores": scores.as_dict()}), retain=False, qos=0
            )

    def _sensors(self, scores: Scores) -> None:
        """The level and "heard" sensors: at most one update per ``sensor_interval_s``, and
        "heard" also when its top label changes."""
        now = time.monotonic()
        values = scores.as_dict()
        top = max(values, key=lambda k: values[k]) if values and not scores.gated else None
        due = now - self._last_sensor_t >= self.sensor_interval_s
        if not self._connected or not (due or (top != self._last_heard and now - self._last_sensor_t >= 1.0)):
            return
        self._last_sensor_t = now
        self._last_heard = top
        self._pub(self.topics.device_topic("level"), f"{scores.level_dbfs:.1f}", retain=True, qos=0)
        heard = {
            "label": top if top is not None else "(quiet)",
            "score": round(float(values[top]), 4) if top is not None else 0.0,
            "t_s": round(scores.start_s, 3),  # the window's stream time
            "time": utc_now_iso(),
            "source": scores.source,
        }
        self._pub(self.topics.device_topic("heard"), json.dumps(heard), retain=True, qos=0)

    def on_status(self, snapshot: Any) -> None:
        """Diagnostics (source status, inference ms, outbox backlog), every ~30 s."""
        now = time.monotonic()
        if not self._connected or now - self._last_diag_t < 30.0:
            return
        self._last_diag_t = now
        srcs = snapshot.sources
        measured = [s.inference_ms for s in srcs if s.inference_ms is not None]
        diag = {
            "source_status": ", ".join(f"{s.name}: {s.status}" for s in srcs) if len(srcs) > 1 else srcs[0].status,
            # null until the model has run (Home Assistant shows "unknown", not a false 0 ms)
            "inference_ms": round(max(measured), 2) if measured else None,
            "outbox_backlog": self.outbox.size(),
        }
        self._pub(self.topics.device_topic("diagnostics"), json.dumps(diag), retain=True, qos=0)

    def set_labels(self, labels: Sequence[str]) -> None:
        with self._lock:
            if list(labels) == self._labels and self._connected:
                return  # a change of rules only (a threshold set over MQTT): nothing to re-announce
            self._labels = list(labels)
            self._slugs = label_slugs(self._labels)
            self._open.keep(self._labels)
        with self._ha_lock:
            if not self._ha_ready:
                return  # the next connection announces them
            self._publish_labels()
        self._clear_stale()

    def last_seq(self) -> int:
        return self.outbox.high_seq

    def status(self) -> SinkStatus:
        with self._lock:
            state = self._state
            connected = self._connected
        if self.outbox.in_memory:
            state += f"; outbox not writable, {self.outbox.in_memory} event(s) in memory"
        if self.rejected:
            state += f"; {self.rejected} event(s) rejected by the broker"
        return SinkStatus(
            state,
            backlog=self.outbox.size(),
            backlog_age_s=round(self.outbox.oldest_age_s(), 1),
            rejected=self.rejected,
            connected=connected,
        )

    def close(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.outbox.size() > self.rejected and self._connected and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.outbox.size()
        if left:
            log.warning("MQTT: %d event(s) not yet acknowledged stay in the outbox for the next start", left)
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        self._net_stop.set()
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
