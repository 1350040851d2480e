"""MQTT under hostile conditions (issue 15 items 4, 12-15, 21): a broker ACL that denies the
events topic, labels that change between runs and during outages, slugs and device ids that
must not collide, current Home Assistant discovery keys, and connection failures that
must be reported with their reason and retried with a real backoff. Real mosquitto."""

from __future__ import annotations

import logging
import time

import pytest
from cli_helpers import wait_until
from fixtures_mqtt import Subscriber, free_port
from test_mqtt import ev, make_certs

from monitor.config import MQTTConfig, TLSConfig, parse_config
from monitor.errors import UserError
from monitor.sinks.mqtt import MqttSink, parse_mqtt_url
from monitor.topics import Topics, device_slug, label_slug, label_slugs


def sink(port, state, labels=("dog barking", "smoke alarm"), device="dev1", **kw):
    kw.setdefault("reconnect_min_s", 0.2)
    kw.setdefault("reconnect_max_s", 1.0)
    cfg = MQTTConfig(host=kw.pop("host", "127.0.0.1"), port=port, **kw)
    return MqttSink.from_config(
        cfg, device_id=device, labels=list(labels), state_dir=state, model_name="test-model", source_name="test"
    )


def wait(pred, timeout=15.0) -> bool:
    return wait_until(pred, timeout)


ACL = """user sm
topic write sound-monitor/+/availability
topic write sound-monitor/+/label/#
topic write homeassistant/#
topic read homeassistant/status
"""


# -- item 4: a denied publish is not a delivery


def test_acl_denied_events_stay_in_outbox_and_are_reported(mosquitto, tmp_path, monkeypatch, caplog):
    b = mosquitto(users={"sm": "pw"}, acl=ACL)
    monkeypatch.setenv("SOUND_MONITOR_MQTT_PASSWORD", "pw")
    s = sink(b.port, tmp_path / "s5", username="sm")
    assert wait(lambda: s.status().state == "connected")
    with caplog.at_level(logging.ERROR, logger="monitor.sinks.mqtt"):
        for i in range(1, 5):
            s.publish(ev(i, kind="start" if i % 2 else "end"))
        assert wait(lambda: s.status().rejected == 4)
    assert s.status().backlog == 4  # not delivered, not forgotten
    assert "rejected" in s.status().state
    assert sum("rejected event seq" in r.message for r in caplog.records) == 1  # once, not per event
    s.close(timeout_s=0.5)
    # what MQTT 3.1.1 cannot tell: the same denial is acknowledged like a delivery (README)
    old = sink(b.port, tmp_path / "s3", username="sm", protocol="3.1.1")
    assert wait(lambda: old.status().state == "connected")
    old.publish(ev(1))
    assert wait(lambda: old.status().backlog == 0)
    assert old.status().rejected == 0
    old.close()


# -- item 12: retained discovery of labels that are gone is cleared


def retained(port) -> dict[str, bytes]:
    sub = Subscriber(port, topics=("homeassistant/#", "sound-monitor/#"))
    time.sleep(0.5)
    out = {t: p for t, p, r in sub.messages if r}
    sub.close()
    return out


def test_gone_labels_are_cleared_between_runs_and_after_outage(mosquitto, tmp_path):
    b = mosquitto(port=free_port())
    state = tmp_path / "state"
    s = sink(b.port, state, labels=["dog barking", "smoke alarm", "glass breaking"])
    assert wait(lambda: s.status().state == "connected")
    s.close()
    topics = Topics("sound-monitor", "dev1")
    disc = {lab: topics.discovery(label_slug(lab)) for lab in ("dog barking", "smoke alarm", "glass breaking")}
    assert set(disc.values()) <= set(retained(b.port))
    # the label list changes between runs
    s = sink(b.port, state, labels=["dog barking", "glass breaking"])
    assert wait(lambda: s.status().state == "connected")
    time.sleep(0.3)
    s.close()
    r = retained(b.port)
    assert disc["smoke alarm"] not in r and topics.state(label_slug("smoke alarm")) not in r
    assert disc["dog barking"] in r and disc["glass breaking"] in r
    # ... and during an outage (the broker is down when the label goes, and when this run ends)
    s = sink(b.port, state, labels=["dog barking", "glass breaking"])
    assert wait(lambda: s.status().state == "connected")
    b.stop()
    assert wait(lambda: s.status().state != "connected")
    s.set_labels(["dog barking"])
    s.close(timeout_s=0.3)
    b.start()
    s = sink(b.port, state, labels=["dog barking"])
    assert wait(lambda: s.status().state == "connected")
    time.sleep(0.3)
    s.close()
    r = retained(b.port)
    assert disc["glass breaking"] not in r and disc["dog barking"] in r


# -- item 13: a slug depends on its label alone; device ids never collide


