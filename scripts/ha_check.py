"""A real Home Assistant core against the monitor and a real mosquitto: what a household's
Home Assistant shows (issue 27, "What a real Home Assistant shows").

    python scripts/ha_check.py --ha-python /opt/py313/bin/python3.13 [--work DIR]

Home Assistant 2026.2.3 needs CPython >= 3.13.2 (Debian bookworm has 3.11): build one from
Debian trixie's python3.13 source package, e.g.

    apt-get -o Dir::Etc::sourcelist=/tmp/trixie-src.list -o Dir::Etc::sourceparts=- \\
        -o Dir::State::Lists=/tmp/apt-lists update          # deb-src ... trixie main
    apt-get ... source --download-only python3.13
    tar xf python3.13_*.orig.tar.xz && cd Python-3.13.* && ./configure --prefix=/opt/py313 && make -j2 install

The script makes a venv with that Python (`pip install homeassistant==2026.2.3`, once),
starts mosquitto (persistent, as a home broker) and Home Assistant on 127.0.0.1, onboards an
owner and adds the MQTT integration over HA's REST API, and installs four automations that
report to MQTT what Home Assistant saw: the README's automation (as documented), one on the
binary sensor turning on (with the event_id in its attributes at that moment), and one on
every event-entity change. Then, with the monitor (tiny scripted model: threshold 0 starts an
event at once) it checks:

  - every promised entity exists in one device, no discovery warning in HA's log;
  - 16: when the binary sensor turns on, its attributes already carry that event's id;
  - 19: the threshold number and the switches have values after each start;
  - 17/18: after `kill -9` and a start with the broker 3 s late, the event entity gets the
    `end` with `reason: restart`, and the binary sensor does not turn on again;
  - 20: the README automation fires once per event, not again when the entity comes back
    from unavailable, and removing a label logs no template error.

Prints one JSON line of results; exit 1 when a check fails. Not part of `make test`: building
Python and installing Home Assistant take about ten minutes (notes/issue27.md has a run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HA_VERSION = "2026.2.3"
ROOT = Path(__file__).resolve().parents[1]
DEV = "ha1"
P = f"sound-monitor/{DEV}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return bool(pred())


# -- Home Assistant: install, configure, start, REST ------------------------------------------
def ensure_ha(work: Path, base_python: str) -> Path:
    venv = work / "ha-venv"
    hass = venv / "bin" / "hass"
    if not hass.exists():
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        t0 = time.monotonic()
        subprocess.run([*pip, f"homeassistant=={HA_VERSION}"], check=True)
        print(f"installed homeassistant {HA_VERSION} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return hass


def readme_automation(dev: str) -> dict:
    """The README's automation, as documented (read from README.md, so the check tests the
    text users copy): its triggers and conditions as written, the entity made this device's
    label, and its action reporting to MQTT instead of notifying a phone."""
    import re

    import yaml

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"An automation on the event entity.*?```yaml\n(.*?)```", text, re.S)
    if block is None:
        raise SystemExit("README.md has no automation example to check")
    auto = dict(yaml.safe_load(block.group(1))["automation"][0])
    for trig in auto["triggers"]:
        trig["entity_id"] = f"event.sound_monitor_{dev}_dog_barking"
    auto["id"] = "readme"
    auto["actions"] = [
        {
            "action": "mqtt.publish",
            "data": {"topic": "hacheck/readme", "payload": "{{ trigger.to_state.attributes.event_id }}"},
        }
    ]
    auto["mode"] = "queued"
    return auto


def automations(dev: str) -> list[dict]:
    ev = f"event.sound_monitor_{dev}_dog_barking"
    bs = f"binary_sensor.sound_monitor_{dev}_dog_barking"
    return [
        readme_automation(dev),
        {  # what an automation on the sensor turning on reads
            "id": "on",
            "alias": "binary sensor on",
            "triggers": [{"trigger": "state", "entity_id": bs, "to": "on"}],
            "actions": [
                {
                    "action": "mqtt.publish",
                    "data": {"topic": "hacheck/on", "payload": "{{ trigger.to_state.attributes.event_id }}"},
                }
            ],
            "mode": "queued",
        },
        {  # every change of the event entity, raw
            "id": "event",
            "alias": "event entity",
            "triggers": [{"trigger": "state", "entity_id": ev}],
            "conditions": [{"condition": "template", "value_template": "{{ trigger.to_state is not none }}"}],
            "actions": [
                {
                    "action": "mqtt.publish",
                    "data": {
                        "topic": "hacheck/event",
                        "payload": "{{ trigger.to_state.state }}|{{ trigger.to_state.attributes.event_type }}|"
                        "{{ trigger.to_state.attributes.reason | default('') }}|"
                        "{{ trigger.from_state.state if trigger.from_state else '' }}",
                    },
                }
            ],
            "mode": "queued",
        },
    ]


def write_ha_config(cfg: Path, http_port: int) -> None:
    import yaml

    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "configuration.yaml").write_text(
        "homeassistant:\n  name: ha-check\n  time_zone: UTC\n  unit_system: metric\n"
        "  latitude: 0\n  longitude: 0\n  elevation: 0\n"
        f"http:\n  server_host: 127.0.0.1\n  server_port: {http_port}\n"
        "automation: !include automations.yaml\n"
        "config:\nonboarding:\nlogger:\n  default: warning\n"
    )
    (cfg / "automations.yaml").write_text(yaml.safe_dump(automations(DEV), sort_keys=False))


class HA:
    def __init__(self, hass: Path, cfg: Path, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.cfg = cfg
        self.log = open(cfg / "ha-stdout.log", "ab")
        self.proc = subprocess.Popen([str(hass), "-c", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        self.token: str | None = None

    def call(self, method: str, path: str, body: dict | None = None, form: dict | None = None) -> object:
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
        return json.loads(text) if text else None

    def up(self, timeout: float = 600) -> bool:
        def ok() -> bool:
            try:
                urllib.request.urlopen(self.base + "/api/onboarding", timeout=2).read()
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                return False

        return wait(ok, timeout, 1.0)

    def onboard(self) -> None:
        client = self.base + "/"
        r = self.call(
            "POST",
            "/api/onboarding/users",
            {"client_id": client, "name": "Owner", "username": "owner", "password": "ha-check-pass", "language": "en"},
        )
        code = r["auth_code"]  # type: ignore[index]
        tok = self.call(
            "POST", "/auth/token", form={"grant_type": "authorization_code", "code": code, "client_id": client}
        )
        self.token = tok["access_token"]  # type: ignore[index]
        for step, body in (
            ("core_config", {}),
            ("analytics", {}),
            ("integration", {"client_id": client, "redirect_uri": client + "?auth_callback=1"}),
        ):
            try:
                self.call("POST", f"/api/onboarding/{step}", body)
            except urllib.error.HTTPError:
                pass  # a step this version does not have, or already done

    def add_mqtt(self, broker_port: int) -> dict:
        r = self.call("POST", "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False})
        for _ in range(5):
            assert isinstance(r, dict)
            if r.get("type") == "create_entry":
                return r
            if r.get("type") == "menu":
                options = r.get("menu_options") or []
                pick = "broker" if "broker" in options else options[0]
                r = self.call("POST", f"/api/config/config_entries/flow/{r['flow_id']}", {"next_step_id": pick})
                continue
            if r.get("type") == "form":
                r = self.call(
                    "POST",
                    f"/api/config/config_entries/flow/{r['flow_id']}",
                    {"broker": "127.0.0.1", "port": broker_port},
                )
                continue
            raise RuntimeError(f"MQTT config flow: {r}")
        raise RuntimeError(f"MQTT config flow did not finish: {r}")

    def states(self) -> dict[str, dict]:
        return {s["entity_id"]: s for s in self.call("GET", "/api/states")}  # type: ignore[union-attr]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()

    def log_text(self) -> str:
        p = self.cfg / "home-assistant.log"
        return p.read_text(errors="replace") if p.exists() else ""


# -- broker, monitor, watcher ---------------------------------------------------------------
class Broker:
    def __init__(self, work: Path, port: int):
        self.work, self.port = work, port
        conf = work / "mosquitto.conf"
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence true"]
        lines += [f"persistence_location {work}/", "log_dest stderr"]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self.conf = conf
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stderr=open(self.work / "mosquitto.log", "ab"))
        assert wait(lambda: _connects(self.port), 10), "mosquitto did not start"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


class Door:
    """A TCP forwarder to the broker that can be closed and opened: the monitor reaches the
    broker through it, so its connection can come up late while Home Assistant's stays up."""

    def __init__(self, broker_port: int):
        self.port, self.broker_port = free_port(), broker_port
        self._srv: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def open(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(8)
        self._srv = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                a, _ = srv.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.broker_port))
            self._conns += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(x: socket.socket, y: socket.socket) -> None:
        try:
            while data := x.recv(65536):
                y.sendall(data)
        except OSError:
            pass
        for s in (x, y):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self._srv is not None:
            self._srv.close()
            self._srv = None
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
        self._conns.clear()


