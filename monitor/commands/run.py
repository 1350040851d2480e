"""`sound-monitor run`: the monitor. Flags override the config file for quick use."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.config import Config
    from monitor.runtime.service import MonitorService, Outcome

log = logging.getLogger("monitor.run")

DEFAULT_LABELS = ("smoke alarm", "dog barking", "glass breaking", "baby crying", "doorbell", "speech")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: ./config.yaml if present)")
    p.add_argument(
        "--source",
        action="append",
        help="mic | mic:DEVICE | PATH (wav/flac/mp3/ogg) | - (raw PCM on stdin) | URL (rtsp://, http(s)://, "
        "anything ffmpeg reads; restarted when it breaks); repeat it to monitor several sources with one model",
    )
    p.add_argument("--fast", action="store_true", help="process a file as fast as possible and exit at its end")
    p.add_argument("--no-tui", action="store_true", help="plain log lines instead of the live view")
    p.add_argument("--events", help="write events as JSON lines to PATH (- = stdout)")
    p.add_argument("--scores", help="write one JSON line of scores per window to PATH (- = stdout)")
    p.add_argument("--model", help="DIR | offline | auto")
    p.add_argument("--adapter", help="learned adapter .npz (eval --save-adapter); overrides model.adapter")
    p.add_argument("--labels", help='comma-separated labels, e.g. "dog barking,smoke alarm"')
    p.add_argument("--scoring", choices=["softmax", "vs-background"])
    p.add_argument("--template", help='prompt template, e.g. "This is a sound of {}."')
    p.add_argument(
        "--threshold",
        type=float,
        help="event threshold for every label (0..1); overrides per-label thresholds in the config",
    )
    p.add_argument("--mqtt", help="mqtt://[user@]host[:port] or mqtts://... (password: env/file only)")
    p.add_argument("--rate", type=int, help="stdin/mic sample rate in Hz")
    p.add_argument("--channels", type=int, help="stdin/mic channel count")
    p.add_argument("--format", choices=["s16le", "f32le"], help="stdin sample format")
    p.add_argument("--hop", type=float, help="seconds between windows (default 1.0)")
    p.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve /healthz and /metrics (Prometheus) over HTTP; a port alone listens on 127.0.0.1",
    )
    p.add_argument(
        "--web",
        metavar="[HOST:]PORT|off",
        help="serve the web page (live view, history, corrections) here; default 127.0.0.1:8765, "
        "off: no page; any address but loopback needs $SOUND_MONITOR_WEB_PASSWORD",
    )
    p.add_argument(
        "--watch-config",
        action="store_true",
        help="reload the config file when it changes (SIGHUP reloads it when the monitor runs "
        "detached, e.g. under systemd; from a terminal SIGHUP stops it)",
    )


def _overrides(args: argparse.Namespace) -> dict:
    ov = {
        "source.input": (args.source[0] if len(args.source) == 1 else list(args.source)) if args.source else None,
        "output.events_path": args.events,
        "output.scores_path": args.scores,
        "model.spec": args.model,
        "model.adapter": getattr(args, "adapter", None),
        "scoring.method": args.scoring,
        "events.threshold": args.threshold,
        "source.sample_rate_hz": args.rate,
        "source.channels": args.channels,
        "source.format": args.format,
        "stream.hop_s": args.hop,
        "metrics.listen": getattr(args, "metrics", None),
        "web.listen": getattr(args, "web", None),
    }
    if args.fast:
        ov["source.realtime"] = False
    if args.no_tui:
        ov["output.tui"] = False
    if args.labels is not None:
        ov["labels"] = [s.strip() for s in args.labels.split(",") if s.strip()]
    if args.template is not None:
        ov["scoring.templates"] = [args.template]
    if args.mqtt:
        from monitor.sinks.mqtt import parse_mqtt_url

        ov.update(parse_mqtt_url(args.mqtt))
    return ov


def load_effective_config(args: argparse.Namespace) -> Config:
    from monitor.config import load_config, with_overrides

    path = args.config
    if path is None and Path("config.yaml").is_file():
        path = "config.yaml"
    cfg = load_config(path)
    # a bare start (no source on the command line or in the file) may fall back to the demo
    args.source_explicit = bool(args.source) or "input" in cfg.source.model_fields_set
    ov = _overrides(args)
    if args.threshold is not None and cfg.labels and ov.get("labels") is None:
        # --threshold means every label: per-label thresholds in the file give way
        ov["labels"] = [lab.model_dump(mode="python") | {"threshold": None} for lab in cfg.labels]
    return with_overrides(cfg, ov, where=f"{path or 'defaults'} + command line")


def _has_terminal() -> bool:
    """True when this process has a controlling terminal (started from a shell)."""
    import os

    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def with_default_labels(cfg: Config, say: Callable[[str], None]) -> Config:
    from monitor.config import with_overrides

    if cfg.labels:
        return cfg
    say(
        "no labels configured: using the defaults "
        + ", ".join(DEFAULT_LABELS)
        + " (set `labels:` in config.yaml or --labels)"
    )
    return with_overrides(cfg, {"labels": list(DEFAULT_LABELS)})


def run(args: argparse.Namespace) -> int:
    from monitor.runtime.state import StateLock

    def say(msg: str) -> None:
        from monitor.logs import say as _say

        _say(msg)

    if args.config is None and Path("config.yaml").is_file():
        # the implicit ./config.yaml is fixed at start: if it is deleted later, a reload
        # fails (and the running config stays) instead of falling back to the defaults
        args.config = "config.yaml"
    cfg = with_default_labels(load_effective_config(args), say)
    lock = StateLock(cfg.state_path, cfg.device)  # one monitor per device and state dir
    try:
        return _run(args, cfg, say)
    finally:
        lock.release()


def _run(args: argparse.Namespace, cfg: Config, say: Callable[[str], None]) -> int:
    from monitor.runtime.assemble import assemble

    demo_ok = not getattr(args, "source_explicit", True) and not cfg.mqtt.host
    run = assemble(
        cfg,
        say,
        demo_ok=demo_ok,
        load_config=lambda: with_default_labels(load_effective_config(args), say),
        watch_path=args.config if args.watch_config else None,
    )
    service = run.service
    for line in service.plane.notes():
        say(line)
    ended = service.end_left_open()
    if ended:
        say(f"ended {ended} event(s) that the previous run left open (reason: restart)")
    service.install_signals(attached=_has_terminal())
    outcomes = service.run(run.live)
    return _report(outcomes, service, say)


def _report(outcomes: list[Outcome], service: MonitorService, say: Callable[[str], None]) -> int:
    """The final summary per source; a pipeline's bug is raised, a source error is rc 1."""
    for o in outcomes:
        if o.error is not None:
            raise o.error
    rc = 0
    several = len(outcomes) > 1
    for o in outcomes:
        st = o.stats
        if st is None:
            continue
        who = f"{o.name}: " if several else ""
        say(
            f"{who}finished: {st.inference.windows} windows ({st.inference.gated} below the gate"
            + (f", {st.inference.reused} reused by the change gate" if st.inference.reused else "")
            + (
                " [model ran: " + ", ".join(f"{k} {v}" for k, v in st.inference.gate_ran.items() if v) + "]"
                if any(st.inference.gate_ran.values())
                else ""
            )
            + "), "
            f"{st.out.started} event(s) ({st.out.events} start/end messages), "
            f"{st.drops.windows} windows dropped, {st.source.dropped_frames} samples dropped"
            + (f", {st.segments.nonfinite_samples} NaN/Inf samples zeroed" if st.segments.nonfinite_samples else "")
            + (
                f"; source: {st.source.stalls} stall(s), {st.source.losses} loss(es), {st.source.restarts} "
                f"reopen(s) ({st.source.failed_reopens} failed), {st.source.gaps} gap(s) totalling {st.source.gap_s:.1f} s"
                if st.source.losses
                else ""
            )
            + (f"; {st.reloads} config reload(s)" if st.reloads else "")
        )
        if st.source.error:
            say(f"{who}source error: {st.source.error}")
            rc = 1
    if service.commands_applied:
        say(f"remote control: {service.commands_applied} command(s) applied")
    if several:
        b = service.encoder.summary()
        say(
            f"encoder: {b['windows']} windows in {b['model_calls']} model calls "
            f"({b['mixed_batches']} shared by several sources)"
        )
    return rc
