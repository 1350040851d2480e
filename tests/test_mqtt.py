"""MQTT sink against a real mosquitto on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import cli, wait_until
from fixtures_mqtt import Subscriber
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import MQTTConfig, TLSConfig
from monitor.errors import UserError
from monitor.sinks.mqtt import MqttSink, parse_mqtt_url
from monitor.topics import label_slugs, slugify
from monitor.types import Event


def ev(seq, label="dog barking", kind="start"):
    return Event(
        type=kind,
        event_id=f"id{(seq + 1) // 2}",
        seq=seq,
        label=label,
        score=0.9,
        peak_score=0.9,
        start_s=float(seq),
        end_s=None if kind == "start" else seq + 1.0,
        duration_s=None if kind == "start" else 1.0,
        wall_time="2026-01-01T00:00:00.000Z",
        device_id="dev1",
        source="test",
        model="m",
    )


def sink_for(port, tmp_path, labels=("dog barking", "smoke alarm"), **kw):
    cfg = MQTTConfig(host="127.0.0.1", port=port, reconnect_min_s=0.2, reconnect_max_s=1.0, **kw)
    return MqttSink.from_config(
        cfg,
        device_id="dev1",
        labels=list(labels),
        state_dir=tmp_path / "state",
        model_name="test-model",
        source_name="test",
    )


def events_received(sub):
    return [json.loads(p) for p in sub.on("sound-monitor/dev1/events")]


def test_events_state_and_discovery(mosquitto, tmp_path):
    b = mosquitto()
    sub = Subscriber(b.port)
    sink = sink_for(b.port, tmp_path)
    assert sub.wait_for(lambda s: s.on("sound-monitor/dev1/availability") == [b"online"])
    sent = [ev(1), ev(2, kind="end"), ev(3, "smoke alarm"), ev(4, "smoke alarm", "end")]
    for e in sent:
        sink.publish(e)
    assert sub.wait_for(lambda s: len(events_received(s)) == 4)
    got = events_received(sub)
    assert got == [e.to_dict() for e in sent]
    # the subscriber can have them before the broker's PUBACKs reach the sink: then it drains
    assert wait_until(lambda: sink.status().backlog == 0, timeout=10.0), sink.status()
    assert sink.status().state == "connected"
    disc = json.loads(sub.on("homeassistant/binary_sensor/dev1/dog_barking/config")[-1])
    assert disc["device_class"] == "sound" and disc["state_topic"] == "sound-monitor/dev1/label/dog_barking/state"
    assert disc["availability_topic"] == "sound-monitor/dev1/availability"
    assert disc["unique_id"] == "sound_monitor_dev1_dog_barking" and disc["device"]["model"] == "test-model"
    assert sub.on("sound-monitor/dev1/label/dog_barking/state")[-1] == b"OFF"
    # retained messages are there for a newcomer
    sink.set_labels(["dog barking"])  # smoke alarm removed -> empty retained discovery
    time.sleep(0.5)
    late = Subscriber(b.port)
    assert late.wait_for(lambda s: s.on("sound-monitor/dev1/availability") == [b"online"])
    assert json.loads(late.on("homeassistant/binary_sensor/dev1/dog_barking/config")[0])["name"] == "dog barking"
    assert late.on("homeassistant/binary_sensor/dev1/smoke_alarm/config") == []
    assert late.on("sound-monitor/dev1/label/dog_barking/state") == [b"OFF"]
    # Home Assistant restarts: discovery is re-sent
    n = len(sub.on("homeassistant/binary_sensor/dev1/dog_barking/config"))
    sub.c.publish("homeassistant/status", "online")
    assert sub.wait_for(lambda s: len(s.on("homeassistant/binary_sensor/dev1/dog_barking/config")) > n)
    sink.close()
    assert late.wait_for(lambda s: s.on("sound-monitor/dev1/availability")[-1:] == [b"offline"])
    sub.close()
    late.close()


def test_broker_outage_loses_nothing_and_keeps_order(mosquitto, tmp_path):
    b = mosquitto(persistence=True)
    sink = sink_for(b.port, tmp_path)
    # a persistent subscriber session: what the sink replays before the subscriber is back
    # on the restarted broker is queued for it (a test subscriber must not race the replay)
    # (events and availability only: every other QoS 1 message in flight to it when the broker
    # stops is one more the broker may deliver again after its restart)
    sub = Subscriber(
        b.port,
        topics=("sound-monitor/dev1/events", "sound-monitor/dev1/availability"),
        client_id="outage-sub",
        clean_session=False,
    )
    assert sub.wait_for(lambda s: s.on("sound-monitor/dev1/availability") == [b"online"])
    for i in range(1, 21):
        sink.publish(ev(i))
    assert sub.wait_for(lambda s: len(events_received(s)) == 20)
    # every PUBACK in before the broker goes: an event still in flight would be re-sent after
    # the restart (QoS 1 is at-least-once) and show up twice in this exact-order check
    assert sub.wait_for(lambda s: sink.status().backlog == 0)
    time.sleep(0.5)  # the subscriber's own PUBACKs reach the broker before it stops
    b.stop()
    time.sleep(0.5)
    for i in range(21, 61):  # while the broker is down
        sink.publish(ev(i))
    assert sink.status().backlog >= 40
    assert sink.status().state != "connected"
    mosquitto(port=b.port, persistence=True)
    assert sub.wait_for(lambda s: len(events_received(s)) >= 60, timeout=30)
    seqs = [e["seq"] for e in events_received(sub)]
    assert seqs == list(range(1, 61))
    wait_until(lambda: not sink.status().backlog, 10)
    assert sink.status().backlog == 0  # every PUBACK arrived and emptied the outbox
    sink.close()
    sub.close()


def test_restart_with_nonempty_outbox_delivers(mosquitto, tmp_path):
    from monitor.outbox import Outbox

    ob = Outbox(tmp_path / "state" / "outbox-dev1.sqlite3")
    for i in (7, 8, 9):
        ob.add(i, "sound-monitor/dev1/events", ev(i).to_json())
    ob.close()
    b = mosquitto()
    sub = Subscriber(b.port)
    sink = sink_for(b.port, tmp_path)
    assert sub.wait_for(lambda s: [e["seq"] for e in events_received(s)] == [7, 8, 9])
    sink.close()
    sub.close()


def test_last_will_offline_on_kill(mosquitto, tmp_path):
    b = mosquitto()
    sub = Subscriber(b.port)
    code = (
        f"import sys,time; sys.path.insert(0, {os.getcwd()!r})\n"
        "from monitor.config import MQTTConfig\nfrom monitor.sinks.mqtt import MqttSink\nfrom pathlib import Path\n"
        f"s=MqttSink.from_config(MQTTConfig(host='127.0.0.1', port={b.port}, keepalive_s=5), device_id='dev1', labels=['x'],"
        f" state_dir=Path({str(tmp_path / 's')!r}), model_name='m', source_name='t')\nprint('ready', flush=True)\ntime.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    assert sub.wait_for(lambda s: s.on("sound-monitor/dev1/availability")[-1:] == [b"online"])
    p.send_signal(signal.SIGKILL)
    p.wait()
    # the broker notices the dead socket and publishes the will
    assert sub.wait_for(lambda s: s.on("sound-monitor/dev1/availability")[-1:] == [b"offline"], timeout=20)
    sub.close()


def test_credentials(mosquitto, tmp_path, monkeypatch):
    b = mosquitto(users={"monitor": "s3cret-pw"})
    monkeypatch.setenv("SOUND_MONITOR_MQTT_PASSWORD", "wrong")
    bad = sink_for(b.port, tmp_path / "bad", username="monitor")
    bad.publish(ev(1))
    wait_until(lambda: bad.status().state.startswith("refused"), 10)
    st = bad.status()
    assert st.state.startswith("refused") and "s3cret" not in repr(st)
    assert st.backlog == 1  # kept for later
    bad.close()
    pwfile = tmp_path / "pw"
    pwfile.write_text("s3cret-pw\n")
    good = sink_for(b.port, tmp_path / "good", username="monitor", password_file=str(pwfile))
    wait_until(lambda: good.status().state == "connected", 10)
    assert good.status().state == "connected"
    good.publish(ev(2))
    wait_until(lambda: not good.status().backlog, 10)
    assert good.status().backlog == 0
    good.close()


def make_certs(d, server_names=None):
    """A test CA and a server certificate for 127.0.0.1/localhost (or ``server_names``, DNS names)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in server_names]
                if server_names
                else [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_tls_verified_delivery_and_unknown_ca_refused(mosquitto, tmp_path):
    certs = make_certs(tmp_path)
    b = mosquitto(tls={k: str(v) for k, v in certs.items()})
    good = sink_for(b.port, tmp_path / "g", tls=TLSConfig(enabled=True, ca_file=str(certs["ca"])))
    wait_until(lambda: good.status().state == "connected", 10)
    assert good.status().state == "connected"
    good.publish(ev(1))
    wait_until(lambda: not good.status().backlog, 10)
    assert good.status().backlog == 0
    good.close()
    # verification is on by default: the system CAs do not know our test CA
    other = sink_for(b.port, tmp_path / "o", tls=TLSConfig(enabled=True))
    other.publish(ev(2))
    time.sleep(2)
    assert other.status().state != "connected" and other.status().backlog == 1
    other.close(timeout_s=0.5)


def test_parse_mqtt_url():
    assert parse_mqtt_url("mqtt://ha.local") == {"mqtt.host": "ha.local", "mqtt.port": 1883, "mqtt.tls.enabled": False}
    assert parse_mqtt_url("mqtts://bob@broker:8884") == {
        "mqtt.host": "broker",
        "mqtt.port": 8884,
        "mqtt.tls.enabled": True,
        "mqtt.username": "bob",
    }
    with pytest.raises(UserError, match="password"):
        parse_mqtt_url("mqtt://bob:secret@broker")
    with pytest.raises(UserError):
        parse_mqtt_url("http://broker")


def test_slugs_are_safe_and_distinct():
    s = label_slugs(["dog/barking", "dog+barking", "dog#barking", "Dog Barking", "café", "+", "#/"])
    assert len(set(s.values())) == 7
    assert s["café"].startswith("cafe_")
    for v in s.values():
        assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in v)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=60), min_size=1, max_size=12, unique=True))
