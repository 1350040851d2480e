"""Home Assistant control and sensors on a real mosquitto: discovery of number / switch /
sensor / event entities, threshold and switches set over MQTT (validated, applied between
windows, kept across a restart), level / heard / attributes / event messages."""

from __future__ import annotations

import json
import signal

import paho.mqtt.publish as mqtt_publish
import pytest
from cli_helpers import cli, wait_until
from fixtures_mqtt import Subscriber

from monitor.runtime.control import ControlError, Controls, parse_switch, parse_threshold
from monitor.topics import Topics

P = "sound-monitor/dev1"
DOG, SMOKE = "dog_barking", "smoke_alarm"


def test_payloads_are_validated():
    assert parse_threshold(b"0.9") == 0.9 and parse_threshold(" 0 ") == 0.0
    for bad in (b"abc", b"2", b"-0.1", b"nan", b"inf", b""):
        with pytest.raises(ControlError):
            parse_threshold(bad)
    assert parse_switch(b"ON") is True and parse_switch(b"off") is False
    with pytest.raises(ControlError):
        parse_switch(b"yes")


def test_controls_persist_and_override_the_config(tmp_path):
    from monitor.config import Config

    cfg = Config(labels=["dog barking", "smoke alarm"], events={"threshold": 0.5, "hysteresis": 0.1})
    c = Controls(tmp_path, "dev1")
    c.set_threshold("dog barking", 0.8, c.rules(cfg)["dog barking"])
    c.set_label_enabled("smoke alarm", False)
    again = Controls(tmp_path, "dev1")  # a restart
    r = again.rules(cfg)
    assert r["dog barking"].threshold == 0.8 and r["dog barking"].off_level == pytest.approx(0.7)
    assert r["dog barking"].enabled and not r["smoke alarm"].enabled
    again.set_enabled(False)
    assert not any(x.enabled for x in Controls(tmp_path, "dev1").rules(cfg).values())
    (tmp_path / "control-dev1.json").write_text("{not json")
    assert Controls(tmp_path, "dev1").rules(cfg)["dog barking"].threshold == 0.5  # unreadable: the file's values


def test_command_topics_round_trip():
    t = Topics("sound-monitor", "dev1")
    assert t.command_of(f"{P}/label/{DOG}/threshold/set") == ("threshold", DOG)
    assert t.command_of(f"{P}/label/{DOG}/enabled/set") == ("enabled", DOG)
    assert t.command_of(f"{P}/enabled/set") == ("device_enabled", None)
    assert t.command_of(f"{P}/label/{DOG}/state") is None and t.command_of("other/dev1/enabled/set") is None


def events_of(sub, label):
    return [json.loads(p) for p in sub.on(f"{P}/events") if json.loads(p)["label"] == label]


def retained(sub, topic):
    got = sub.on(topic)
    return got[-1].decode() if got else None


