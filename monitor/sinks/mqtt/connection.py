"""The broker connection: the paho client (v2 callback API), credentials, TLS, the last will,
reconnects with paho's exponential backoff plus jitter, and why a connection fails.

Every change of the connection state is logged once, at WARNING, with its reason (name not
resolved, refused, TLS verification, bad credentials, dropped). The owner is told when a
connection is up (``on_up``, on the network thread, before the connection counts as
connected: it announces what it must first) and when it went down (``on_down``). paho is
imported only in this package, and only here.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from monitor.config import MQTTConfig
from monitor.errors import UserError

log = logging.getLogger("monitor.sinks.mqtt")


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


def tls_context(cfg: MQTTConfig) -> ssl.SSLContext | None:
    if not cfg.tls.enabled:
        return None
    try:
        ctx = ssl.create_default_context(cafile=cfg.tls.ca_file)
        if cfg.tls.cert_file:
            ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise UserError(f"MQTT TLS setup failed: {e}") from None
    if cfg.tls.insecure:
        log.warning("MQTT TLS certificate verification is OFF (mqtt.tls.insecure): the broker is not authenticated")
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Connection:
    """One client to one broker, started at once (``connect_async`` + ``loop_start``)."""

    def __init__(
        self,
        cfg: MQTTConfig,
        *,
        client_id: str,
        will_topic: str,
        on_up: Callable[[], None],
        on_down: Callable[[], None],
        on_message: Callable[[Any], None],
        on_publish: Callable[[int, Any], None],
    ):
        import paho.mqtt.client as mqtt

        if not cfg.host:
            raise UserError("MQTT needs a broker host (mqtt.host or --mqtt)")
        self.cfg = cfg
        self.host: str = cfg.host
        self._on_up, self._on_down = on_up, on_down
        self._lock = threading.Lock()
        self.connected = False
        self.state = "connecting"
        self.closing = False
        self._logged = ""  # the connection state last written to the log
        self._failures = 0  # attempts in a row without a successful CONNACK
        self._attempts = 0
        self._down_since: float | None = None
        self._net_stop = threading.Event()
        # told after a reconnection how much waited (the owner's outbox): set by the owner
        self.waiting: Callable[[], int] = lambda: 0
        if cfg.protocol == "5":
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
            )
        self.client.max_inflight_messages_set(20)
        self.client.will_set(will_topic, "offline", qos=1, retain=True)
        if cfg.username:
            self.client.username_pw_set(cfg.username, read_password(cfg))
        self._tls = tls_context(cfg)
        if self._tls is not None:
            self.client.tls_set_context(self._tls)
        # paho doubles the wait from min to max and resets it only on a successful CONNACK
        # (paho annotates the delays as int; it computes with floats)
        self.client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        self.client.on_pre_connect = self._on_pre_connect
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = lambda c, u, mid, rc, p: on_publish(mid, rc)
        self.client.on_message = lambda c, u, msg: on_message(msg)

    def start(self) -> None:
        try:
            self.client.connect_async(self.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot start MQTT connection to {self.cfg.host}:{self.cfg.port}: {e}") from None
        self.client.loop_start()

    @property
    def where(self) -> str:
        return f"{self.cfg.host}:{self.cfg.port}"

    def publish(self, topic: str, payload: str | bytes | None, *, qos: int, retain: bool) -> int:
        """Hand a message to paho; its message id (the PUBACK is matched on it)."""
        return int(self.client.publish(topic, payload, qos=qos, retain=retain).mid)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    # -- state (logged once per change) --------------------------------------------------
    def _log_state(self, key: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
        if key != self._logged:
            log.log(level, msg, *args)
            self._logged = key

    def _backoff_s(self) -> float:
        return min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2 ** max(0, self._failures - 1))

    def _down(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()

    # -- paho callbacks (network thread) -------------------------------------------------
    def _on_pre_connect(self, client: Any, userdata: Any) -> None:
        # jitter on every reconnect: many devices must not hit a restarted broker together
        if self._attempts:
            self._net_stop.wait(random.uniform(0.0, 0.25 * self._backoff_s()))
        self._attempts += 1

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._failures += 1
        self._down()
        reason = diagnose(self.host, self.cfg.port, self._tls)
        with self._lock:
            self.state = f"unreachable: {reason}"
        self._log_state(
            "fail:" + reason,
            "MQTT cannot connect to %s: %s (retrying, waits double up to %g s)",
            self.where,
            reason,
            self.cfg.reconnect_max_s,
        )

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._failures += 1
            self._down()
            with self._lock:
                self.connected = False
                self.state = f"refused: {reason_code}"
            self._log_state(
                f"refused:{reason_code}",
                "MQTT broker %s refused the connection: %s (check username, "
                "password and ACL; retrying, waits double up to %g s)",
                self.where,
                reason_code,
                self.cfg.reconnect_max_s,
            )
            return
        self._on_up()  # subscriptions and the announcement, before the connection counts
        with self._lock:
            self.connected = True
            self.state = "connected"
        failures, since = self._failures, self._down_since
        self._failures, self._down_since = 0, None
        if since is not None:
            self._log_state(
                "connected",
                "MQTT connected to %s again after %.0f s (%d failed attempt(s)); %d event(s) in the outbox go out now",
                self.where,
                time.monotonic() - since,
                failures,
                self.waiting(),
            )
        else:
            self._log_state("connected", "MQTT connected to %s", self.where, level=logging.INFO)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._lock:
            self.connected = False
            refused = self.state.startswith("refused")
            if not refused:
                self.state = f"disconnected ({reason_code}), retrying"
        self._on_down()
        if self.closing or refused:
            return
        self._down()
        self._log_state(
            "disconnected",
            "MQTT connection to %s lost (%s); %d event(s) wait in the outbox",
            self.where,
            reason_code,
            self.waiting(),
        )

    def close(self, goodbye: tuple[str, str] | None) -> None:
        """Say ``goodbye`` (topic, payload: the retained `offline`) when connected, then disconnect."""
        self.closing = True
        self._net_stop.set()
        try:
            if self.connected and goodbye is not None:
                info = self.client.publish(goodbye[0], goodbye[1], qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout=2.0)
                except (RuntimeError, ValueError):
                    pass
            self.client.disconnect()
        finally:
            self.client.loop_stop()