def test_slugs_do_not_depend_on_other_labels():
    alone = label_slugs(["dog-barking"])["dog-barking"]
    assert label_slugs(["Dog barking", "dog-barking"])["dog-barking"] == alone
    assert label_slugs(["dog-barking", "Dog barking"])["dog-barking"] == alone
    assert label_slug("dog barking") == "dog_barking"  # plain labels keep their readable slug
    both = label_slugs(["日本", "label"])
    assert both["label"] == "label" and both["日本"] != "label"
    ids = {device_slug(d) for d in ("日本", "+#", "sound-monitor", "kitchen", "kitchen pi", "kitchen_pi")}
    assert len(ids) == 6 and device_slug("kitchen") == "kitchen"
    for d in ("日本", "+#", "a/b"):
        assert all(c.isalnum() or c in "_-" for c in device_slug(d)) and device_slug(d).isascii()


# -- item 14: Home Assistant's current discovery keys


def test_discovery_payload_uses_default_entity_id_and_origin():
    p = Topics("sound-monitor", "Kitchen-Pi").discovery_payload("dog barking", "dog_barking", "m", "1.2.3")
    assert "object_id" not in p
    assert p["default_entity_id"] == "binary_sensor.sound_monitor_kitchen_pi_dog_barking"
    assert p["origin"]["name"] == "sound-monitor" and p["origin"]["sw_version"] == "1.2.3"
    assert p["unique_id"] == "sound_monitor_Kitchen-Pi_dog_barking"  # unchanged: HA keeps the entity


# -- item 15: connection failures reported with their reason, real backoff, bounds checked


@pytest.mark.parametrize("case", ["refused", "dns", "wrong-ca", "wrong-host"])
def test_connection_failure_reason_is_logged_once(mosquitto, tmp_path, caplog, case):
    kw: dict = {}
    port = free_port()
    if case == "dns":
        kw["host"] = "no-such-broker.invalid"
    elif case in ("wrong-ca", "wrong-host"):
        (tmp_path / "server").mkdir()
        (tmp_path / "other").mkdir()
        # wrong-host: the certificate names broker.example, the monitor connects to 127.0.0.1
        certs = make_certs(tmp_path / "server", ["broker.example"] if case == "wrong-host" else None)
        b = mosquitto(tls={k: str(v) for k, v in certs.items()})
        port = b.port
        ca = make_certs(tmp_path / "other")["ca"] if case == "wrong-ca" else certs["ca"]
        kw["tls"] = TLSConfig(enabled=True, ca_file=str(ca))
    expect = {
        "refused": "connection refused",
        "dns": "cannot resolve",
        "wrong-ca": "certificate verification failed",
        "wrong-host": "certificate verification failed",
    }[case]
    with caplog.at_level(logging.WARNING, logger="monitor.sinks.mqtt"):
        s = sink(port, tmp_path / "state", **kw)
        assert wait(lambda: expect in s.status().state, timeout=20), s.status()
        time.sleep(1.5)  # several more attempts: still one line
        s.close(timeout_s=0.2)
    lines = [r for r in caplog.records if "cannot connect" in r.message]
    assert len(lines) == 1 and expect in lines[0].message and lines[0].levelno == logging.WARNING, [
        r.message for r in caplog.records
    ]


def test_wrong_password_backs_off_and_recovery_is_a_warning(mosquitto, tmp_path, monkeypatch, caplog):
    b = mosquitto(users={"sm": "right"})
    monkeypatch.setenv("SOUND_MONITOR_MQTT_PASSWORD", "wrong")
    with caplog.at_level(logging.INFO, logger="monitor.sinks.mqtt"):
        s = sink(b.port, tmp_path / "state", username="sm", reconnect_min_s=0.1, reconnect_max_s=4.0)
        time.sleep(6.0)
        s.close(timeout_s=0.2)
    attempts = b.log_text().count("New connection from 127.0.0.1")
    # doubling from 0.1 s (0.1, 0.2, 0.4, 0.8, 1.6, 3.2 + jitter) fits about 6 attempts in 6 s;
    # the old reset-on-every-disconnect made one every 0.1-0.2 s (30-60)
    assert 3 <= attempts <= 9, attempts
    refusals = [r for r in caplog.records if "refused the connection" in r.message]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING
    # recovery after an outage is a WARNING too, with how long it took
    c = mosquitto()
    s = sink(c.port, tmp_path / "state2")
    assert wait(lambda: s.status().state == "connected")
    with caplog.at_level(logging.INFO, logger="monitor.sinks.mqtt"):
        caplog.clear()
        c.stop()
        assert wait(lambda: s.status().state != "connected")
        c.start()
        assert wait(lambda: s.status().state == "connected", timeout=20)
    s.close()
    msgs = [(r.levelno, r.message) for r in caplog.records]
    assert any(lv == logging.WARNING and "connection to" in m and "lost" in m for lv, m in msgs), msgs
    assert any(lv == logging.WARNING and "again after" in m for lv, m in msgs), msgs


def test_backoff_bounds_are_validated_and_url_user_is_decoded():
    with pytest.raises(UserError, match="reconnect_max_s"):
        parse_config({"mqtt": {"host": "h", "reconnect_min_s": 100, "reconnect_max_s": 1}})
    assert parse_mqtt_url("mqtt://user%40example.com@broker")["mqtt.username"] == "user@example.com"
