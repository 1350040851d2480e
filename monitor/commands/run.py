"""`sound-monitor run`: the monitor. Flags override the config file for quick use."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger("monitor.run")

DEFAULT_LABELS = ("smoke alarm", "dog barking", "glass breaking", "baby crying", "doorbell", "speech")


def add_arguments(p) -> None:
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
        "--watch-config",
        action="store_true",
        help="reload the config file when it changes (SIGHUP reloads it when the monitor runs "
        "detached, e.g. under systemd; from a terminal SIGHUP stops it)",
    )


def _overrides(args) -> dict:
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


def load_effective_config(args):
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


def _device(text: str):
    text = text.strip()
    return int(text) if text.isdigit() else text


def make_source(cfg, say, spec: str | None = None, several: bool = False, demo_ok: bool = False):
    """One source of ``cfg.source.inputs`` (default: the first) -> (source, is_demo, reopen):
    ``reopen`` rebuilds a lost microphone (None: not restartable).

    A microphone that is not there is waited for (reported ``lost``, reopened with backoff);
    only a bare start (``demo_ok``: no source and no MQTT configured) plays the bundled demo
    recording instead, so a configured monitor never publishes demo audio."""
    from monitor import sources
    from monitor.errors import UserError

    sc = cfg.source
    spec = sc.inputs[0] if spec is None else spec
    if spec == "mic" or spec.startswith("mic:"):
        device = sc.device if spec == "mic" else _device(spec[4:])

        def reopen():
            return sources.MicSource(device, sc.sample_rate_hz, sc.channels, sc.block_frames)

        present = sources.has_input_device()
        if not present and demo_ok and not several:
            say(
                "no audio input device found: running on the bundled DEMO recording instead "
                "(animal sounds; use --source PATH or - for other audio)"
            )
            return sources.demo_source(sc.block_frames, realtime=sc.realtime), True, None
        try:
            if present:
                return reopen(), False, reopen
            reason = "no audio input device found"
        except UserError as e:
            reason = str(e)
        name = f"mic:{device}" if device is not None else "mic"
        say(f"{reason}: waiting for {name} (reported lost, retried with backoff; see `sound-monitor devices`)")
        return sources.AbsentSource(name, sc.sample_rate_hz or 48000, sc.channels, reason), False, reopen
    if sources.is_stream_url(spec):
        ffmpeg = sources.find_ffmpeg()  # one clear line when it is missing, before anything runs

        def reopen_stream():
            return sources.FfmpegSource(spec, sc.block_frames, ffmpeg)

        return reopen_stream(), False, reopen_stream
    if spec == "-":
        if not sc.sample_rate_hz:
            raise UserError("stdin needs its sample rate: --rate HZ (and --channels, --format if not 1, s16le)")
        return sources.StdinSource(sc.sample_rate_hz, sc.channels, sc.format, sc.block_frames), False, None
    return sources.FileSource(spec, sc.block_frames, realtime=sc.realtime), False, None


def _has_terminal() -> bool:
    """True when this process has a controlling terminal (started from a shell)."""
    import os

    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def source_names(srcs) -> list[str]:
    """The sources' descriptions, made unique (events and scores name their source)."""
    names: list[str] = []
    for src in srcs:
        base = name = src.description
        k = 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def build_sinks(cfg, view_state, backend_name, source_names, live):
    """-> (shared sinks, terminal sink, per-source sinks): clips are kept per source (a
    clip holds the audio of the source whose event it is), everything else is shared."""
    from monitor.sinks.base import Sink
    from monitor.sinks.jsonl import JsonlEventSink, JsonlScoresSink
    from monitor.sinks.terminal import TerminalSink

    several = len(source_names) > 1
    sinks: list[Sink] = []
    out = cfg.output
    if out.events_path:
        sinks.append(JsonlEventSink(out.events_path))
    if out.scores_path:
        sinks.append(JsonlScoresSink(out.scores_path, with_source=several))
    if cfg.mqtt.host:
        from monitor.sinks.mqtt import MqttSink

        sinks.append(
            MqttSink.from_config(
                cfg.mqtt,
                device_id=cfg.device,
                labels=[l.name for l in cfg.labels],
                state_dir=cfg.state_path,
                model_name=backend_name,
                source_name=", ".join(source_names),
            )
        )
    term = TerminalSink(view_state, live=live)
    sinks.append(term)
    own: dict[str, list] = {name: [] for name in source_names}
    if cfg.clips.enabled:
        from monitor.sinks.clips import ClipsSink
        from monitor.topics import slugify

        for name in source_names:
            clips_cfg = cfg.clips
            if several:  # one folder per source
                clips_cfg = clips_cfg.model_copy(update={"dir": str(Path(cfg.clips.dir) / slugify(name))})
            own[name].append(ClipsSink(clips_cfg))
    return sinks, term, own


