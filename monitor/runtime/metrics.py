"""Health and metrics over HTTP (``--metrics HOST:PORT``, config ``metrics.listen``; off by default).

- ``GET /healthz``: 200 ``ok`` while every source delivers audio and every worker runs;
  503 with the reasons otherwise (a source stalled, lost, retrying or failed; a worker that
  stopped). A source sending only digital zeros is alive (200) and says so.
- ``GET /metrics``: Prometheus text format (prometheus_client): windows, gated windows,
  dropped windows and samples, events by label and type, inference ms of the latest batch,
  the input level, source status, MQTT outbox pending and connected.

The numbers come from one ``Snapshot`` value the service makes on each request (the
pipelines' counters are read, never changed). The server binds 127.0.0.1 unless told
otherwise: the endpoint tells anyone who can reach it what the house sounds like.
prometheus_client is imported only here.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from monitor.config import parse_listen
from monitor.errors import UserError
from monitor.sinks.base import Sink
from monitor.types import Event

log = logging.getLogger(__name__)

HEALTHY = ("ok", "starting", "silent")  # source states in which audio arrives (or is about to)


@dataclass(frozen=True)
class SourceHealth:
    name: str
    status: str
    detail: str
    alive: bool  # its worker thread runs
    windows: int
    gated: int
    dropped_windows: int
    dropped_frames: int
    inference_ms: float | None  # None: nothing measured yet
    level_dbfs: float
    recent_dropped_windows: int = 0  # in the last minute: the source falls behind
    recent_dropped_frames: int = 0


@dataclass(frozen=True)
class Snapshot:
    sources: tuple[SourceHealth, ...]
    events: dict[tuple[str, str], int] = field(default_factory=dict)  # (label, type) -> count
    outbox_pending: int | None = None  # None: no MQTT
    mqtt_connected: bool | None = None
    detection_enabled: bool = True  # False: the device is paused (no events start)
    labels_enabled: dict[str, bool] = field(default_factory=dict)  # label -> its own switch


def health(snap: Snapshot) -> tuple[int, str]:
    """(HTTP status, body) for /healthz: 503 while a source delivers no audio, its worker
    stopped, or it falls behind (audio or windows dropped in the last minute); the body's
    further lines say what is switched off (200: the monitor works as configured)."""
    problems = []
    for s in snap.sources:
        if not s.alive:
            problems.append(f"source {s.name}: its worker stopped ({s.status})")
        elif s.status not in HEALTHY:
            problems.append(f"source {s.name}: {s.status}" + (f" ({s.detail})" if s.detail else ""))
        elif s.recent_dropped_windows or s.recent_dropped_frames:
            problems.append(
                f"source {s.name}: falling behind ({s.recent_dropped_windows} window(s) and "
                f"{s.recent_dropped_frames} samples dropped in the last minute)"
            )
    notes = [f"source {s.name}: {s.status}" for s in snap.sources if s.status != "ok" and s.status in HEALTHY]
    if not snap.detection_enabled:
        notes.append("paused: detection is switched off for the whole device (no events start)")
    notes += [f"label {name!r}: switched off (no events)" for name, on in snap.labels_enabled.items() if not on]
    if problems:
        return 503, "".join(p + "\n" for p in problems + notes)
    return 200, "ok\n" + "".join(n + "\n" for n in notes)


def render(snap: Snapshot) -> bytes:
    """The snapshot in Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Any:
            per_source: list[tuple[str, str, str, Callable[[SourceHealth], float]]] = [
                ("windows", "counter", "windows scored or gated", lambda s: s.windows),
                ("windows_gated", "counter", "windows below the level gate (not scored)", lambda s: s.gated),
                (
                    "dropped_windows",
                    "counter",
                    "windows dropped because inference fell behind",
                    lambda s: s.dropped_windows,
                ),
                (
                    "dropped_samples",
                    "counter",
                    "input samples dropped by a full capture buffer",
                    lambda s: s.dropped_frames,
                ),
                (
                    "inference_ms",
                    "gauge",
                    "model time of the latest batch of windows, ms (NaN until measured)",
                    lambda s: float("nan") if s.inference_ms is None else s.inference_ms,
                ),
                ("level_dbfs", "gauge", "RMS level of the latest window, dBFS", lambda s: s.level_dbfs),
            ]
            for name, kind, doc, get in per_source:
                fam_cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                fam = fam_cls(f"sound_monitor_{name}", doc, labels=["source"])
                for s in snap.sources:
                    fam.add_metric([s.name], float(get(s)))
                yield fam
            st = GaugeMetricFamily(
                "sound_monitor_source_status", "1 for the source's current state", labels=["source", "status"]
            )
            for s in snap.sources:
                st.add_metric([s.name, s.status], 1.0)
            yield st
            ev = CounterMetricFamily(
                "sound_monitor_events", "event messages by label and type", labels=["label", "type"]
            )
            for (label, kind), n in sorted(snap.events.items()):
                ev.add_metric([label, kind], float(n))
            yield ev
            yield GaugeMetricFamily(
                "sound_monitor_detection_enabled",
                "1 while detection runs, 0 while the device is paused (no events start)",
                value=float(snap.detection_enabled),
            )
            lab = GaugeMetricFamily(
                "sound_monitor_label_enabled", "1 while the label's own switch is on", labels=["label"]
            )
            for name, on in sorted(snap.labels_enabled.items()):
                lab.add_metric([name], float(on))
            yield lab
            if snap.outbox_pending is not None:
                yield GaugeMetricFamily(
                    "sound_monitor_outbox_pending",
                    "events the MQTT broker has not acknowledged yet",
                    value=snap.outbox_pending,
                )
            if snap.mqtt_connected is not None:
                yield GaugeMetricFamily(
                    "sound_monitor_mqtt_connected",
                    "1 while connected to the MQTT broker",
                    value=float(snap.mqtt_connected),
                )

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector())
    return generate_latest(reg)


