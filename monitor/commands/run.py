"""`sound-monitor run`: the monitor. Flags override the config file for quick use."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("monitor.run")

DEFAULT_LABELS = ("smoke alarm", "dog barking", "glass breaking", "baby crying", "doorbell", "speech")


def add_arguments(p) -> None:
    p.add_argument("--config", help="YAML config (default: ./config.yaml if present)")
    p.add_argument("--source", help="mic | PATH (wav/flac/mp3/ogg) | - (raw PCM on stdin)")
    p.add_argument("--fast", action="store_true", help="process a file as fast as possible and exit at its end")
    p.add_argument("--no-tui", action="store_true", help="plain log lines instead of the live view")
    p.add_argument("--events", help="write events as JSON lines to PATH (- = stdout)")
    p.add_argument("--scores", help="write one JSON line of scores per window to PATH (- = stdout)")
    p.add_argument("--model", help="DIR | offline | auto")
    p.add_argument("--adapter", help="learned adapter .npz (eval --save-adapter); overrides model.adapter")
    p.add_argument("--labels", help='comma-separated labels, e.g. "dog barking,smoke alarm"')
    p.add_argument("--scoring", choices=["softmax", "vs-background"])
    p.add_argument("--template", help='prompt template, e.g. "This is a sound of {}."')
    p.add_argument("--threshold", type=float, help="event threshold for every label (0..1)")
    p.add_argument("--mqtt", help="mqtt://[user@]host[:port] or mqtts://... (password: env/file only)")
    p.add_argument("--rate", type=int, help="stdin/mic sample rate in Hz")
    p.add_argument("--channels", type=int, help="stdin/mic channel count")
    p.add_argument("--format", choices=["s16le", "f32le"], help="stdin sample format")
    p.add_argument("--hop", type=float, help="seconds between windows (default 1.0)")
    p.add_argument("--watch-config", action="store_true",
                   help="reload the config file when it changes (SIGHUP always reloads it)")


def _overrides(args) -> dict:
    ov = {
        "source.input": args.source,
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
    return with_overrides(cfg, _overrides(args), where=f"{path or 'defaults'} + command line")


def make_source(cfg, say):
    """-> (source, is_demo, reopen): ``reopen`` rebuilds a lost microphone (None: not restartable)."""
    from monitor.errors import UserError
    from monitor import sources

    sc = cfg.source
    if sc.input == "mic":
        if not sources.has_input_device():
            say("no audio input device found: running on the bundled DEMO recording instead "
                "(animal sounds; use --source PATH or - for other audio)")
            return sources.demo_source(sc.block_frames, realtime=sc.realtime), True, None

        def reopen():
            return sources.MicSource(sc.device, sc.sample_rate_hz, sc.channels, sc.block_frames)

        return reopen(), False, reopen
    if sc.input == "-":
        if not sc.sample_rate_hz:
            raise UserError("stdin needs its sample rate: --rate HZ (and --channels, --format if not 1, s16le)")
        return sources.StdinSource(sc.sample_rate_hz, sc.channels, sc.format, sc.block_frames), False, None
    return sources.FileSource(sc.input, sc.block_frames, realtime=sc.realtime), False, None


def build_sinks(cfg, view_state, backend_name, source_name, live):
    from monitor.sinks.jsonl import JsonlEventSink, JsonlScoresSink
    from monitor.sinks.terminal import TerminalSink

    sinks = []
    out = cfg.output
    if out.events_path:
        sinks.append(JsonlEventSink(out.events_path))
    if out.scores_path:
        sinks.append(JsonlScoresSink(out.scores_path))
    if cfg.mqtt.host:
        from monitor.sinks.mqtt import MqttSink

        sinks.append(
            MqttSink.from_config(
                cfg.mqtt,
                device_id=cfg.device,
                labels=[l.name for l in cfg.labels],
                state_dir=cfg.state_path,
                model_name=backend_name,
                source_name=source_name,
            )
        )
    if cfg.clips.enabled:
        from monitor.sinks.clips import ClipsSink

        sinks.append(ClipsSink(cfg.clips))
    term = TerminalSink(view_state, live=live)
    sinks.append(term)
    return sinks, term


def with_default_labels(cfg, say):
    from monitor.config import with_overrides

    if cfg.labels:
        return cfg
    say("no labels configured: using the defaults " + ", ".join(DEFAULT_LABELS)
        + " (set `labels:` in config.yaml or --labels)")
    return with_overrides(cfg, {"labels": list(DEFAULT_LABELS)})


def run(args) -> int:
    from monitor.events import EventTracker, rules_for
    from monitor.model_select import select_backend
    from monitor.pipeline import Pipeline
    from monitor.reload import ConfigReloader
    from monitor.scoring import Scorer
    from monitor.sinks.terminal import ViewState
    from monitor.state import SeqCounter

    def say(msg: str) -> None:
        print(f"sound-monitor: {msg}", file=sys.stderr, flush=True)

    cfg = with_default_labels(load_effective_config(args), say)
    source, demo, reopen = make_source(cfg, say)
    selected = select_backend(cfg.model.spec, cfg.model)
    backend = selected.backend
    if cfg.model.adapter:
        from monitor.adapt import maybe_adapt

        backend = maybe_adapt(backend, cfg.model.adapter)
    say(f"model {backend.name}: {selected.reason}")
    say(f"source {source.description} ({source.sample_rate_hz} Hz, {source.channels} ch); "
        f"labels: {', '.join(l.name for l in cfg.labels)}; scoring {cfg.scoring.method}")

    cache_dir = cfg.state_path / "label-cache"
    scorer = Scorer(backend, cfg.labels, cfg.scoring, cache_dir=cache_dir)
    rules = rules_for(cfg.labels, cfg.events)
    seq = SeqCounter(cfg.state_path, cfg.device)
    tracker = EventTracker(rules, device_id=cfg.device, source=source.description, model=backend.name, next_seq=seq.next)

    live = bool(cfg.output.tui and sys.stderr.isatty() and cfg.output.events_path != "-")
    view = ViewState(
        model=backend.name,
        source=source.description,
        labels=scorer.labels,
        thresholds={k: r.threshold for k, r in rules.items()},
        gate_dbfs=cfg.stream.gate_dbfs,
        demo=demo,
    )
    sinks, term = build_sinks(cfg, view, backend.name, source.description, live)
    for s in sinks:
        s.set_labels(list(scorer.labels))

    stop = threading.Event()
    pipe = Pipeline(source, backend, scorer, tracker, sinks, cfg.stream, buffer_s=cfg.source.buffer_s, stop=stop,
                    source_cfg=cfg.source, reopen=reopen)

    def apply_live(new_cfg) -> None:
        """Build the new scorer here (reload thread); the worker swaps it in between windows."""
        new_scorer = Scorer(backend, new_cfg.labels, new_cfg.scoring, cache_dir=cache_dir)
        new_rules = rules_for(new_cfg.labels, new_cfg.events)
        with term._lock:
            view.labels = new_scorer.labels
            view.thresholds = {k: r.threshold for k, r in new_rules.items()}
            view.active &= set(new_scorer.labels)
        pipe.swap_live(new_scorer, new_rules)

    config_path = args.config or ("config.yaml" if Path("config.yaml").is_file() else None)
    reloader = ConfigReloader(lambda: with_default_labels(load_effective_config(args), say), apply_live, cfg, stop,
                              watch_path=config_path if args.watch_config else None, say=say)

    def _on_signal(signum, frame):  # noqa: ARG001
        say("stopping (closing open events, flushing outputs)")
        stop.set()

    def _on_hup(signum, frame):  # noqa: ARG001
        reloader.request()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _on_hup)
    reloader.start()

    done = threading.Event()
    result = {}

    def _work():
        try:
            result["stats"] = pipe.run()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            result["error"] = e
        finally:
            done.set()

    worker = threading.Thread(target=_work, name="worker", daemon=True)
    worker.start()

    def refresh(state):
        st = pipe.stats
        state.dropped_windows = st.dropped_windows
        state.dropped_frames = st.dropped_frames
        state.sinks = {s.name: s.status().get("state", "ok") for s in sinks if s is not term}
        state.source_status = st.source_status + (f" ({st.source_detail})" if st.source_detail else "")

    if live:
        term.run_live(refresh, done)
    else:
        while not done.wait(0.5):
            pass
    stop.set()
    reloader.join()
    worker.join(timeout=10)
    if "error" in result:
        raise result["error"]
    st = result.get("stats")
    if st is not None:
        say(f"finished: {st.windows} windows ({st.gated} below the gate), {st.events} events, "
            f"{st.dropped_windows} windows dropped, {st.dropped_frames} samples dropped"
            + (f", {st.nonfinite_samples} NaN/Inf samples zeroed" if st.nonfinite_samples else "")
            + (f"; source: {st.source_stalls} stall(s), {st.source_losses} loss(es), {st.source_restarts} "
               f"reopen(s), {st.gaps} gap(s) totalling {st.gap_s:.1f} s" if st.source_losses else "")
            + (f"; {st.reloads} config reload(s)" if st.reloads else ""))
        if st.source_error:
            say(f"source error: {st.source_error}")
            return 1
    return 0