def with_default_labels(cfg, say):
    from monitor.config import with_overrides

    if cfg.labels:
        return cfg
    say(
        "no labels configured: using the defaults "
        + ", ".join(DEFAULT_LABELS)
        + " (set `labels:` in config.yaml or --labels)"
    )
    return with_overrides(cfg, {"labels": list(DEFAULT_LABELS)})


def run(args) -> int:
    from monitor.state import StateLock

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


def _run(args, cfg, say) -> int:
    from monitor.service import MonitorService
    from monitor.sources import SourceSlot

    several = len(cfg.source.inputs) > 1
    demo_ok = not getattr(args, "source_explicit", True) and not cfg.mqtt.host
    made = [make_source(cfg, say, spec, several, demo_ok) for spec in cfg.source.inputs]
    names = source_names([m[0] for m in made])
    backend = _backend(cfg, say)
    for (src, _, _), name in zip(made, names):
        say(f"source {name} ({src.sample_rate_hz} Hz, {src.channels} ch)")
    say(
        f"labels: {', '.join(l.name for l in cfg.labels)}; scoring {cfg.scoring.method}"
        + (f"; {len(made)} sources share one model" if several else "")
    )
    live = bool(cfg.output.tui and sys.stderr.isatty() and cfg.output.events_path != "-")
    view = _view(cfg, backend, names, demo=any(m[1] for m in made))
    sinks, term, own_sinks = build_sinks(cfg, view, backend.name, names, live)
    slots = [SourceSlot(src, name, reopen) for (src, _, reopen), name in zip(made, names)]
    service = MonitorService(
        cfg,
        backend,
        slots,
        sinks,
        own_sinks,
        term,
        load_config=lambda: with_default_labels(load_effective_config(args), say),
        watch_path=args.config if args.watch_config else None,
        say=say,
    )
    for line in service.plane.notes():
        say(line)
    ended = service.end_left_open()
    if ended:
        say(f"ended {ended} event(s) that the previous run left open (reason: restart)")
    service.install_signals(attached=_has_terminal())
    outcomes = service.run(live)
    return _report(outcomes, service, say)


def _backend(cfg, say):
    from monitor.model_select import select_backend

    selected = select_backend(cfg.model.spec, cfg.model, [l.name for l in cfg.labels])
    backend = selected.backend
    if cfg.model.adapter:
        from monitor.adapter import maybe_adapt

        backend = maybe_adapt(backend, cfg.model.adapter)
    say(f"model {backend.name}: {selected.reason}")
    if selected.backend.int8_choice:  # model.int8: auto's decision (CLAP)
        say(f"encoder: {selected.backend.int8_choice}")
    level = selected.backend.level
    say(f"level: {level.describe()}" if level is not None else "level: raw (no level stage for this model)")
    return backend


def _view(cfg, backend, names, demo: bool):
    from monitor.events import rules_for
    from monitor.sinks.terminal import ViewState

    rules = rules_for(cfg.labels, cfg.events)
    view = ViewState(
        model=backend.name,
        source=", ".join(names),
        labels=tuple(l.name for l in cfg.labels),
        thresholds={k: r.threshold for k, r in rules.items()},
        gate_dbfs=cfg.stream.gate_dbfs,
        demo=demo,
    )
    if len(names) > 1:  # a column per source in the live view from the start
        view.by_source = {n: {"scores": {}, "level_dbfs": -150.0, "stream_s": 0.0} for n in names}
    return view


def _report(outcomes, service, say) -> int:
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
            f"{who}finished: {st.windows} windows ({st.gated} below the gate"
            + (f", {st.reused} reused by the change gate" if st.reused else "")
            + (
                " [model ran: " + ", ".join(f"{k} {v}" for k, v in st.gate_ran.items() if v) + "]"
                if any(st.gate_ran.values())
                else ""
            )
            + "), "
            f"{st.events_started} event(s) ({st.events} start/end messages), "
            f"{st.dropped_windows} windows dropped, {st.dropped_frames} samples dropped"
            + (f", {st.nonfinite_samples} NaN/Inf samples zeroed" if st.nonfinite_samples else "")
            + (
                f"; source: {st.source_stalls} stall(s), {st.source_losses} loss(es), {st.source_restarts} "
                f"reopen(s) ({st.source_failed_reopens} failed), {st.gaps} gap(s) totalling {st.gap_s:.1f} s"
                if st.source_losses
                else ""
            )
            + (f"; {st.reloads} config reload(s)" if st.reloads else "")
        )
        if st.source_error:
            say(f"{who}source error: {st.source_error}")
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
