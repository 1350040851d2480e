"""`sound-monitor service install [--user] [--print] [--config PATH]`: a systemd unit that
starts the monitor at boot and restarts it when it fails.

The unit runs `sound-monitor run --no-tui --config ABS_PATH` as the installing user (never
root: a unit for root is refused), restarts on failure after 10 s (at most 5 times in 5 min,
then systemd gives up and says so), and is hardened: no new privileges, the whole file
system read-only except the state, models and clips folders (ReadWritePaths), a private
/tmp, no kernel tunables or modules, no SUID. A system unit joins the `audio` group for the
microphone. SIGHUP (`systemctl reload`) reloads the config, as it does for any detached run.

`--print` shows the unit and writes nothing; otherwise it is written to
~/.config/systemd/user/ (`--user`) or /etc/systemd/system/ (needs root to write, runs as
the invoking user), and the commands that enable it are printed.
"""

from __future__ import annotations

import argparse
import getpass
import os
import pwd
import shlex
import sys
from pathlib import Path

from monitor.errors import UserError

UNIT = "sound-monitor.runtime.service"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    p = sub.add_parser("install", help="write a systemd unit that runs the monitor at boot")
    p.add_argument("--user", action="store_true", help="a user unit (~/.config/systemd/user), no root needed")
    p.add_argument("--print", action="store_true", help="print the unit, write nothing")
    p.add_argument("--config", default="config.yaml", help="the config file the service runs with")
    p.add_argument("--out", help="write the unit to this path instead (tests, packaging)")


def _in(folder: Path, path: str) -> Path:
    """``path`` as the service sees it: relative paths are in its working directory."""
    p = Path(path).expanduser()
    return p.resolve() if p.is_absolute() else (folder / p).resolve()


def _secrets(cfg) -> tuple[dict[str, str], str]:
    """The environment variables with secrets the service needs (name -> value, taken from
    the installer's environment), and a note for the unit. A broker login whose password
    comes from a variable that is not set here is refused: the unit could never log in."""
    m = cfg.mqtt
    if not (m.host and m.username) or m.password_file or not m.password_env:
        return {}, ""
    value = os.environ.get(m.password_env)
    if not value:
        raise UserError(
            f"the config logs in to MQTT as {m.username!r} with the password in ${m.password_env}, which is not "
            f"set here: set it for the install (`{m.password_env}=... sound-monitor service install`; it is "
            "written to a 0600 file that only the service reads) or use mqtt.password_file"
        )
    return {m.password_env: value}, f"${m.password_env} (the MQTT password) comes from the EnvironmentFile below"


