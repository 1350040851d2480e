"""The web page's costs, measured (issue 30): page load, SSE delay, the server's extra RSS and
CPU with one page open, /api/events on a store of a million events, and the web stack.

    python scripts/bench_web.py [--events 1000000] [--minutes 2] [--json out.json]

- **store**: a store of ``--events`` events (10 labels, 2 sources, 90 days) built through
  ``EventStore``'s own insert; its size, and the median time of ``/api/events`` queries
  (newest 100, one label, the last 24 h) and ``/api/counts`` over the real HTTP server.
- **page**: a ``WebSink`` in this process and Debian's Chromium (Playwright): page load
  (navigation to the bars drawn, median of 5) and the delay from ``on_scores`` (the moment
  a window's scores reach the sinks) to the message's arrival in the page (one a second, 30).
- **run**: the real monitor (offline backend) on a real-time stream of room tone with
  clips, ``--minutes`` long, once with ``--web off`` and once with the page open in
  Chromium: RSS (VmHWM) and CPU seconds of the monitor process, the difference.
- **stack**: a minimal JSON endpoint on the standard library's threaded server against
  Starlette + uvicorn (when installed): RSS after start and CPU for 2000 requests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.bench import cpu_info  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cost(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak RSS MB) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / tick
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


def timed(fn, n: int = 20) -> float:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(out), 2)


# -- a million events ----------------------------------------------------------------------------
def bench_store(n: int, tmp: Path) -> dict:
    from monitor.config import WebConfig
    from monitor.eventstore import EventStore
    from monitor.types import Event
    from monitor.web.server import PageInfo, WebSink

    path = tmp / "events.sqlite"
    st = EventStore(path)
    now = time.time()
    labels = [f"label {i}" for i in range(10)]
    t0 = time.perf_counter()
    batch = 20000
    for a in range(0, n, batch):
        with st._lock, st.db:
            rows = []
            for i in range(a, min(n, a + batch)):
                at = now - 90 * 86400 * (1 - i / n)
                ev = Event(
                    "end",
                    f"{i:032x}",
                    i + 1,
                    labels[i % 10],
                    0.6,
                    0.7,
                    10.0,
                    15.0,
                    5.0,
                    time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at + 5)),
                    "dev",
                    f"source {i % 2}",
                    "m",
                    start_time=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at)),
                )
                rows.append(
                    (ev.event_id, ev.seq, ev.label, ev.source, at, at + 5, "r", 10.0, 15.0, 0.7, None, ev.to_json())
                )
            st.db.executemany(
                "INSERT INTO events (event_id, seq, label, source, at, ended, run, start_s, end_s, peak, clip, end_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
    build_s = time.perf_counter() - t0
    st.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size_mb = path.stat().st_size / 1e6
    port = free_port()
    sink = WebSink(WebConfig(listen=str(port)), PageInfo(device="dev", model="m"), st)
    assert sink.start() is None
    base = f"http://127.0.0.1:{port}"

    def get(q: str):
        return lambda: urllib.request.urlopen(base + q).read()

    out = {
        "events": n,
        "build_s": round(build_s, 1),
        "file_mb": round(size_mb, 1),
        "newest_100_ms": timed(get("/api/events?limit=100")),
        "one_label_100_ms": timed(get("/api/events?label=label%203&limit=100")),
        "last_24h_ms": timed(get("/api/events?since=24h&limit=500")),
        "counts_per_day_30d_ms": timed(get("/api/counts?by=day&since=30d")),
        "counts_per_hour_one_day_ms": timed(get(f"/api/counts?by=hour&day={time.strftime('%Y-%m-%d')}")),
    }
    sink.close()
    st.close()
    return out


# -- the page in a browser -------------------------------------------------------------------------
def bench_page(tmp: Path) -> dict:
    from playwright.sync_api import sync_playwright

    from monitor.config import WebConfig
    from monitor.eventstore import EventStore
    from monitor.types import Scores
    from monitor.web.server import PageInfo, WebSink

    port = free_port()
    sink = WebSink(
        WebConfig(listen=str(port)), PageInfo(device="dev", model="m", sources=("mic",)), EventStore(tmp / "p.db")
    )
    assert sink.start() is None
    from monitor.events import LabelRule
    from monitor.runtime.control import RulesInForce

    labels = ("dog barking", "smoke alarm", "glass breaking")
    rules = {k: LabelRule(0.5, 0.4, 2, 0.0, 60.0, hysteresis=0.1) for k in labels}
    sink.on_rules(RulesInForce(labels, rules, {k: True for k in labels}, {k: 0.0 for k in labels}, True))
    base = f"http://127.0.0.1:{port}/#/live"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        page = b.new_page()
        loads = []
        for _ in range(5):
            t = time.perf_counter()
            page.goto(base)
            page.wait_for_selector("#bars .row")
            loads.append((time.perf_counter() - t) * 1000)
            page.goto("about:blank")
        page.goto(base)
        page.wait_for_selector("#bars .row")
        page.wait_for_function("() => document.getElementById('conn').textContent === 'live'")
        page.evaluate(
            "window.__arrivals = []; S.live.addEventListener('message', (m) => "
            "window.__arrivals.push([JSON.parse(m.data).t_s, Date.now()]))"
        )
        sent = {}
        for i in range(30):
            t = float(i)
            sent[t] = time.time() * 1000
            sink.on_scores(Scores(i, t, t + 5, -30.0, labels, (0.1 * (i % 9), 0.2, 0.3), source="mic"))
            time.sleep(1.0)
        arrivals = page.evaluate("window.__arrivals")
        b.close()
    sink.close()
    delays = [at - sent[t] for t, at in arrivals if t in sent]
    return {
        "page_load_ms_median": round(statistics.median(loads), 1),
        "sse_delay_ms_median": round(statistics.median(delays), 1),
        "sse_delay_ms_max": round(max(delays), 1),
        "sse_messages": len(delays),
    }


# -- the real monitor with and without the page ----------------------------------------------------------
def make_stream(path: Path, minutes: float) -> Path:
    import numpy as np
    import soundfile as sf

    from monitor.bench import room_tone

    rate = 16000
    rng = np.random.default_rng(5)
    y = room_tone(int(minutes * 60), rate, rng)[: int(minutes * 60 * rate)].astype(np.float32)
    demo = ROOT / "monitor" / "demo"
    from monitor.audio_io import read_audio

    clips = [read_audio(demo / f, rate).samples for f in ("dog.mp3", "rooster.mp3", "cow.mp3")]
    for k, t0 in enumerate(range(10, int(minutes * 60) - 10, 30)):
        x = clips[k % 3][: 6 * rate] * 0.3
        a = t0 * rate
        y[a : a + len(x)] += x[: len(y) - a]
    sf.write(path, y, rate, subtype="PCM_16")
    return path


def run_monitor(src: Path, tmp: Path, web: bool, minutes: float) -> dict:
    state = tmp / ("state-web" if web else "state-noweb")
    cfg = tmp / "config.yaml"
    cfg.write_text("labels: [dog barking, rooster crowing, cow mooing]\nevents: {threshold: 0.5}\n")
    port = free_port()
    env = {**os.environ, "SOUND_MONITOR_STATE": str(state), "NO_COLOR": "1"}
    args = [sys.executable, "-m", "monitor", "run", "--source", str(src), "--no-tui", "--model", "offline"]
    args += ["--config", str(cfg), "--web", str(port) if web else "off"]
    p = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=ROOT)
    browser = None
    try:
        if web:
            from playwright.sync_api import sync_playwright

            pw = sync_playwright().start()
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
            page = browser.new_page()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    page.goto(f"http://127.0.0.1:{port}/#/live")
                    page.wait_for_selector("#bars .row", timeout=5000)
                    break
                except Exception:  # noqa: BLE001 - the server is not up yet
                    time.sleep(0.5)
        time.sleep(minutes * 60 - 5)
        cpu, rss = proc_cost(p.pid)
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(30)
        if browser is not None:
            browser.close()
            pw.stop()
    return {"cpu_s": round(cpu, 2), "rss_peak_mb": round(rss, 1)}


# -- the web stack ---------------------------------------------------------------------------------
STDLIB_SERVER = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        b = json.dumps({"ok": True, "labels": list(range(20))}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self, *a): pass
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("up", flush=True); s.serve_forever()
"""
STARLETTE_SERVER = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
async def ep(request):
    return JSONResponse({"ok": True, "labels": list(range(20))})
