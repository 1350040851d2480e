"""A real mosquitto broker on 127.0.0.1 (free port, optional password file and TLS), and a subscriber."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import wait_until

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        users: dict | None = None,
        tls: dict | None = None,
        persistence: bool = False,
        acl: str | None = None,
    ):
        self.dir = workdir
        self.acl = acl  # mosquitto acl_file text (with users)
        self.port = port or free_port()
        self.users = users
        self.tls = tls
        # persistence: sessions of clean_session=False clients (and the QoS 1 messages queued
        # for them) survive a restart, as on a real home broker
        self.persistence = persistence
        self.proc = None

    def conf(self) -> Path:
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr"]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.dir}/",
                f"persistence_file broker-{self.port}.db",
            ]
        else:
            lines.append("persistence false")
        if os.geteuid() == 0:
            # started as root, mosquitto drops to its own user, which cannot read pytest's
            # private tmp dirs (password file, certificates)
            lines.append("user root")
        if self.users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for u, p in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), u, p], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
            if self.acl is not None:
                acl = self.dir / f"acl-{self.port}"
                acl.write_text(self.acl)
                lines.append(f"acl_file {acl}")
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += [f"cafile {self.tls['ca']}", f"certfile {self.tls['cert']}", f"keyfile {self.tls['key']}"]
        c = self.dir / f"mosquitto-{self.port}.conf"
        c.write_text("\n".join(lines) + "\n")
        return c

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf())],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "mosquitto.log", "ab"),
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start: " + (self.dir / "mosquitto.log").read_text()[-500:])

    def log_text(self) -> str:
        return (self.dir / "mosquitto.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


class Subscriber:
    """Collects (topic, payload, retain) from a real broker."""

    def __init__(self, port: int, topics=("#",), client_id: str | None = None, clean_session: bool = True, **tls_kw):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-sub-{port}-{time.time_ns()}",
            clean_session=clean_session,
        )
        self.c.reconnect_delay_set(0.1, 0.5)  # loop_start reconnects by itself after a broker restart
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p: ([c.subscribe(t, qos=1) for t in topics], ready.set())
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(10), "subscriber could not connect"
        time.sleep(0.2)

    def _on_message(self, c, u, msg):
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_for(self, pred, timeout=20.0) -> bool:
        return wait_until(lambda: pred(self), timeout)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def mosquitto(tmp_path):
    """Factory: mosquitto(users=..., tls=..., port=...) -> a started Broker; all stopped at the end."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto; `make test` does it)")
    brokers = []

    def start(**kw):
        b = Broker(tmp_path, **kw).start()
        brokers.append(b)
        return b

    yield start
    for b in brokers:
        b.stop()
