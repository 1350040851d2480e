"""The web page: live view, history, an event's clip and curves, and corrections.

``WebSink`` is a sink (it is handed every window's scores, every event, the rules in force
and the run's status) and a remote control (``takes_commands``: thresholds, switches, the
device pause and taught vetoes and examples go to the control plane as ``Command``s, like MQTT's). It
serves the page from the standard library's threaded HTTP server (README "The web page"
says why) on ``web.listen`` (127.0.0.1:8765 by default); every asset ships in
``monitor/web/static/``. Live updates are Server-Sent Events.

The contract (README "Contracts"): ``GET /api/events?label=&since=&limit=`` (the event
schema, newest first), ``GET /api/live`` (SSE: one ``--scores`` line per window, ``held``
included), ``GET /api/labels`` (the rules in force), ``GET /healthz``.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from monitor.config import WebConfig, parse_listen
from monitor.errors import UserError
from monitor.eventstore import EventStore, StoredEvent, parse_since, to_csv
from monitor.sinks.base import Sink, SinkStatus
from monitor.types import Event, Scores
from monitor.web.auth import COOKIE, SESSION_S, Auth, check_bind, is_loopback, web_password

if TYPE_CHECKING:
    from monitor.runtime.control import CommandHandler, RulesInForce

log = logging.getLogger(__name__)

STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
CLIENT_QUEUE = 256  # messages a slow page may fall behind before it misses some
KEEPALIVE_S = 15.0
MAX_BODY = 16384
# a correction on an event (kept in the event store) -> the control plane's Command kind that
# teaches it ("forget_" + it takes it back on Undo)
TEACHES = {"not-this": "veto", "this-was": "example", "confirmed": "confirm"}


@dataclass
class PageInfo:
    """What the page shows about the run besides the scores (set at assembly)."""

    device: str
    model: str
    encoder: str = ""  # int8 / fp32 choice of the CLAP encoder
    gate_dbfs: float | None = None
    change_gate: bool = False
    sources: tuple[str, ...] = ()


@dataclass
class LiveState:
    """The latest of everything the live page shows (a page that connects starts from it)."""

    scores: dict[str, str] = field(default_factory=dict)  # source -> its last scores line
    open_events: dict[str, dict] = field(default_factory=dict)  # event_id -> start record
    status: dict = field(default_factory=dict)
    rules: dict = field(default_factory=dict)


def rules_json(rules: RulesInForce) -> dict:
    """``GET /api/labels``: each label's rule in force, its switch and vetoes, the device switch."""
    labels = []
    for name in rules.labels:
        r = rules.rules[name]
        labels.append(
            {
                "name": name,
                "threshold": r.threshold,
                "lowest": rules.lowest.get(name, 0.0),
                "enabled": rules.switches.get(name, True),
                "active": r.enabled,
                "off_reason": r.off_reason,
                "min_windows": r.min_windows,
                "within_windows": r.window_span,
                "vetoes": [v.name for v in rules.vetoes.get(name, ())],
            }
        )
    return {"device_enabled": rules.detection_enabled, "labels": labels}


def spectrogram(path: Path, rate: int = 16000, n_fft: int = 512, hop: int = 256, bins: int = 128) -> dict:
    """A clip's log-magnitude spectrogram as bytes (0..255, ``bins`` rows low to high, one
    column per ``hop``), base64: the page draws it on a canvas."""
    import numpy as np

    from monitor.audio_io import read_audio

    x = read_audio(path, rate).samples.astype(np.float32)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft).astype(np.float32), axis=1))[:, 1:]  # [F, n_fft/2]
    spec = spec.reshape(frames, bins, -1).mean(axis=2)
    db = 20 * np.log10(spec + 1e-9)
    top = float(db.max())
    img = np.clip((db - (top - 80.0)) / 80.0 * 255.0, 0, 255).astype(np.uint8).T  # [bins, F]
    return {
        "frames": int(frames),
        "bins": bins,
        "duration_s": round(len(x) / rate, 3),
        "max_hz": rate // 2,
        "data": base64.b64encode(img.tobytes()).decode(),
    }


