"""The monitor's runtime: one run of one or several sources with one model.

``MonitorService`` owns what the sources share and what a run's lifetime is made of:

- the scorer and event rules (swapped live on a reload), the ``seq`` counter, one
  ``SharedEncoder`` (one model in memory, windows batched across sources) and the output
  lock that makes assigning ``seq`` and handing an event to the sinks one step;
- one ``Pipeline`` per source, each with its own stop (a file that ends does not end the
  others) and its own sinks (clips) next to the shared ones;
- the worker threads, the config reloader, signal handling (SIGINT/SIGTERM stop; SIGHUP
  reloads when detached, stops when the terminal closed) and an orderly shutdown: stop,
  join, close the encoder, close every sink once.

``commands/run.py`` parses the command line, builds sources, backend and sinks, hands them
here and reports the results. Status for the live view goes to the terminal sink as one
snapshot (``TerminalSink.set_status``), never by writing its state from outside.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from monitor.backend import Backend
from monitor.config import Config
from monitor.control import ControlError, Controls, parse_switch, parse_threshold
from monitor.encode import SharedEncoder
from monitor.events import EventTracker, lowest_threshold
from monitor.logs import Throttle, held_note
from monitor.metrics import EventCounter, MetricsServer, Snapshot, SourceHealth
from monitor.pipeline import Pipeline, Stats, close_sinks, publish_to
from monitor.reload import ConfigReloader
from monitor.scoring import Scorer
from monitor.sinks.base import Sink
from monitor.sinks.mqtt import MqttSink
from monitor.sinks.terminal import TerminalSink
from monitor.sources import SourceSlot
from monitor.state import OpenEventsJournal, SeqCounter, highest_seq

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one source's pipeline ended with."""

    name: str
    stats: Stats | None = None
    error: BaseException | None = None


