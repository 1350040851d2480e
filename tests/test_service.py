"""`sound-monitor service install`: a systemd unit, checked with systemd-analyze verify."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cli_helpers import ROOT, cli


def analyze(unit) -> subprocess.CompletedProcess:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def config(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text((ROOT / "config.yaml").read_text())
    return cfg


def test_print_shows_a_hardened_user_unit_and_writes_nothing(tmp_path):
    cfg = config(tmp_path)
    state = tmp_path / "state"
    r = cli("service", "install", "--user", "--print", "--config", cfg, state=state)
    assert r.returncode == 0, r.stderr
    u = r.stdout
    assert f"--config {cfg}" in u and "ExecStart=" in u and " run --no-tui " in u
    for line in (
        "Restart=on-failure",
        "RestartSec=10",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WantedBy=default.target",
        f"Environment=SOUND_MONITOR_STATE={state}",
    ):
        assert line in u.splitlines(), line
    rw = next(l for l in u.splitlines() if l.startswith("ReadWritePaths="))
    assert str(state) in rw and "models" in rw
    assert "User=" not in u  # a user unit runs as the user whose manager starts it
    assert not state.exists()  # --print writes nothing


def test_installed_units_pass_systemd_analyze_verify(tmp_path):
    cfg = config(tmp_path)
    out = tmp_path / "sound-monitor.runtime.service"
    r = cli("service", "install", "--user", "--config", cfg, "--out", out, state=tmp_path / "state")
    assert r.returncode == 0 and "systemctl --user enable --now sound-monitor" in r.stdout, r.stderr
    v = analyze(out)
    assert v.returncode == 0 and "sound-monitor.runtime.service" not in v.stderr, v.stderr
    assert (tmp_path / "state").is_dir()  # ReadWritePaths exist before the unit starts
    # a system unit runs as the invoking user (here the unprivileged `nobody`), in `audio`
    sysu = tmp_path / "system.service"
    r = cli(
        "service",
        "install",
        "--config",
        cfg,
        "--out",
        sysu,
        state=tmp_path / "s2",
        env_extra={"SUDO_USER": "nobody", "SOUND_MONITOR_MODELS": str(tmp_path / "models")},
    )
    assert r.returncode == 0, r.stderr
    text = sysu.read_text()
    assert "User=nobody" in text and "SupplementaryGroups=audio" in text and "WantedBy=multi-user.target" in text
    v = analyze(sysu)
    assert v.returncode == 0, v.stderr


def test_root_and_missing_config_are_refused(tmp_path):
    r = cli(
        "service",
        "install",
        "--config",
        config(tmp_path),
        "--out",
        tmp_path / "x.service",
        state=tmp_path / "s",
        env_extra={"SUDO_USER": "root"},
    )
    assert r.returncode == 2 and "must not run as root" in r.stderr and not (tmp_path / "x.service").exists()
    # --print writes nothing, so it works as root too (and says what install would refuse)
    r = cli("service", "install", "--print", "--config", config(tmp_path), state=tmp_path / "s",
            env_extra={"SUDO_USER": "root"})  # fmt: skip
    assert r.returncode == 0 and "User=root" in r.stdout and "install refuses this" in r.stdout, r.stderr
    r = cli("service", "install", "--user", "--config", tmp_path / "nope.yaml", state=tmp_path / "s")
    assert r.returncode == 2 and "config file not found" in r.stderr


def test_the_unit_can_write_the_event_log_and_gets_the_mqtt_password(tmp_path):
    """The shipped relative events.jsonl resolves in the config's folder, which the unit makes
    writable; a broker login with the password in an environment variable gets it through a
    0600 EnvironmentFile (or install refuses, instead of writing a unit that cannot log in)."""
    import os
    import stat

    cfg = tmp_path / "home" / "config.yaml"
    cfg.parent.mkdir()
    cfg.write_text(
        "output: {events_path: events.jsonl, scores_path: logs/scores.jsonl}\n"
        "mqtt: {host: 127.0.0.1, username: monitor}\n"
    )
    state = tmp_path / "state"
    out = tmp_path / "unit.service"
    env = {"SOUND_MONITOR_MQTT_PASSWORD": ""}
    r = cli("service", "install", "--user", "--config", cfg, "--out", out, state=state, env_extra=env)
    assert r.returncode == 2 and "SOUND_MONITOR_MQTT_PASSWORD" in r.stderr and "not set" in r.stderr
    assert not out.exists()
    secret = 'pa$$ "word" `x` \\'
    env = {"SOUND_MONITOR_MQTT_PASSWORD": secret}
    r = cli("service", "install", "--user", "--config", cfg, "--out", out, state=state, env_extra=env)
    assert r.returncode == 0, r.stderr
    unit = out.read_text()
    rw = next(line for line in unit.splitlines() if line.startswith("ReadWritePaths="))
    assert str(cfg.parent) in rw.split() and str(cfg.parent / "logs") in rw.split()
    env_file = state / "service.env"
    assert f"EnvironmentFile={env_file}" in unit.splitlines() and secret not in unit and secret not in r.stdout
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text().startswith('SOUND_MONITOR_MQTT_PASSWORD="') and env_file.read_text().count("\n") == 1
    v = analyze(out)
    assert v.returncode == 0, v.stderr
    # read back, the value is the password: systemd's EnvironmentFile unescapes \\ \" \$ \` in
    # double quotes as a POSIX shell does (no systemd runs here to read it itself)
    got = subprocess.run(
        ["sh", "-c", f'. {env_file} && printf %s "$SOUND_MONITOR_MQTT_PASSWORD"'], capture_output=True, text=True
    )
    assert got.stdout == secret
    # a password file needs nothing
    cfg.write_text("mqtt: {host: 127.0.0.1, username: monitor, password_file: /etc/pw}\n")
    r = cli("service", "install", "--user", "--print", "--config", cfg, state=tmp_path / "s2",
            env_extra={"SOUND_MONITOR_MQTT_PASSWORD": ""})  # fmt: skip
    assert r.returncode == 0 and "EnvironmentFile" not in r.stdout
    assert os.environ.get("SOUND_MONITOR_MQTT_PASSWORD") != secret
