"""Network stream sources through a real ffmpeg: an HTTP stream from 127.0.0.1 that drops the
connection mid-stream is monitored, ffmpeg is restarted, stream time stays monotonic."""

from __future__ import annotations

import io
import json
import os
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


class FileServer:
    """A WAV served whole (with Content-Length) at network speed, behind HTTP basic auth."""

    def __init__(self, data: bytes, user: str = "cam", password: str = "s3cret"):
        import base64

        self.connections = 0
        want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="cam"')
                    self.end_headers()
                    return
                outer.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        port = self.httpd.server_address[1]
        self.url = f"http://{user}:{password}@127.0.0.1:{port}/clip.wav"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def cmdlines() -> list[str]:
    """Every process's command line, as any local user can read it (``ps -eo args``)."""
    from pathlib import Path

    out = []
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(p.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return out


@needs_ffmpeg
def test_a_file_on_a_web_server_is_paced_ends_once_and_its_password_stays_off_the_command_line(tmp_path):
    s = FileServer(wav_bytes(4.0, 1))
    try:
        src = FfmpegSource(s.url)
        assert src.hidden and src.paced
        got: list = []
        seen_argv: list[str] = []

        def put(block):
            got.append(block)
            if len(got) == 5:
                seen_argv.extend(cmdlines())

        t0 = time.monotonic()
        src.run(put, threading.Event())
        took = time.monotonic() - t0
        audio = np.concatenate(got)[:, 0]
        assert abs(audio.size / 48000 - 4.0) < 0.05
        assert took > 3.5  # read at its own pace (-re), not at network speed
        assert src.finished  # delivered whole (its Content-Length): it has ended
        assert seen_argv and not [c for c in seen_argv if "s3cret" in c], [c for c in seen_argv if "ffmpeg" in c]
        assert [c for c in seen_argv if "ffmpeg" in c and "pipe:0" in c]  # fetched here, piped to ffmpeg
        assert not list(tmp_path.glob("sound-monitor-input-*"))
        assert s.connections == 1
    finally:
        s.close()


@needs_ffmpeg
def test_run_on_a_web_server_file_ends_with_the_file_no_replays_no_drops(tmp_path, tiny_clap_export):
    s = FileServer(wav_bytes(6.0, 2))
    scores = tmp_path / "scores.jsonl"
    try:
        r = cli(
            "run",
            "--source",
            s.url,
            "--no-tui",
            "--model",
            tiny_clap_export,
            "--labels",
            "tone,noise",
            "--scores",
            scores,
            state=tmp_path / "state",
            timeout=120,
        )
    finally:
        s.close()
    assert r.returncode == 0, r.stderr
    assert s.connections == 1  # played once: not reopened and replayed from the start
    assert "s3cret" not in r.stderr and "cam:***@" in r.stderr
    assert "dropped" not in r.stderr.split("finished:")[0]  # no drop warning during the run
    assert "0 windows dropped, 0 samples dropped" in r.stderr
    t = [json.loads(line)["t_s"] for line in scores.read_text().splitlines()]
    assert len(t) == 2 and t == sorted(t)  # a 6 s file: windows at 0 and 1 s (5 s windows, 1 s hop)


@needs_ffmpeg
def test_other_schemes_name_their_secret_url_in_a_private_list_that_ffmpeg_reads(tmp_path, monkeypatch):
    """The path of rtsp://user:pass@camera (no RTSP server here): ffmpeg opens the URL named
    in a 0600 ffconcat file, exercised with the basic-auth HTTP server."""
    import stat
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    s = FileServer(wav_bytes(2.0, 3))

    class ListSource(FfmpegSource):
        fetched_here = False  # what every non-http scheme does

    try:
        src = ListSource(s.url)
        seen: dict = {}

        def put(block):
            if not seen:
                seen["argv"] = [c for c in cmdlines() if "ffmpeg" in c and "concat" in c]
            seen.setdefault("n", 0)
            seen["n"] += len(block)

        path = src._write_input_list()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and "s3cret" in open(path).read()
        os.unlink(path)
        src.run(put, threading.Event())
        assert seen["argv"] and not [c for c in seen["argv"] if "s3cret" in c]
        assert abs(seen["n"] / 48000 - 2.0) < 0.05 and s.connections == 1
        assert not list(tmp_path.glob("sound-monitor-input-*"))  # removed once ffmpeg had read it
    finally:
        s.close()
