"""Network stream sources through a real ffmpeg: an HTTP stream from 127.0.0.1 that drops the
connection mid-stream is monitored, ffmpeg is restarted, stream time stays monotonic."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf
from cli_helpers import cli, start, wait_until

from monitor.sources import FfmpegSource, is_stream_url, redact_url

RATE = 16000


def wav_bytes(seconds: float, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.2 * np.sin(2 * np.pi * 600 * t) * (np.sin(2 * np.pi * 0.3 * t) > 0) + 0.02 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class FlakyStream:
    """Serves a 30 s WAV at 4x real time; the first connection is dropped after ~6 s of audio."""

    def __init__(self):
        self.connections = 0
        self.data = wav_bytes(30.0, 0)
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.connections += 1
                n = outer.connections
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.end_headers()
                cut = 44 + 6 * RATE * 2 if n == 1 else len(outer.data)
                step = RATE * 2 // 10  # 0.1 s of audio per write, 4x real time
                try:
                    for a in range(0, cut, step):
                        self.wfile.write(outer.data[a : min(a + step, cut)])
                        self.wfile.flush()
                        time.sleep(0.1 / 4)
                except (BrokenPipeError, ConnectionResetError):
                    return
                self.close_connection = True  # the first one: dropped mid-stream

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/live.wav"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="ffmpeg is not installed (apt-get install ffmpeg)"
)


def test_urls_are_stream_sources_and_passwords_are_redacted():
    assert is_stream_url("rtsp://cam.local/stream1") and is_stream_url("HTTPS://x/y")
    assert not is_stream_url("/tmp/x.wav") and not is_stream_url("mic:2") and not is_stream_url("file://x")
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/s") == "rtsp://admin:***@10.0.0.5:554/s"
    assert redact_url("no url here") == "no url here"


@needs_ffmpeg
def test_ffmpeg_source_delivers_the_stream_and_reports_how_it_ended(tmp_path):
    s = FlakyStream()
    try:
        src = FfmpegSource(s.url)
        got = []
        src.run(got.append, threading.Event())  # the first connection ends after ~6 s of audio
        audio = np.concatenate(got)[:, 0]
        assert src.sample_rate_hz == 48000 and 5.0 < audio.size / 48000 < 7.0
        assert np.abs(audio).max() > 0.1
        bad = FfmpegSource("http://127.0.0.1:9/nothing.wav")
        with pytest.raises(Exception, match="ffmpeg exited with status"):
            bad.run(lambda b: None, threading.Event())
    finally:
        s.close()


def test_missing_ffmpeg_is_one_line(tmp_path):
    r = cli(
        "run", "--source", "rtsp://u:secret@cam/s", "--no-tui", state=tmp_path / "s", env_extra={"PATH": "/nonexistent"}
    )
    assert r.returncode == 2 and "need ffmpeg" in r.stderr and "apt-get install ffmpeg" in r.stderr
    assert "secret" not in r.stderr and "Traceback" not in r.stderr


@needs_ffmpeg
def test_a_dropped_http_stream_is_restarted_and_stream_time_stays_monotonic(tmp_path, tiny_clap_export):
    s = FlakyStream()
    scores = tmp_path / "scores.jsonl"
    err = tmp_path / "err.txt"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("labels: [tone, noise]\nsource: {stall_timeout_s: 3.0, retry_max_s: 1.0}\n")
    with open(err, "wb") as ef:
        p = start(
            "run",
            "--config",
            cfg,
            "--source",
            s.url,
            "--no-tui",
            "--model",
            tiny_clap_export,
            "--scores",
            scores,
            state=tmp_path / "state",
            stdout=subprocess.DEVNULL,
            stderr=ef,
            start_new_session=True,
        )
    try:

        def lines():
            return [json.loads(l) for l in scores.read_text().splitlines()] if scores.exists() else []

        # 6 s, a drop, then the second connection's 30 s: stream time well past the first 6 s
        assert wait_until(lambda: s.connections >= 2 and len(lines()) >= 12, 120), err.read_text()
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        s.close()
    text = err.read_text()
    assert p.returncode == 0, text
    assert "source reopened: stream:http://127.0.0.1" in text
    t = [l["t_s"] for l in lines()]
    assert all(b > a for a, b in zip(t, t[1:])), t  # monotonic across the restart
    assert max(t) > 7.0