class EventCounter(Sink):
    """Counts event messages by (label, type) for /metrics; publishes nothing anywhere."""

    name = "metrics"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def publish(self, event: Event) -> None:
        with self._lock:
            self._counts[(event.label, event.type)] += 1

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


MAX_CONNECTIONS = 16  # at once; more are closed at once (a thread each, never unbounded)
CONNECTION_TIMEOUT_S = 10.0  # a client that sends nothing (or reads nothing) for this long is dropped


class _BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most ``MAX_CONNECTIONS`` connections being served: one
    more is closed without a thread (idle clients cannot hold hundreds of threads)."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any):
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.turned_away = 0
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.turned_away += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsServer:
    """/healthz and /metrics on a daemon thread; ``close()`` stops it. Each connection is
    dropped after ``CONNECTION_TIMEOUT_S`` without progress; at most ``MAX_CONNECTIONS`` at once."""

    def __init__(self, listen: str, snapshot: Callable[[], Snapshot]):
        host, port = parse_listen(listen)
        self.snapshot = snapshot

        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = CONNECTION_TIMEOUT_S  # socket timeout: a silent client frees its thread

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    snap = outer.snapshot()
                    if path == "/healthz":
                        code, text = health(snap)
                        body, ctype = text.encode(), "text/plain; charset=utf-8"
                    elif path == "/metrics":
                        code, body, ctype = 200, render(snap), "text/plain; version=0.0.4; charset=utf-8"
                    else:
                        code, body, ctype = 404, b"not found: /healthz or /metrics\n", "text/plain; charset=utf-8"
                except Exception as e:  # noqa: BLE001 - a failing snapshot is a 500, never a crash
                    code, body, ctype = 500, f"error: {e}\n".encode(), "text/plain; charset=utf-8"
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # requests are not logged
                pass

        try:
            self.httpd = _BoundedServer((host, port), Handler)
        except OSError as e:
            raise UserError(f"metrics: cannot listen on {host}:{port}: {e.strerror or e}") from None
        if not is_loopback(host):
            log.warning(
                "metrics: listening on %s, outside this machine's loopback: anyone who can reach it sees the "
                "sound level, what the monitor hears (event counts per label) and whether it is paused; "
                "there is no login (bind 127.0.0.1, or firewall the port)",
                host,
            )
        self.address = f"{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
