"""/healthz and /metrics: the numbers of a real run over real HTTP."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request

import pytest
from cli_helpers import wait_until
from fixtures_mqtt import free_port
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import parse_listen
from monitor.errors import UserError
from monitor.runtime.metrics import Snapshot, SourceHealth, health, render


def src(name="mic", status="ok", alive=True, **kw):
    base = dict(windows=10, gated=2, dropped_windows=1, dropped_frames=0, inference_ms=12.5, level_dbfs=-31.0)
    base.update(kw)
    return SourceHealth(name, status, "", alive, **base)


def test_listen_spec():
    assert parse_listen("9108") == ("127.0.0.1", 9108)  # a port alone stays on this machine
    assert parse_listen("0.0.0.0:9108") == ("0.0.0.0", 9108)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("", "x", "host:", "1:99999", "a:0"):
        with pytest.raises(UserError, match="use PORT or HOST:PORT"):
            parse_listen(bad)


def test_health_is_503_with_the_reason_when_a_source_or_worker_is_down():
    assert health(Snapshot((src(),))) == (200, "ok\n")
    code, text = health(Snapshot((src(status="silent"),)))
    assert code == 200 and "silent" in text  # alive, but says it hears only zeros
    code, text = health(Snapshot((src(), src("cam", status="retrying"))))
    assert code == 503 and text == "source cam: retrying\n"
    code, text = health(Snapshot((src(alive=False),)))
    assert code == 503 and "worker stopped" in text


def test_metrics_text_is_prometheus_and_carries_the_numbers():
    snap = Snapshot((src(),), {("dog barking", "start"): 2, ("dog barking", "end"): 1}, 3, True)
    fams = {f.name: f for f in text_string_to_metric_families(render(snap).decode())}
    value = {(f.name, s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert value[("sound_monitor_windows", "sound_monitor_windows_total", (("source", "mic"),))] == 10
    assert value[("sound_monitor_inference_ms", "sound_monitor_inference_ms", (("source", "mic"),))] == 12.5
    ev = ("sound_monitor_events", "sound_monitor_events_total", (("label", "dog barking"), ("type", "start")))
    assert value[ev] == 2
    assert value[("sound_monitor_outbox_pending", "sound_monitor_outbox_pending", ())] == 3
    assert value[("sound_monitor_mqtt_connected", "sound_monitor_mqtt_connected", ())] == 1
    st = ("sound_monitor_source_status", "sound_monitor_source_status", (("source", "mic"), ("status", "ok")))
    assert value[st] == 1


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def test_a_run_serves_its_numbers_and_reports_a_stalled_source(tmp_path, tiny_clap_export):
    from test_shutdown_reload import Feeder, start_monitor

    port = free_port()
    cfg = (
        "labels: [dog barking, smoke alarm]\n"
        "events: {threshold: 0.0, hysteresis: 0.0, min_windows: 1, cooldown_s: 0}\n"
        "source: {stall_timeout_s: 1.0}\n"
        f"output: {{events_path: {tmp_path / 'ev.jsonl'}}}\n"
    )
    p, _ = start_monitor(tmp_path, cfg, "--model", str(tiny_clap_export), "--metrics", str(port))
    feed = Feeder(p, burst_s=8.0, rate_x=4.0)
    feed.start()
    base = f"http://127.0.0.1:{port}"
    try:

        def windows() -> float:
            code, text = get(base + "/metrics")
            if code != 200:
                return 0.0
            for f in text_string_to_metric_families(text):
                for s in f.samples:
                    if s.name == "sound_monitor_windows_total":
                        return s.value
            return 0.0

        assert wait_until(lambda: windows() >= 5, 90), (tmp_path / "stderr.txt").read_text()
        assert get(base + "/healthz") == (200, "ok\n")
        code, text = get(base + "/metrics")
        assert 'sound_monitor_events_total{label="dog barking",type="start"} 1.0' in text
        assert get(base + "/nothing")[0] == 404
        feed.stop.set()  # the pipe stays open but nothing arrives: the source stalls
        assert wait_until(lambda: get(base + "/healthz")[0] == 503, 30)
        code, text = get(base + "/healthz")
        assert "stalled" in text, text
    finally:
        feed.stop.set()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    assert p.returncode == 0, (tmp_path / "stderr.txt").read_text()
    assert get(base + "/healthz")[0] == 0  # the endpoint is gone with the run
