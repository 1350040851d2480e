"""Assembling a run: sources, backend, sinks and the live view from a validated config,
handed to a ``MonitorService`` (monitor/runtime/service.py) that owns the run. `sound-monitor run`
(monitor/commands/run.py) parses flags, calls ``assemble`` and reports; nothing here parses
a command line or prints a summary.

A microphone that is not there is waited for (reported ``lost``, reopened with backoff);
only a bare start (no source and no MQTT configured) plays the bundled demo recording
instead, so a configured monitor never publishes demo audio.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.config import Config
    from monitor.models.backend import Backend
    from monitor.runtime.service import MonitorService
    from monitor.sinks.base import Sink
    from monitor.sinks.terminal import TerminalSink, ViewState
    from monitor.sources import Source
    from monitor.web.server import PageInfo

Say = Callable[[str], None]


@dataclass
class AssembledRun:
    service: MonitorService
    live: bool  # the rich live view (a terminal), else plain log lines


def assemble(
    cfg: Config,
    say: Say,
    *,
    demo_ok: bool,
    load_config: Callable[[], Config],
    watch_path: str | None,
) -> AssembledRun:
    from monitor.runtime.service import MonitorService
    from monitor.sources import SourceSlot

    several = len(cfg.source.inputs) > 1
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
    sinks, term, own_sinks = build_sinks(cfg, view, backend.name, names, live, page=_page(cfg, backend, names), say=say)
    slots = [SourceSlot(src, name, reopen) for (src, _, reopen), name in zip(made, names)]
    service = MonitorService(
        cfg, backend, slots, sinks, own_sinks, term, load_config=load_config, watch_path=watch_path, say=say
    )
    return AssembledRun(service, live)


def _device(text: str) -> int | str:
    text = text.strip()
    return int(text) if text.isdigit() else text


def make_source(
    cfg: Config, say: Say, spec: str | None = None, several: bool = False, demo_ok: bool = False
) -> tuple[Source, bool, Callable[[], Source] | None]:
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

        def reopen() -> Source:
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

        def reopen_stream() -> Source:
            return sources.FfmpegSource(spec, sc.block_frames, ffmpeg)

        return reopen_stream(), False, reopen_stream
    if spec == "-":
        if not sc.sample_rate_hz:
            raise UserError("stdin needs its sample rate: --rate HZ (and --channels, --format if not 1, s16le)")
        return sources.StdinSource(sc.sample_rate_hz, sc.channels, sc.format, sc.block_frames), False, None
    return sources.FileSource(spec, sc.block_frames, realtime=sc.realtime), False, None


def source_names(srcs: Sequence[Source]) -> list[str]:
    """The sources' descriptions, made unique (events and scores name their source)."""
    names: list[str] = []
    for src in srcs:
        base = name = src.description
        k = 2
        while name in names:
            name, k = f"{base}#{k}", k + 1
        names.append(name)
    return names


def build_sinks(
    cfg: Config,
    view_state: ViewState,
    backend_name: str,
    source_names: Sequence[str],
    live: bool,
    page: PageInfo | None = None,
    say: Say = print,
) -> tuple[list[Sink], TerminalSink, dict[str, list[Sink]]]:
    """-> (shared sinks, terminal sink, per-source sinks): clips are kept per source (a
    clip holds the audio of the source whose event it is), everything else is shared.
    The web page (``page``: what it shows of the run) is served from here on."""
    from monitor.sinks.jsonl import JsonlEventSink, JsonlScoresSink
    from monitor.sinks.terminal import TerminalSink

    several = len(source_names) > 1
    sinks: list[Sink] = []
    store = None
    if cfg.store.enabled:
        import sqlite3

        from monitor.eventstore import EventStore, store_path
        from monitor.sinks.store import StoreSink

        st = cfg.store
        path = store_path(cfg.state_path, cfg.device)
        try:
            store = EventStore(path, keep_days=st.keep_days, max_mb=st.max_mb, scores_hours=st.scores_hours)
        except (sqlite3.Error, OSError) as e:  # a full or read-only state dir: the monitor runs on
            say(f"event store {path} unavailable: {e}; the history (web page, `events`) is not kept this run")
        else:
            sinks.append(StoreSink(store))
    if cfg.web.listen and page is not None:
        from monitor.web.server import WebSink, start_web

        web = WebSink(cfg.web, page, store)
        start_web(web, say)
        sinks.append(web)
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


def _page(cfg: Config, backend: Backend, names: Sequence[str]) -> PageInfo:
    from monitor.web.server import PageInfo

    return PageInfo(
        device=cfg.device,
        model=backend.name,
        encoder=backend.int8_choice,
        gate_dbfs=cfg.stream.gate_dbfs,
        change_gate=cfg.stream.change_gate.enabled,
        sources=tuple(names),
    )


def _backend(cfg: Config, say: Say) -> Backend:
    from monitor.models.select import select_backend

    labels = [l.name for l in cfg.labels]
    st = cfg.stream
    selected = select_backend(cfg.model.spec, cfg.model, labels, hop_s=st.hop_s, gate=st.change_gate.enabled)
    backend = selected.backend
    if cfg.model.adapter:
        from monitor.models.adapter import maybe_adapt

        backend = maybe_adapt(backend, cfg.model.adapter)
    say(f"model {backend.name}: {selected.reason}")
    if selected.backend.int8_choice:  # model.int8: auto's decision (CLAP)
        say(f"encoder: {selected.backend.int8_choice}")
    level = selected.backend.level
    say(f"level: {level.describe()}" if level is not None else "level: raw (no level stage for this model)")
    return backend


def _view(cfg: Config, backend: Backend, names: Sequence[str], demo: bool) -> ViewState:
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
