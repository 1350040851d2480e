"""Level normalisation must not turn room tone into events: 12 minutes of quiet, real-looking
background through `run` (offline backend, real weights, default labels and thresholds)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
from cli_helpers import cli

from monitor.audio_io import read_audio
from monitor.bench import quiet_lead, room_tone
from monitor.models.level import rms_dbfs

RATE = 16000


def quiet_starts(uiowa_dir, rng: np.random.Generator) -> list[np.ndarray]:
    """The quiet lead-in of the real clips (before their sound starts): under -50 dBFS."""
    out = []
    with open(uiowa_dir / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            lead = quiet_lead(read_audio(uiowa_dir / row["path"], RATE).samples, RATE)
            if len(lead) >= 3200:
                out.append(lead * np.float32(10 ** (rng.uniform(-3, 3) / 20)))
    return out


@pytest.mark.slow  # about 1 min: 12 minutes of audio through the real offline model
def test_twelve_minutes_of_room_tone_start_no_event(tmp_path, uiowa_dir, offline_model_dir):
    rng = np.random.default_rng(17)
    leads = quiet_starts(uiowa_dir, rng)
    assert len(leads) >= 20
    parts, total = [], 0.0
    while total < 12 * 60:
        seg = room_tone(float(rng.uniform(20, 60)), RATE, rng)
        parts.append(seg)
        total += len(seg) / RATE
        lead = leads[int(rng.integers(len(leads)))]
        parts.append(lead + room_tone(len(lead) / RATE, RATE, rng))  # the clips' own quiet, over room tone
        total += len(lead) / RATE
    audio = np.concatenate(parts)
    level = rms_dbfs(audio[: len(audio) // RATE * RATE].reshape(-1, RATE))
    assert level.max() < -45.0 and np.median(level) > -65.0  # quiet, but above the -70 dBFS gate
    wav = tmp_path / "room.wav"
    sf.write(wav, audio, RATE, subtype="PCM_16")
    ev = tmp_path / "events.jsonl"
    scores = tmp_path / "scores.jsonl"
    r = cli(
        "run",
        "--source",
        wav,
        "--fast",
        "--no-tui",
        "--model",
        "offline",
        "--events",
        ev,
        "--scores",
        scores,
        state=tmp_path / "state",
        env_extra={"SOUND_MONITOR_MODELS": str(offline_model_dir.parent)},
        timeout=900,
    )
    assert r.returncode == 0, r.stderr
    # the shipped config.yaml's labels and thresholds (the run starts in the project folder)
    assert "labels: smoke alarm, dog barking, glass breaking, baby crying, doorbell" in r.stderr, r.stderr
    lines = [json.loads(l) for l in scores.read_text().splitlines()]
    assert len(lines) >= 700 and sum(not l.get("gated") for l in lines) >= 600  # windows were scored, not gated
    events = ev.read_text().splitlines() if ev.exists() else []
    top = max(max(l["scores"].values()) for l in lines)
    assert events == [], f"{len(events)} events on room tone (highest score {top:.3f}): {events[:3]}"
    print(f"room tone: {len(lines)} windows, no event, highest score {top:.3f}")