class WebSink(Sink):
    name = "web"
    takes_commands = True

    def __init__(self, cfg: WebConfig, info: PageInfo, store: EventStore | None):
        assert cfg.listen is not None
        self.host, self.port = parse_listen(cfg.listen, "web.listen", "8765")
        password = web_password(cfg.password_file)
        check_bind(self.host, password)
        self.auth = Auth(password)
        self.info = info
        self.store = store
        self.live = LiveState()
        self._lock = threading.Lock()
        self._clients: list[queue.Queue] = []
        self.dropped = 0  # live messages a slow page missed
        self.stop = threading.Event()
        self._handler: CommandHandler | None = None
        self.server: ThreadingHTTPServer | None = None
        self.url = ""
        self.snapshot: object = None  # the run's numbers (on_status, every few seconds): /healthz

    # -- the server ------------------------------------------------------------------------
    def start(self) -> str | None:
        """Bind and serve; -> why it could not (a port in use: the monitor runs on without it)."""
        handler = type("Handler", (_Handler,), {"sink": self})
        try:
            self.server = ThreadingHTTPServer((self.host, self.port), handler)
        except OSError as e:
            return f"web page not started: cannot listen on {self.host}:{self.port}: {e.strerror or e}"
        self.server.daemon_threads = True
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, name="web", daemon=True).start()
        return None

    def close(self) -> None:
        self.stop.set()
        self._broadcast("bye", "{}")
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # -- sink ------------------------------------------------------------------------------
    def attach_commands(self, handler: CommandHandler) -> None:
        self._handler = handler

    def on_scores(self, scores: Scores) -> None:
        line = scores.to_json_line(with_source=True)
        with self._lock:
            self.live.scores[scores.source] = line  # parsed only when a page asks for the state
        self._broadcast("message", line)

    def publish(self, event: Event) -> None:
        rec = event.to_dict()
        with self._lock:
            if event.type == "start":
                self.live.open_events[event.event_id] = rec
            else:
                self.live.open_events.pop(event.event_id, None)
        self._broadcast("event", json.dumps(rec))

    def on_rules(self, rules: RulesInForce) -> None:
        data = rules_json(rules)
        with self._lock:
            self.live.rules = data
        self._broadcast("rules", json.dumps(data))

    def on_status(self, snapshot: object) -> None:
        from dataclasses import asdict, is_dataclass

        self.snapshot = snapshot
        snap = asdict(snapshot) if is_dataclass(snapshot) and not isinstance(snapshot, type) else {}
        status = {
            "sources": [
                {"name": s["name"], "status": s["status"], "detail": s["detail"], "level_dbfs": s["level_dbfs"]}
                for s in snap.get("sources", [])
            ],
            "mqtt_connected": snap.get("mqtt_connected"),
            "outbox_pending": snap.get("outbox_pending"),
            "dropped_live_messages": self.dropped,
        }
        with self._lock:
            self.live.status = status
        self._broadcast("status", json.dumps(status))

    def status(self) -> SinkStatus:
        return SinkStatus(state=f"{len(self._clients)} page(s) open" if self.server else "off")

    # -- live messages -----------------------------------------------------------------------
    def _broadcast(self, kind: str, data: str) -> None:
        with self._lock:
            clients = list(self._clients)
        for q in clients:
            try:
                q.put_nowait((kind, data))
            except queue.Full:
                self.dropped += 1

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(maxsize=CLIENT_QUEUE)
        with self._lock:
            self._clients.append(q)
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            if q in self._clients:
                self._clients.remove(q)

    def state(self) -> dict:
        with self._lock:
            return {
                "info": self.info.__dict__ | {"sources": list(self.info.sources)},
                "rules": self.live.rules,
                "scores": {k: json.loads(v) for k, v in self.live.scores.items()},
                "open_events": list(self.live.open_events.values()),
                "status": self.live.status,
            }

    def command(self, kind: str, label: str | None, payload: str, origin: str | None = None) -> str | None:
        from monitor.runtime.control import Command

        if self._handler is None:
            return "the monitor is not taking commands yet"
        return self._handler(Command(kind, label, payload, via="the web page", origin=origin))  # type: ignore[arg-type]