def test_slug_property(labels):
    s = label_slugs(labels)
    assert len(set(s.values())) == len(labels)
    for lab, v in s.items():
        assert v and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_" for c in v)
        assert slugify(v) == v or "_" in v
        assert label_slugs(labels[::-1])[lab] == v
        assert label_slugs(["x", lab, "label"])[lab] == v  # a slug depends on its label alone


def test_cli_run_publishes_exactly_the_jsonl_events(mosquitto, tmp_path, tiny_clap_export):
    b = mosquitto()
    sub = Subscriber(b.port)
    ev_path = tmp_path / "events.jsonl"
    r = cli(
        "run",
        "--source",
        "monitor/demo/owl.mp3",
        "--fast",
        "--no-tui",
        "--model",
        str(tiny_clap_export),
        "--labels",
        "owl,dog/cat,+alarm#",
        "--scoring",
        "softmax",
        "--threshold",
        "0.0",
        "--events",
        str(ev_path),
        "--mqtt",
        f"mqtt://127.0.0.1:{b.port}",
        state=tmp_path / "state",
        clean=True,
    )
    assert r.returncode == 0, r.stderr
    logged = [json.loads(l) for l in ev_path.read_text().splitlines()]
    assert len(logged) == 6
    dev = logged[0]["device_id"]
    from monitor.topics import device_slug

    topic = f"sound-monitor/{device_slug(dev)}/events"
    assert sub.wait_for(lambda s: len(s.on(topic)) == 6)
    assert [json.loads(p) for p in sub.on(topic)] == logged
    # safe, distinct topics for the awkward labels, final state OFF after the closing events
    from monitor.topics import label_slug

    for slug in ("owl", label_slug("dog/cat"), label_slug("+alarm#")):
        assert sub.on(f"sound-monitor/{device_slug(dev)}/label/{slug}/state")[-1] == b"OFF"
        assert sub.on(f"homeassistant/binary_sensor/{device_slug(dev)}/{slug}/config")
    assert sub.wait_for(lambda s: s.on(f"sound-monitor/{device_slug(dev)}/availability")[-1:] == [b"offline"])
    assert not any("+" in t or "#" in t for t, _, _ in sub.messages)
    sub.close()
