"""MQTT figures on a real local mosquitto: sustained events/s through the sink (stored in
the outbox, published, PUBACKed) and backlog replay rate after an outage.

    .venv/bin/python scripts/bench_mqtt.py [--events 2000] [--outage-s 60]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures_mqtt import Broker

from monitor.config import MQTTConfig
from monitor.sinks.mqtt import MqttSink
from monitor.types import Event


def ev(seq):
    return Event(
        type="start",
        event_id=f"e{seq}",
        seq=seq,
        label="dog barking",
        score=0.9,
        peak_score=0.9,
        start_s=float(seq),
        end_s=None,
        duration_s=None,
        wall_time="2026-01-01T00:00:00.000Z",
        device_id="bench",
        source="bench",
        model="bench",
    )


def wait_empty(sink, timeout=600):
    t0 = time.perf_counter()
    while sink.status()["backlog"] and time.perf_counter() - t0 < timeout:
        time.sleep(0.01)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--outage-s", type=float, default=60.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        b = Broker(tmp).start()
        sink = MqttSink.from_config(
            MQTTConfig(host="127.0.0.1", port=b.port, reconnect_min_s=0.5, reconnect_max_s=2.0),
            device_id="bench",
            labels=["dog barking"],
            state_dir=tmp / "s",
            model_name="bench",
            source_name="bench",
        )
        while sink.status()["state"] != "connected":
            time.sleep(0.01)
        t0 = time.perf_counter()
        for i in range(1, a.events + 1):
            sink.publish(ev(i))
        dt = time.perf_counter() - t0 + wait_empty(sink)
        print(
            json.dumps(
                {
                    "metric": "mqtt_events_per_s_sustained",
                    "unit": "events/s",
                    "value": round(a.events / dt, 1),
                    "events": a.events,
                }
            )
        )
        b.stop()
        n = 0
        t_out = time.perf_counter()
        seq = a.events
        while time.perf_counter() - t_out < a.outage_s:  # one event every 0.1 s during the outage
            seq += 1
            n += 1
            sink.publish(ev(seq))
            time.sleep(0.1)
        backlog = sink.status()["backlog"]
        b = Broker(tmp, port=b.port).start()
        t1 = time.perf_counter()
        while sink.status()["state"] != "connected":
            time.sleep(0.01)
        t_conn = time.perf_counter() - t1
        replay = wait_empty(sink)
        print(
            json.dumps(
                {
                    "metric": "mqtt_backlog_replay",
                    "unit": "events/s",
                    "value": round(backlog / max(replay, 1e-9), 1),
                    "backlog": backlog,
                    "outage_s": a.outage_s,
                    "reconnect_s": round(t_conn, 2),
                    "replay_s": round(replay, 3),
                    "lost": sink.status()["backlog"],
                }
            )
        )
        sink.close()
        b.stop()


if __name__ == "__main__":
    main()