@pytest.mark.slow  # about 40 s: two monitor runs against a real broker
def test_home_assistant_control_and_sensors_on_a_real_broker(mosquitto, tmp_path, tiny_clap_export):
    from test_shutdown_reload import Feeder, start_monitor

    b = mosquitto()
    sub = Subscriber(b.port)
    cfg = (
        "device_id: dev1\nlabels: [dog barking, smoke alarm]\n"
        "events: {threshold: 0.0, hysteresis: 0.0, min_windows: 1, cooldown_s: 0}\n"
        f"mqtt: {{host: 127.0.0.1, port: {b.port}}}\n"
    )
    extra = ("--model", str(tiny_clap_export))

    def send(topic, payload):
        mqtt_publish.single(topic, payload, qos=1, hostname="127.0.0.1", port=b.port)

    p, cfg_path = start_monitor(tmp_path, cfg, *extra)
    feed = Feeder(p, burst_s=6.0, rate_x=3.0)
    feed.start()
    err = tmp_path / "stderr.txt"
    try:
        # discovery: the label's number, switch and event entities, the device's sensors
        for topic in (
            f"homeassistant/number/dev1/{DOG}_threshold/config",
            f"homeassistant/switch/dev1/{DOG}_enabled/config",
            f"homeassistant/event/dev1/{SMOKE}/config",
            "homeassistant/switch/dev1/enabled/config",
            "homeassistant/sensor/dev1/level/config",
            "homeassistant/sensor/dev1/heard/config",
            "homeassistant/sensor/dev1/source_status/config",
        ):
            assert sub.wait_for(lambda s, t=topic: s.on(t), 30), (topic, err.read_text())
        num = json.loads(sub.on(f"homeassistant/number/dev1/{DOG}_threshold/config")[-1])
        assert num["command_topic"] == f"{P}/label/{DOG}/threshold/set" and (num["min"], num["max"], num["step"]) == (
            0,
            1,
            0.01,
        )
        ev = json.loads(sub.on(f"homeassistant/event/dev1/{SMOKE}/config")[-1])
        assert ev["event_types"] == ["start", "end"]
        bs = json.loads(sub.on(f"homeassistant/binary_sensor/dev1/{DOG}/config")[-1])
        assert bs["json_attributes_topic"] == f"{P}/label/{DOG}/attributes"
        assert sub.wait_for(lambda s: retained(s, f"{P}/label/{DOG}/threshold") == "0", 20)
        assert sub.wait_for(lambda s: retained(s, f"{P}/label/{DOG}/enabled") == "ON", 20)
        # threshold 0: both labels start at once; their event entities and attributes follow
        assert sub.wait_for(lambda s: events_of(s, "dog barking") and events_of(s, "smoke alarm"), 30)
        assert sub.wait_for(lambda s: s.on(f"{P}/label/{DOG}/event"), 10)
        fired = json.loads(sub.on(f"{P}/label/{DOG}/event")[0])
        assert fired["event_type"] == "start" and fired["event_id"] == events_of(sub, "dog barking")[0]["event_id"]
        attrs = json.loads(retained(sub, f"{P}/label/{DOG}/attributes"))
        assert set(attrs) == {"score", "peak_score", "source", "event_id"}
        assert sub.wait_for(lambda s: s.on(f"{P}/level") and s.on(f"{P}/heard"), 30)
        float(retained(sub, f"{P}/level"))
        heard = json.loads(retained(sub, f"{P}/heard"))
        assert heard["label"] in ("dog barking", "smoke alarm")
        # why labels at/above their threshold did not fire (threshold 0: every label is)
        assert set(heard["held"]) <= {"dog barking", "smoke alarm"}
        assert all(r.startswith(("confirming", "cooldown", "re-arming")) for r in heard["held"].values()), heard
        # garbage is ignored (logged once), the value stays
        for junk in (b"abc", b"2", b"nan"):
            send(f"{P}/label/{DOG}/threshold/set", junk)
        send(f"{P}/label/nope/threshold/set", b"0.5")
        assert wait_until(lambda: "MQTT command on" in err.read_text(), 10)
        assert retained(sub, f"{P}/label/{DOG}/threshold") == "0" and p.poll() is None
        # threshold 1.0: dog's open event ends between two windows, no new start; smoke goes on
        send(f"{P}/label/{DOG}/threshold/set", b"1.0")
        assert sub.wait_for(lambda s: retained(s, f"{P}/label/{DOG}/threshold") == "1", 10)
        assert sub.wait_for(lambda s: [e for e in events_of(s, "dog barking") if e["type"] == "end"], 20)
        n_dog = len(events_of(sub, "dog barking"))
        # smoke alarm switched off: its event ends; the device paused: retained OFF
        send(f"{P}/label/{SMOKE}/enabled/set", b"OFF")
        assert sub.wait_for(lambda s: [e for e in events_of(s, "smoke alarm") if e["type"] == "end"], 20)
        assert sub.wait_for(lambda s: retained(s, f"{P}/label/{SMOKE}/enabled") == "OFF", 10)
        send(f"{P}/enabled/set", b"OFF")
        assert sub.wait_for(lambda s: retained(s, f"{P}/enabled") == "OFF", 10)
        feed.sent_s0 = feed.sent_s
        assert wait_until(lambda: feed.sent_s > feed.sent_s0 + 4, 30)  # more windows go by
        assert len(events_of(sub, "dog barking")) == n_dog  # threshold 1.0 starts nothing
    finally:
        feed.stop.set()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    assert p.returncode == 0, err.read_text()
    # the values survive a restart: check-config shows them, the broker gets them again
    r = cli("check-config", cfg_path, state=tmp_path / "state", clean=True)
    assert "overrides of this file set over MQTT" in r.stdout and "threshold = 1.0" in r.stdout, r.stdout
    assert "switched off" in r.stdout and "device paused" in r.stdout
    sub2 = Subscriber(b.port)
    p, _ = start_monitor(tmp_path, cfg, *extra)
    feed = Feeder(p, burst_s=2.0, rate_x=2.0)
    feed.start()
    try:
        assert sub2.wait_for(lambda s: retained(s, f"{P}/label/{DOG}/threshold") == "1", 30)
        assert sub2.wait_for(lambda s: retained(s, f"{P}/enabled") == "OFF", 30)
    finally:
        feed.stop.set()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        sub.close()
        sub2.close()