def _write_env_file(path: Path, values: dict[str, str], user: pwd.struct_passwd | None) -> None:
    """``KEY="value"`` lines, created 0600 (never readable by others, not even for a moment)."""

    def quoted(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`") + '"'

    text = "".join(f"{k}={quoted(v)}\n" for k, v in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        if user is not None and os.geteuid() == 0:
            os.fchown(fd, user.pw_uid, user.pw_gid)
    finally:
        os.close(fd)


def _user() -> pwd.struct_passwd:
    name = os.environ.get("SUDO_USER") or getpass.getuser()
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise UserError(f"unknown user {name!r}") from None


def unit_text(
    config: Path,
    user: pwd.struct_passwd | None,
    rw_paths: list[Path],
    exe: list[str],
    env: dict[str, str],
    env_file: Path | None = None,
    notes: tuple[str, ...] = (),
) -> str:
    """The unit file. ``user`` None: a user unit (runs as the user whose manager starts it);
    ``env_file``: a 0600 file with the secrets the config reads from the environment."""
    cmd = " ".join(shlex.quote(a) for a in [*exe, "run", "--no-tui", "--config", str(config)])
    rw = " ".join(shlex.quote(str(p)) for p in rw_paths)
    lines = [
        "# written by `sound-monitor service install`; edit, then `systemctl daemon-reload`",
        *(f"# {n}" for n in notes),
        "[Unit]",
        "Description=sound-monitor: zero-shot sound events to MQTT and Home Assistant",
        "Wants=network-online.target",
        "After=network-online.target sound.target",
        "StartLimitIntervalSec=300",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={cmd}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={shlex.quote(str(config.parent))}",
        "Restart=on-failure",
        "RestartSec=10",
        "TimeoutStopSec=30",
        "Environment=PYTHONUNBUFFERED=1",
        # the folders the installer resolved (and opened for writing below), whatever the
        # service's own environment would give
        *(f"Environment={shlex.quote(f'{k}={v}')}" for k, v in env.items()),
        *([f"EnvironmentFile={shlex.quote(str(env_file))}"] if env_file is not None else []),
    ]
    if user is not None:
        lines += [f"User={user.pw_name}", "SupplementaryGroups=audio"]
    lines += [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        f"ReadWritePaths={rw}",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "",
        "[Install]",
        "WantedBy=" + ("default.target" if user is None else "multi-user.target"),
        "",
    ]
    return "\n".join(lines)


def run(args) -> int:
    if args.action != "install":
        raise UserError("use: sound-monitor service install [--user] [--print]")
    from monitor.config import load_config

    config = Path(args.config).expanduser().resolve()
    if not config.is_file():
        raise UserError(f"config file not found: {config} (the service needs one: copy config.yaml)")
    user = None if args.user else _user()
    notes: list[str] = []
    if user is not None and user.pw_uid == 0:
        if not args.print:
            raise UserError("the service must not run as root: run `sudo sound-monitor service install` from your user")
        notes.append("User=root: install refuses this; run it from the user the service should run as")
    # the folders as the service's user will have them (under sudo, $HOME is root's)
    saved_home = os.environ.get("HOME")
    if user is not None:
        os.environ["HOME"] = user.pw_dir
    try:
        cfg = load_config(str(config))  # refuses a config the service could not start with
        state, models = cfg.state_path.resolve(), cfg.model.models_path.resolve()
        rw = [state, models]
        # the service runs in the config's folder: relative paths resolve there
        if cfg.clips.enabled:
            rw.append(_in(config.parent, cfg.clips.dir))
        for out in (cfg.output.events_path, cfg.output.scores_path):
            if out and out != "-":  # the event log and scores file: their folders must be writable
                folder = _in(config.parent, out).parent
                if folder not in rw:
                    rw.append(folder)
    finally:
        if saved_home is not None:
            os.environ["HOME"] = saved_home
    exe = [sys.executable, "-m", "monitor"]
    env = {"SOUND_MONITOR_STATE": str(state), "SOUND_MONITOR_MODELS": str(models)}
    secrets, env_note = _secrets(cfg)
    env_file = state / "service.env" if secrets else None
    if env_note:
        notes.append(env_note)
    text = unit_text(config, user, rw, exe, env, env_file, tuple(notes))
    if args.print:
        sys.stdout.write(text)
        if secrets:
            print(
                f"# install (without --print) writes {env_file} (mode 0600) with {', '.join(secrets)} "
                "from this shell's environment",
                file=sys.stderr,
            )
        return 0
    for p in rw:
        p.mkdir(parents=True, exist_ok=True)  # ReadWritePaths must exist when the unit starts
        if user is not None and os.geteuid() == 0 and p.stat().st_uid == 0:
            os.chown(p, user.pw_uid, user.pw_gid)
    if env_file is not None:
        _write_env_file(env_file, secrets, user)
        print(f"wrote {env_file} (mode 0600): {', '.join(secrets)} for the service")
    if args.out:
        target = Path(args.out)
    elif args.user:
        target = Path.home() / ".config" / "systemd" / "user" / UNIT
    else:
        target = Path("/etc/systemd/system") / UNIT
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    except PermissionError:
        raise UserError(
            f"cannot write {target}: a system unit needs root (`sudo {shlex.join(sys.argv)}`), or use --user"
        ) from None
    print(f"wrote {target}")
    if args.user:
        print("enable it:  systemctl --user daemon-reload && systemctl --user enable --now sound-monitor")
        print(f"start at boot without logging in:  sudo loginctl enable-linger {getpass.getuser()}")
        print("logs:  journalctl --user -u sound-monitor -f")
    else:
        print("enable it:  sudo systemctl daemon-reload && sudo systemctl enable --now sound-monitor")
        print("logs:  journalctl -u sound-monitor -f")
    return 0