app = Starlette(routes=[Route("/", ep)])
print("up", flush=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def bench_stack(code: str, requests: int = 2000) -> dict:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-c", code, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/").read()
                break
            except OSError:
                time.sleep(0.1)
        cpu0, rss0 = proc_cost(p.pid)
        t = time.perf_counter()
        for _ in range(requests):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/").read()
        wall = time.perf_counter() - t
        cpu1, rss1 = proc_cost(p.pid)
    finally:
        p.terminate()
        p.wait(10)
    return {
        "rss_after_start_mb": round(rss0, 1),
        "rss_peak_mb": round(rss1, 1),
        "server_cpu_ms_per_request": round((cpu1 - cpu0) / requests * 1000, 3),
        "wall_ms_per_request": round(wall / requests * 1000, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--minutes", type=float, default=2.0, help="each real-time monitor run")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: store,page,run,stack")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    out: dict = {"cpu": cpu_info()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if "stack" not in skip:
            out["stack"] = {"stdlib": bench_stack(STDLIB_SERVER)}
            try:
                import starlette  # noqa: F401
                import uvicorn  # noqa: F401

                out["stack"]["starlette_uvicorn"] = bench_stack(STARLETTE_SERVER)
            except ImportError:
                out["stack"]["starlette_uvicorn"] = "not installed"
            print("stack", json.dumps(out["stack"]), flush=True)
        if "page" not in skip:
            out["page"] = bench_page(tmp)
            print("page", json.dumps(out["page"]), flush=True)
        if "run" not in skip:
            src = make_stream(tmp / "stream.wav", args.minutes)
            off = run_monitor(src, tmp, False, args.minutes)
            on = run_monitor(src, tmp, True, args.minutes)
            out["run"] = {
                "minutes": args.minutes,
                "web_off": off,
                "web_on_one_page": on,
                "extra_cpu_s_per_hour": round((on["cpu_s"] - off["cpu_s"]) * 60 / args.minutes, 1),
                "extra_rss_mb": round(on["rss_peak_mb"] - off["rss_peak_mb"], 1),
            }
            print("run", json.dumps(out["run"]), flush=True)
        if "store" not in skip:
            out["store"] = bench_store(args.events, tmp)
            print("store", json.dumps(out["store"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