def _query(qs: dict[str, list[str]], key: str) -> str | None:
    v = qs.get(key)
    return v[0] if v and v[0] != "" else None


class _Handler(BaseHTTPRequestHandler):
    sink: WebSink
    protocol_version = "HTTP/1.1"
    server_version = "sound-monitor"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("web %s: %s", self.address_string(), format % args)

    # -- helpers -------------------------------------------------------------------------
    def _token(self) -> str | None:
        c = SimpleCookie()
        try:
            c.load(self.headers.get("Cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie is no session
            return None
        m = c.get(COOKIE)
        return m.value if m else None

    def _send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None, cache: bool = False
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cache-Control", "private, max-age=300" if cache else "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), "application/json", headers)

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        """On loopback only a loopback Host is served (a DNS-rebinding page cannot read it)."""
        if not is_loopback(self.sink.host):
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        return is_loopback(host)

    def _authed(self) -> bool:
        return not self.sink.auth.required or self.sink.auth.session(self._token()) is not None

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError("request too large")
        raw = self.rfile.read(n) if n else b"{}"
        data = json.loads(raw or b"{}")
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    # -- GET -----------------------------------------------------------------------------
    def do_GET(self) -> None:
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        url = urlsplit(self.path)
        path, qs = url.path, parse_qs(url.query)
        try:
            if path in ("/", "/index.html"):
                return self._static("index.html")
            if path == "/favicon.ico":
                return self._static("favicon.svg")
            if path.startswith("/static/"):
                return self._static(path.removeprefix("/static/"))
            if path == "/healthz":
                return self._healthz()
            if path == "/api/session":
                return self._session()
            if not path.startswith("/api/"):
                return self._error(HTTPStatus.NOT_FOUND, "no such page")
            if not self._authed():
                return self._error(HTTPStatus.UNAUTHORIZED, "log in first")
            return self._api_get(path, qs)
        except (ValueError, UserError) as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except (BrokenPipeError, ConnectionResetError):
            return None

    do_HEAD = do_GET

    def _static(self, name: str) -> None:
        if name not in STATIC:
            return self._error(HTTPStatus.NOT_FOUND, "no such file")
        body = resources.files("monitor.web").joinpath("static").joinpath(name).read_bytes()
        self._send(HTTPStatus.OK, body, STATIC[name])

    def _healthz(self) -> None:
        from monitor.runtime.metrics import Snapshot, health

        snap = self.sink.snapshot
        code, body = health(snap) if isinstance(snap, Snapshot) else (503, "starting")
        self._send(code, (body + "\n").encode(), "text/plain; charset=utf-8")

    def _session(self) -> None:
        auth = self.sink.auth
        if not auth.required:
            return self._json(HTTPStatus.OK, {"auth": False, "logged_in": True, "csrf": auth.open_csrf})
        s = auth.session(self._token())
        self._json(HTTPStatus.OK, {"auth": True, "logged_in": s is not None, "csrf": s.csrf if s else None})

    def _filters(self, qs: dict[str, list[str]]) -> dict:
        since = _query(qs, "since")
        day = _query(qs, "day")
        f: dict[str, Any] = {"label": _query(qs, "label"), "source": _query(qs, "source")}
        if day:
            start = parse_since(day)
            f["since"], f["until"] = start, start + 86400
        elif since:
            f["since"] = parse_since(since)
        return f

    def _store(self) -> EventStore:
        if self.sink.store is None:
            raise ValueError("the event store is off (store.enabled: false)")
        return self.sink.store

    def _event(self, eid: str) -> StoredEvent:
        ev = self._store().event(eid)
        if ev is None:
            raise LookupError(eid)
        return ev

    def _api_get(self, path: str, qs: dict[str, list[str]]) -> None:
        sink = self.sink
        if path == "/api/live":
            return self._live()
        if path == "/api/state":
            return self._json(HTTPStatus.OK, sink.state())
        if path == "/api/labels":
            return self._json(HTTPStatus.OK, sink.live.rules)
        if path in ("/api/events", "/api/events.csv", "/api/events.json"):
            limit = _query(qs, "limit")
            n = int(limit) if limit else (None if path != "/api/events" else 500)
            if n is not None and n < 1:
                raise ValueError("limit must be at least 1")
            events = self._store().events(limit=n, **self._filters(qs))
            if path == "/api/events.csv":
                return self._send(
                    HTTPStatus.OK,
                    to_csv(events).encode(),
                    "text/csv; charset=utf-8",
                    {"Content-Disposition": 'attachment; filename="events.csv"'},
                )
            extra = {"Content-Disposition": 'attachment; filename="events.json"'} if path.endswith(".json") else None
            return self._json(HTTPStatus.OK, events, extra)
        if path == "/api/counts":
            by = _query(qs, "by") or "hour"
            if by not in ("hour", "day"):
                raise ValueError("by: hour or day")
            offset = float(_query(qs, "tz_offset_min") or 0) * 60
            rows = self._store().counts(by, utc_offset_s=offset, **self._filters(qs))
            return self._json(HTTPStatus.OK, [{"bucket": b, "events": n} for b, n in rows])
        if path == "/api/corrections":
            return self._json(HTTPStatus.OK, self._store().corrections())
        if path.startswith("/api/suggest/"):
            label = unquote(path.removeprefix("/api/suggest/"))
            return self._json(HTTPStatus.OK, self._store().suggest_threshold(label))
        if path.startswith("/api/events/"):
            parts = path.removeprefix("/api/events/").split("/")
            try:
                ev = self._event(parts[0])
            except LookupError:
                return self._error(HTTPStatus.NOT_FOUND, "no such event")
            clip = Path(ev.clip) if ev.clip else None
            if len(parts) == 1:
                return self._json(
                    HTTPStatus.OK,
                    {
                        "event": ev.record,
                        "open": ev.ended is None,
                        "clip": bool(clip and clip.is_file()),
                        "curve": self._store().curve(ev),
                        "corrections": [c for c in self._store().corrections() if c["event_id"] == ev.event_id],
                    },
                )
            if clip is None or not clip.is_file():
                return self._error(HTTPStatus.NOT_FOUND, "no clip kept for this event")
            if parts[1:] == ["clip"]:
                ctype = "audio/flac" if clip.suffix == ".flac" else "audio/wav"
                return self._send(HTTPStatus.OK, clip.read_bytes(), ctype, cache=True)
            if parts[1:] == ["spectrogram"]:
                return self._json(HTTPStatus.OK, spectrogram(clip))
        return self._error(HTTPStatus.NOT_FOUND, "no such endpoint")

    def _live(self) -> None:
        sink = self.sink
        q = sink.subscribe()
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            while not sink.stop.is_set():
                try:
                    kind, data = q.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    self.wfile.write(b": keepalive\n\n")
                    self.wfile.flush()
                    continue
                if kind == "bye":
                    return
                head = b"" if kind == "message" else f"event: {kind}\n".encode()
                self.wfile.write(head + b"data: " + data.encode() + b"\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            return
        finally:
            sink.unsubscribe(q)

    # -- POST ----------------------------------------------------------------------------
    def do_POST(self) -> None:
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        path = urlsplit(self.path).path
        auth = self.sink.auth
        try:
            body = self._body()
        except ValueError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        if path == "/api/login":
            return self._login(body)
        if not self._authed():
            return self._error(HTTPStatus.UNAUTHORIZED, "log in first")
        if not auth.csrf_ok(self._token(), self.headers.get("X-CSRF-Token")):
            return self._error(HTTPStatus.FORBIDDEN, "missing or wrong CSRF token (reload the page)")
        if path == "/api/logout":
            auth.logout(self._token())
            return self._json(HTTPStatus.OK, {"ok": True}, {"Set-Cookie": f"{COOKIE}=; Max-Age=0; Path=/"})
        try:
            why = self._api_post(path, body)
        except LookupError:
            return self._error(HTTPStatus.NOT_FOUND, "no such event or correction")
        except (ValueError, UserError) as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        if isinstance(why, str):
            return self._error(HTTPStatus.BAD_REQUEST, why)
        return self._json(HTTPStatus.OK, why or {"ok": True})

    def _login(self, body: dict) -> None:
        auth = self.sink.auth
        client = self.client_address[0]
        if not auth.required:
            return self._json(HTTPStatus.OK, {"ok": True})
        if auth.limited(client):
            return self._error(HTTPStatus.TOO_MANY_REQUESTS, "too many failed logins: wait a minute")
        token = auth.login(client, str(body.get("password", "")))
        if token is None:
            log.warning("web page: a failed login from %s", client)
            return self._error(HTTPStatus.UNAUTHORIZED, "wrong password")
        cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={SESSION_S}"
        self._json(HTTPStatus.OK, {"ok": True}, {"Set-Cookie": cookie})

    def _api_post(self, path: str, body: dict) -> str | dict | None:
        sink = self.sink
        parts = [unquote(p) for p in path.removeprefix("/api/").split("/")]
        if parts == ["device", "enabled"]:
            return sink.command("device_enabled", None, "ON" if body.get("on") else "OFF")
        if len(parts) == 3 and parts[0] == "labels" and parts[2] == "threshold":
            value = body.get("value")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                value = f"{value:.4f}".rstrip("0").rstrip(".")
            return sink.command("threshold", parts[1], str(value))
        if len(parts) == 3 and parts[0] == "labels" and parts[2] == "enabled":
            return sink.command("enabled", parts[1], "ON" if body.get("on") else "OFF")
        if len(parts) == 3 and parts[0] == "events" and parts[2] == "not-this":
            return self._teach(parts[1], None)
        if len(parts) == 3 and parts[0] == "events" and parts[2] == "this-was":
            label = body.get("label")
            if not isinstance(label, str) or not label:
                return "this-was needs the label it was"
            return self._teach(parts[1], label)
        if len(parts) == 3 and parts[0] == "corrections" and parts[2] == "undo":
            return self._undo(int(parts[1]))
        return "no such action"

    def _teach(self, eid: str, was: str | None) -> str | dict:
        """ "Not this sound" (``was`` None): the event's clip becomes a veto of its label
        (enroll --veto's path); "this was LABEL": an example of that label; "yes, that was"
        (``was`` the event's own label): a confirmation (its score unchanged; veto clips must
        be nearer than it to count)."""
        store = self._store()
        ev = self._event(eid)
        if not ev.clip or not Path(ev.clip).is_file():
            return "no clip kept for this event (clips.enabled: true keeps them)"
        correction = "not-this" if was is None else "confirmed" if was == ev.label else "this-was"
        label = ev.label if was is None else was
        why = self.sink.command(TEACHES[correction], label, str(ev.clip), origin=f"event {ev.event_id}")
        if why:
            return why
        name = Path(ev.clip).name
        cid = store.add_correction(correction, label, name, ev.event_id)
        return {"ok": True, "correction": cid, "clip": name, "label": label}

    def _undo(self, cid: int) -> str | dict:
        store = self._store()
        done = store.undo_correction(cid)
        if done is None:
            return "no such correction, or already undone"
        if done["kind"] in TEACHES:
            why = self.sink.command(f"forget_{TEACHES[done['kind']]}", done["label"], done["name"])
            if why:
                return why
        return {"ok": True}


def start_web(sink: WebSink, say: Callable[[str], None]) -> None:
    problem = sink.start()
    if problem:
        say(problem + " (the monitor runs on)")
    else:
        say(f"web page: {sink.url}" + (" (password required)" if sink.auth.required else ""))