class MonitorService:
    def __init__(
        self,
        cfg: Config,
        backend: Backend,
        slots: list[SourceSlot],
        shared_sinks: list[Sink],
        own_sinks: dict[str, list[Sink]],
        term: TerminalSink,
        *,
        load_config: Callable[[], Config],
        watch_path: str | None = None,
        say: Callable[[str], None] = log.warning,
    ):
        self.cfg = cfg
        self.backend = backend
        self.slots = slots
        self.term = term
        self.say = say
        self.several = len(slots) > 1
        self.cache_dir = cfg.state_path / "label-cache"
        self.scorer = Scorer(backend, cfg.labels, cfg.scoring, cache_dir=self.cache_dir)
        # thresholds and switches set over MQTT, kept in the state dir, on top of every config
        self.controls = Controls(cfg.state_path, cfg.device)
        self.rules = self.controls.rules(cfg)
        self.commands_applied = 0  # remote commands that changed something (the summary)
        self._command_log = Throttle(60.0)
        self.journal = OpenEventsJournal(cfg.state_path, cfg.device)
        self.event_counter: EventCounter | None = EventCounter() if cfg.metrics.listen else None
        self.shared_sinks = [self.journal, *shared_sinks]
        if self.event_counter is not None:
            self.shared_sinks.append(self.event_counter)
        self.metrics: MetricsServer | None = None
        self._workers: dict[str, threading.Thread] = {}
        self.own_sinks = own_sinks  # by source name: sinks of one source only (its --scores file)
        self.all_sinks = self.shared_sinks + [s for slot in slots for s in own_sinks.get(slot.name, [])]
        for s in self.all_sinks:
            s.set_labels(list(self.scorer.labels))
        # numbering continues after the highest seq anything has on record (never repeats)
        self.seq = SeqCounter(cfg.state_path, cfg.device, floor=highest_seq(self.all_sinks))
        self.stop = threading.Event()
        self.encoder = SharedEncoder(backend, linger_s=cfg.stream.batch_wait_s if self.several else 0.0)
        self.out_lock = threading.RLock()
        self.pipes = [self._pipeline(slot) for slot in slots]
        self.reloader = ConfigReloader(load_config, self.apply_live, cfg, self.stop, watch_path=watch_path, say=say)

    def _pipeline(self, slot: SourceSlot) -> Pipeline:
        cfg = self.cfg
        tracker = EventTracker(
            self.rules, device_id=cfg.device, source=slot.name, model=self.backend.name, next_seq=self.seq.next
        )
        return Pipeline(
            slot,
            self.scorer,
            tracker,
            self.shared_sinks + self.own_sinks.get(slot.name, []),
            cfg.stream,
            cfg.source,
            encoder=self.encoder,
            out_lock=self.out_lock,
        )

    # -- control ---------------------------------------------------------------------------
    def end_left_open(self) -> int:
        """End the events a killed earlier run left open (``reason: restart``); how many."""
        ends = self.journal.close_left_open(self.seq.next)
        for ev in ends:
            publish_to(self.shared_sinks, ev)
        return len(ends)

    def stop_all(self) -> None:
        self.stop.set()
        for pipe in self.pipes:
            pipe.stop.set()

    def apply_live(self, new_cfg: Config) -> None:
        """Build the new scorer here (reload thread); the workers swap it in between windows."""
        new_scorer = Scorer(self.backend, new_cfg.labels, new_cfg.scoring, cache_dir=self.cache_dir)
        self.cfg, self.scorer = new_cfg, new_scorer
        self._push_rules(reload=True)

    def _push_rules(self, reload: bool = False) -> None:
        """The event rules of the current config and controls to every pipeline (between two
        windows), the live view and the MQTT entities."""
        rules = self.controls.rules(self.cfg)
        self.rules = rules
        self._show_rules()
        for pipe in self.pipes:
            pipe.swap_live(self.scorer, rules, reload=reload)
        self._publish_controls()

    def _show_rules(self) -> None:
        """The rules in force to the live view: thresholds, switched-off labels, the pause."""
        self.term.set_rules(
            self.scorer.labels,
            {k: r.threshold for k, r in self.rules.items()},
            switched_off=[k for k in self.rules if not self.controls.label_enabled(k)],
            paused=not self.controls.enabled,
        )

    def control_notes(self) -> list[str]:
        """What values set at run time (kept in the state dir) override in this run's config:
        said at start, so a threshold from Home Assistant never silently beats --threshold."""
        lines = self.controls.describe(list(self.scorer.labels))
        if not lines:
            return []
        return [
            f"set at run time and kept in {self.controls.path} (they override the config and the "
            "command line; change them from Home Assistant / MQTT, or delete that file):",
            *lines,
        ]

    def _publish_controls(self) -> None:
        values = {
            k: (r.threshold, self.controls.label_enabled(k), lowest_threshold(r.hysteresis))
            for k, r in self.rules.items()
        }
        for s in self.all_sinks:
            if isinstance(s, MqttSink):
                s.set_controls(values, self.controls.enabled)

    def control(self, kind: str, label: str | None, payload: bytes, via: str = "MQTT") -> str | None:
        """A command from MQTT (network thread): validate, keep, apply. -> why it was refused.

        A value already in force changes nothing (no file write, no log line); every change
        is logged with what it was before, at most one line per kind of command a minute
        (a flood is counted in the next line)."""
        try:
            if kind == "threshold":
                assert label is not None
                rule = self.rules.get(label)
                if rule is None:
                    return "no such label on this device"
                change = self.controls.set_threshold(label, parse_threshold(payload), rule)
            elif kind == "enabled":
                assert label is not None
                change = self.controls.set_label_enabled(label, parse_switch(payload))
            elif kind == "device_enabled":
                change = self.controls.set_enabled(parse_switch(payload))
            else:
                return f"unknown command {kind!r}"
        except ControlError as e:
            return str(e)
        if change is None:
            return None
        self.commands_applied += 1
        held = self._command_log.take(kind)
        if held is not None:
            who = f"{label}: " if label else ""
            self.say(f"{who}{change} (set over {via})" + held_note(held, self._command_log.interval_s))
        self._push_rules()
        return None

    def install_signals(self, attached: bool) -> None:
        """SIGINT/SIGTERM stop; SIGHUP stops when started from a terminal (it closed), else reloads."""

        def _on_stop(signum: int, frame: object) -> None:
            self.say("stopping (closing open events, flushing outputs)")
            self.stop_all()

        def _on_hup(signum: int, frame: object) -> None:
            if attached:  # the terminal went away: a monitor must not live on, orphaned
                self.say("the terminal closed (SIGHUP): stopping")
                self.stop_all()
            else:  # detached (systemd, nohup, setsid): SIGHUP means reload the config
                self.reloader.request()

        signal.signal(signal.SIGINT, _on_stop)
        signal.signal(signal.SIGTERM, _on_stop)
        signal.signal(signal.SIGHUP, _on_hup)

    # -- running -----------------------------------------------------------------------------
    def run(self, live: bool) -> list[Outcome]:
        """Run every pipeline until all have ended (or ``stop_all``); shut down in order."""
        self.reloader.start()
        outcomes = [Outcome(p.name) for p in self.pipes]
        workers = [
            threading.Thread(target=self._work, args=(p, o), name=f"worker {p.name}", daemon=True)
            for p, o in zip(self.pipes, outcomes)
        ]
        self._workers = {p.name: t for p, t in zip(self.pipes, workers)}
        for s in self.all_sinks:
            if isinstance(s, MqttSink) and self.cfg.mqtt.control:
                s.on_control = self.control
        self._show_rules()
        self._publish_controls()
        if self.cfg.metrics.listen:
            self.metrics = MetricsServer(self.cfg.metrics.listen, self.snapshot)
            self.say(f"metrics: http://{self.metrics.address}/metrics and /healthz")
        for t in workers:
            t.start()
        done = threading.Event()

        def _wait_all() -> None:
            for t in workers:
                t.join()
            done.set()

        threading.Thread(target=_wait_all, name="join", daemon=True).start()
        threading.Thread(target=self._status_loop, args=(done,), name="status", daemon=True).start()
        try:
            if live:
                self.term.run_live(self.refresh, done)
            else:
                while not done.wait(0.5):
                    pass
        finally:
            self.stop_all()
            if self.metrics is not None:
                self.metrics.close()
            self.reloader.join()
            for t in workers:
                t.join(timeout=10)
            self.encoder.close()
            close_sinks(self.all_sinks)
        return outcomes

    def _status_loop(self, done: threading.Event) -> None:
        """Every few seconds, the run's numbers to the sinks that report them (MQTT diagnostics)."""
        while not done.wait(5.0):
            try:
                snap = self.snapshot()
            except Exception as e:  # noqa: BLE001 - a status report must never stop the run
                log.debug("status snapshot failed: %s", e)
                continue
            for s in self.all_sinks:
                try:
                    s.on_status(snap)
                except Exception as e:  # noqa: BLE001 - one sink's failure must not stop the rest
                    log.debug("sink %s failed to take the status: %s", s.name, e)

    def _work(self, pipe: Pipeline, outcome: Outcome) -> None:
        try:
            outcome.stats = pipe.run()
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            outcome.error = e
            self.stop_all()  # one source failing on a bug stops the run (nothing is left half-open)

    def snapshot(self) -> Snapshot:
        """The run's numbers as one value (for /healthz and /metrics)."""
        sources = []
        for p in self.pipes:
            st = p.stats
            t = self._workers.get(p.name)
            recent = st.dropped_recently(60.0)
            sources.append(
                SourceHealth(
                    name=p.name,
                    status=st.source_status,
                    detail=st.source_detail,
                    alive=t is None or t.is_alive(),
                    windows=st.windows,
                    gated=st.gated,
                    dropped_windows=st.dropped_windows,
                    dropped_frames=p.buffer.dropped_frames,
                    inference_ms=st.inference_ms,
                    level_dbfs=st.level_dbfs,
                    recent_dropped_windows=recent[0],
                    recent_dropped_frames=recent[1],
                )
            )
        pending = connected = None
        for s in self.all_sinks:
            if s.name == "mqtt":
                ms = s.status()
                pending, connected = int(ms.get("backlog", 0)), str(ms.get("state", "")).startswith("connected")
        counts = self.event_counter.counts() if self.event_counter is not None else {}
        return Snapshot(
            tuple(sources),
            counts,
            pending,
            connected,
            detection_enabled=self.controls.enabled,
            labels_enabled={k: self.controls.label_enabled(k) for k in self.rules},
        )

    def refresh(self) -> None:
        """Status snapshot for the live view: drops, sinks (with the MQTT backlog), sources."""
        sinks = {}
        for s in self.all_sinks:
            if s is self.term or s is self.journal:
                continue
            st = s.status()
            text = st.get("state", "ok")
            if "backlog" in st:  # the MQTT outbox: what waits for the broker, and for how long
                text += f", backlog {st['backlog']}" + (f" ({st['backlog_age_s']:.0f} s)" if st["backlog"] else "")
            sinks[s.name] = text
        status = [
            p.stats.source_status + (f" ({p.stats.source_detail})" if p.stats.source_detail else "") for p in self.pipes
        ]
        self.term.set_status(
            dropped_windows=sum(p.stats.dropped_windows for p in self.pipes),
            dropped_frames=sum(p.stats.dropped_frames for p in self.pipes),
            sinks=sinks,
            source_status=status[0]
            if not self.several
            else ", ".join(f"{p.name}: {st}" for p, st in zip(self.pipes, status)),
        )