class Watcher:
    """Everything on the broker, in order (a persistent session: nothing lost across restarts)."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.msgs: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ha-check-watch", clean_session=False)
        self.c.reconnect_delay_set(0.2, 1.0)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([("#", 1)])
        self.c.on_message = self._on
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on(self, c, u, m) -> None:
        with self.lock:
            self.msgs.append((time.monotonic(), m.topic, m.payload.decode(errors="replace")))

    def on(self, topic: str) -> list[str]:
        with self.lock:
            return [p for _, t, p in self.msgs if t == topic]


def start_monitor(work: Path, model: str, broker_port: int, labels: str) -> subprocess.Popen:
    cfg = work / "monitor.yaml"
    cfg.write_text(
        f"device_id: {DEV}\nlabels: [{labels}]\n"
        "events: {threshold: 0.0, hysteresis: 0.0, min_windows: 1, cooldown_s: 0}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker_port}, reconnect_min_s: 0.5, reconnect_max_s: 2}}\n"
    )
    env = {**os.environ, "SOUND_MONITOR_STATE": str(work / "state"), "SOUND_MONITOR_MODELS": str(work / "models")}
    err = open(work / "monitor.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(cfg), "--source", "-", "--rate", "16000",
         "--model", model, "--no-tui"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT, start_new_session=True,
    )  # fmt: skip


def feed(proc: subprocess.Popen, seconds: float, stop: threading.Event) -> threading.Thread:
    import numpy as np

    def run() -> None:
        rng = np.random.default_rng(0)
        sent = 0.0
        try:
            while sent < seconds and not stop.is_set():
                proc.stdin.write((rng.standard_normal(1600) * 3000).astype("<i2").tobytes())  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                sent += 0.1
                time.sleep(0.1)
        except (BrokenPipeError, OSError, ValueError):
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def tiny_model(work: Path) -> str:
    """A tiny random CLAP, exported as the tests do (needs torch and transformers: `make install-test`)."""
    from clap_factories import make_random_checkpoint

    from monitor.models.clap.export import export_clap

    out = work / "tiny-clap"
    if not (out / "model" / "manifest.json").exists():
        ckpt = make_random_checkpoint(out / "ckpt", size="tiny", seed=0)
        export_clap(str(ckpt), out / "model", int8=False, progress=None)
    return str(out / "model")


# -- the scenario ---------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ha-python", required=True, help="a CPython >= 3.13.2 for Home Assistant")
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "sound-monitor-ha-check"))
    ap.add_argument("--model", help="an exported CLAP folder (default: a tiny random one made here)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    run = work / f"run-{int(time.time())}"
    run.mkdir()
    hass = ensure_ha(work, args.ha_python)
    model = args.model or tiny_model(work)
    bport, hport = free_port(), free_port()
    broker = Broker(run, bport)
    broker.start()
    write_ha_config(run / "ha", hport)
    ha = HA(hass, run / "ha", hport)
    results: dict[str, object] = {}
    ok = True

    def check(name: str, passed: bool, detail: object = None) -> None:
        nonlocal ok
        results[name] = {"ok": bool(passed), **({"detail": detail} if detail is not None else {})}
        ok = ok and bool(passed)

    watch = Watcher(bport)
    mon = None
    try:
        t0 = time.monotonic()
        assert ha.up(), "Home Assistant did not answer"
        ha.onboard()
        ha.add_mqtt(bport)
        results["ha_start_s"] = round(time.monotonic() - t0, 1)
        stop = threading.Event()
        door = Door(bport)
        door.open()
        mon = start_monitor(run, model, door.port, "dog barking, smoke alarm")
        feed(mon, 20.0, stop)
        want = [
            f"binary_sensor.sound_monitor_{DEV}_dog_barking",
            f"event.sound_monitor_{DEV}_dog_barking",
            f"number.sound_monitor_{DEV}_dog_barking_threshold",
            f"switch.sound_monitor_{DEV}_dog_barking_enabled",
            f"switch.sound_monitor_{DEV}_enabled",
            f"sensor.sound_monitor_{DEV}_level",
            f"sensor.sound_monitor_{DEV}_heard",
        ]
        wait(lambda: all(e in ha.states() for e in want), 60)
        st = ha.states()
        check("entities", all(e in st for e in want), [e for e in want if e not in st])
        mine = sorted(e for e in st if f"sound_monitor_{DEV}_" in e)
        results["entities"]["count"] = len(mine)  # type: ignore[index]
        wait(lambda: len(watch.on("hacheck/on")) >= 1 and watch.on(f"{P}/events"), 60)
        time.sleep(3)
        starts = [json.loads(x) for x in watch.on(f"{P}/events")]
        start_ids = {e["event_id"] for e in starts if e["type"] == "start" and e["label"] == "dog barking"}
        on_ids = watch.on("hacheck/on")
        check("16_attributes_with_state", bool(on_ids) and all(i in start_ids for i in on_ids), on_ids)
        st = ha.states()
        num = st.get(f"number.sound_monitor_{DEV}_dog_barking_threshold", {}).get("state")
        sw = st.get(f"switch.sound_monitor_{DEV}_enabled", {}).get("state")
        check("19_controls_after_start", num not in (None, "unknown", "unavailable") and sw == "on", [num, sw])
        readme_before = len(watch.on("hacheck/readme"))
        on_before = len(watch.on("hacheck/on"))
        # kill -9 with the event open; the next start reaches the broker 3 s late (Home
        # Assistant's own connection stays up, as in a house where the broker runs on)
        mon.send_signal(signal.SIGKILL)
        mon.wait(10)
        stop.set()
        door.close()
        time.sleep(1.0)
        mon = start_monitor(run, model, door.port, "dog barking, smoke alarm")  # no audio: no new event
        time.sleep(3.0)
        door.open()
        wait(lambda: any("restart" in x for x in watch.on("hacheck/event")), 90)
        time.sleep(5)
        ev = watch.on("hacheck/event")
        check("17_restart_end_reaches_event_entity", any(x.split("|")[1:3] == ["end", "restart"] for x in ev), ev)
        check("18_no_second_on", len(watch.on("hacheck/on")) == on_before, watch.on("hacheck/on")[on_before:])
        check(
            "20_readme_automation_once_per_event",
            len(watch.on("hacheck/readme")) == readme_before and readme_before == len(start_ids) // 1,
            {"fired": watch.on("hacheck/readme"), "dog_starts": len(start_ids)},
        )
        # a label removed while the monitor runs again: no template error in HA's log
        mon.send_signal(signal.SIGTERM)
        mon.wait(60)
        mon = start_monitor(run, model, door.port, "smoke alarm")
        wait(lambda: f"event.sound_monitor_{DEV}_dog_barking" not in ha.states(), 60)
        time.sleep(3)
        log = ha.log_text()
        check("20_label_removed_no_template_error", "TemplateError" not in log and "UndefinedError" not in log)
        check("discovery_warnings", "discovery" not in log.lower() or "warning" not in log.lower(),
              [line for line in log.splitlines() if "mqtt" in line.lower()][:10])  # fmt: skip
    finally:
        if mon is not None and mon.poll() is None:
            mon.send_signal(signal.SIGTERM)
            try:
                mon.wait(60)
            except subprocess.TimeoutExpired:
                mon.kill()
        ha.stop()
        broker.stop()
    print(json.dumps({"ok": ok, "home_assistant": HA_VERSION, "work": str(run), **results}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
