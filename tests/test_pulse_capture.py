"""The capture path against a real PortAudio device (issue 15 item 22).

A private PulseAudio daemon (its own socket under tmp) with a null sink ``vmic``; its
monitor ``vmic.monitor`` is the default source, which PortAudio sees through ALSA's pulse
plugin as the ``pulse`` and ``default`` devices. What ``paplay --device=vmic`` plays is
what the monitor captures. Skipped, with the reason, only where PulseAudio cannot start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import start

ROOT = Path(__file__).resolve().parents[1]
RATE = 48000
pytestmark = pytest.mark.slow  # real-time capture: 10-20 s each


class Pulse:
    def __init__(self, root: Path):
        self.root = root
        self.sock = root / "native"
        self.env = {
            **os.environ,
            "PULSE_SERVER": f"unix:{self.sock}",
            "PULSE_RUNTIME_PATH": str(root),
            "PULSE_STATE_PATH": str(root / "state"),
            "HOME": os.environ.get("HOME", str(root)),
        }
        self.proc: subprocess.Popen | None = None

    def ctl(self, *args, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["pactl", *args], env=self.env, capture_output=True, text=True, check=check, timeout=20)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "pulseaudio",
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disable-shm=yes",
                "--log-target=stderr",
                f"--load=module-native-protocol-unix socket={self.sock} auth-anonymous=1",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "pulse.log", "ab"),
        )
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            if self.sock.exists() and self.ctl("info", check=False).returncode == 0:
                self.load_sink()
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError((self.root / "pulse.log").read_text(errors="replace")[-400:])

    def load_sink(self) -> None:
        self.module = self.ctl(
            "load-module", "module-null-sink", "sink_name=vmic", f"rate={RATE}", "channels=1"
        ).stdout.strip()
        self.ctl("set-default-source", "vmic.monitor")

    def unload_sink(self) -> None:
        self.ctl("unload-module", self.module)

    def play(self, wav: Path) -> subprocess.Popen:
        return subprocess.Popen(
            ["paplay", "--device=vmic", str(wav)], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def pulse(tmp_path):
    missing = [c for c in ("pulseaudio", "pactl", "paplay") if shutil.which(c) is None]
    if missing:
        pytest.skip(f"PulseAudio is not installed ({', '.join(missing)}; `make test` installs it)")
    root = tmp_path / "pulse"
    root.mkdir()
    p = Pulse(root)
    try:
        p.start()
    except (RuntimeError, OSError) as e:
        pytest.skip(f"PulseAudio cannot start here: {e}")
    yield p
    p.stop()


def tone_wav(path: Path, seconds: float, level: float = 0.1) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * RATE)) / RATE
    x = level * (np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 1250 * t)) / 1.5
    sf.write(path, x.astype(np.float32), RATE, subtype="PCM_16")
    return path


def monitor(pulse: Pulse, tmp_path: Path, model: Path, *args, name: str = "m") -> tuple[subprocess.Popen, Path]:
    err = tmp_path / f"{name}.err"
    p = start(
        "run",
        "--no-tui",
        "--model",
        str(model),
        "--labels",
        "owl,dog barking,smoke alarm",
        "--scoring",
        "softmax",
        *map(str, args),
        state=tmp_path / f"state-{name}",
        base_env=pulse.env,
        stdout=subprocess.DEVNULL,
        stderr=open(err, "wb"),
        start_new_session=True,
    )
    return p, err


def wait_text(path: Path, needle: str, timeout: float = 60.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def stop(p: subprocess.Popen, err: Path) -> str:
    p.send_signal(signal.SIGINT)
    try:
        rc = p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    text = err.read_text(errors="replace")
    assert rc == 0, text
    assert "Traceback" not in text, text
    return text


def scores(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_devices_and_capture_equal_the_played_file(pulse, tiny_clap_export, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "monitor", "devices"],
        capture_output=True,
        text=True,
        env=pulse.env,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0 and "pulse" in r.stdout and "default" in r.stdout, r.stdout + r.stderr
    wav = tone_wav(tmp_path / "tone.wav", 9.0)
    ref = tmp_path / "file.jsonl"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor",
            "run",
            "--no-tui",
            "--fast",
            "--source",
            str(wav),
            "--model",
            str(tiny_clap_export),
            "--labels",
            "owl,dog barking,smoke alarm",
            "--scoring",
            "softmax",
            "--scores",
            str(ref),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "SOUND_MONITOR_STATE": str(tmp_path / "state-file")},
    )
    assert r.returncode == 0, r.stderr
    file_windows = scores(ref)[:4]  # windows wholly inside the tone
    cap = tmp_path / "mic.jsonl"
    p, err = monitor(pulse, tmp_path, tiny_clap_export, "--source", "mic:pulse", "--scores", cap)
    assert wait_text(err, "labels:")
    time.sleep(1.0)
    pulse.play(wav).wait(30)
    time.sleep(6.0)
    text = stop(p, err)
    assert "source mic:pulse" in text  # mic:NAME picked the named device
    loud = [w for w in scores(cap) if abs(w["level_dbfs"] - file_windows[0]["level_dbfs"]) < 0.5]
    assert len(loud) >= 2, scores(cap)  # whole windows of the played tone, at its level
    for w in loud:
        for lab, v in w["scores"].items():
            assert v == pytest.approx(file_windows[0]["scores"][lab], abs=0.02), (w, file_windows[0])


def test_device_lost_mid_run_and_back(pulse, tiny_clap_export, tmp_path):
    wav = tone_wav(tmp_path / "tone.wav", 40.0)
    cap, ev = tmp_path / "mic.jsonl", tmp_path / "events.jsonl"
    p, err = monitor(
        pulse, tmp_path, tiny_clap_export, "--source", "mic", "--threshold", "0.0", "--scores", cap, "--events", ev
    )
    assert wait_text(err, "labels:")
    player = pulse.play(wav)
    assert wait_text(ev, '"start"', timeout=60), err.read_text()
    pulse.unload_sink()  # the device goes away (the player with it)
    player.wait(10)
    assert wait_text(err, "source lost", timeout=30), err.read_text()
    time.sleep(3.0)
    pulse.load_sink()
    player = pulse.play(wav)
    assert wait_text(err, "resumed", timeout=60), err.read_text()
    time.sleep(7.0)
    text = stop(p, err)
    player.kill()
    evs = [json.loads(x) for x in ev.read_text().splitlines()]
    first = [e for e in evs if e["event_id"] == evs[0]["event_id"]]
    assert [e["type"] for e in first] == ["start", "end"]  # the open event ended at the loss
    assert any(e["type"] == "start" and e["start_s"] > first[1]["end_s"] for e in evs)  # and events after it
    t = [w["t_s"] for w in scores(cap)]
    assert t == sorted(t) and len(set(t)) == len(t)  # stream time monotonic across the gap
    assert "reopen" in text and "gap" in text


def test_device_missing_at_start_is_waited_for(pulse, tiny_clap_export, tmp_path):
    pulse.unload_sink()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("source:\n  input: mic\n  retry_max_s: 1\n")
    cap = tmp_path / "mic.jsonl"
    p, err = monitor(pulse, tmp_path, tiny_clap_export, "--config", cfg, "--scores", cap)
    assert wait_text(err, "source lost", timeout=60) or wait_text(err, "failed", timeout=5), err.read_text()
    time.sleep(2.0)
    assert p.poll() is None
    pulse.load_sink()
    player = pulse.play(tone_wav(tmp_path / "tone.wav", 8.0))
    assert wait_text(cap, "level_dbfs", timeout=60), err.read_text()
    player.wait(30)
    text = stop(p, err)
    assert "DEMO" not in text and "demo" not in "".join(w.get("source", "") for w in scores(cap))
    assert any(w["level_dbfs"] > -40 for w in scores(cap))
