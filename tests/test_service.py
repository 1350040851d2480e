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
    out = tmp_path / "sound-monitor.service"
    r = cli("service", "install", "--user", "--config", cfg, "--out", out, state=tmp_path / "state")
    assert r.returncode == 0 and "systemctl --user enable --now sound-monitor" in r.stdout, r.stderr
    v = analyze(out)
    assert v.returncode == 0 and "sound-monitor.service" not in v.stderr, v.stderr
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
        "--print",
        "--config",
        config(tmp_path),
        state=tmp_path / "s",
        env_extra={"SUDO_USER": "root"},
    )
    assert r.returncode == 2 and "must not run as root" in r.stderr
    r = cli("service", "install", "--user", "--config", tmp_path / "nope.yaml", state=tmp_path / "s")
    assert r.returncode == 2 and "config file not found" in r.stderr
