"""The monitor's runtime: one run of one or several sources with one model.

``MonitorService`` owns what the sources share and what a run's lifetime is made of:

- the scorer (swapped live on a reload), the control plane (``ControlPlane``: the rules in
  force, pushed to the pipelines and the sinks on every change; remote commands are attached
  to it), the ``seq`` counter, one ``SharedEncoder`` (one model in memory, windows batched
  across sources) and the output lock that makes assigning ``seq`` and handing an event to
  the sinks one step;
- one ``Pipeline`` per source, each with its own stop (a file that ends does not end the
  others) and its own sinks (clips) next to the shared ones;
- the worker threads, the config reloader, signal handling (SIGINT/SIGTERM stop; SIGHUP
  reloads when detached, stops when the terminal closed) and an orderly shutdown: stop,
  join, close the encoder, close every sink once.

``assemble.py`` builds sources, backend and sinks from the config and hands them here;
``commands/run.py`` parses the command line and reports the results. Status for the live view goes to the terminal sink as one
snapshot (``TerminalSink.set_status``), never by writing its state from outside.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from monitor.config import Config
from monitor.events import EventTracker
from monitor.models.backend import Backend
from monitor.models.vetoes import ConfirmedStore, ExampleStore, VetoStore, check_veto_clips, with_taught_examples
from monitor.runtime.control import ControlPlane, Controls, RulesInForce
from monitor.runtime.metrics import EventCounter, MetricsServer, Snapshot, SourceHealth
from monitor.runtime.reload import ConfigReloader
from monitor.runtime.state import SeqCounter
from monitor.scoring import Scorer
from monitor.sinks.base import Sink
from monitor.sinks.journal import OpenEventsJournal, highest_seq
from monitor.sinks.terminal import TerminalSink
from monitor.sources import SourceSlot
from monitor.stream.fanout import close_sinks, publish_to
from monitor.stream.pipeline import Pipeline, Stats
from monitor.stream.shared_encoder import SharedEncoder

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one source's pipeline ended with."""

    name: str
    stats: Stats | None = None
    error: BaseException | None = None


def source_health(name: str, st: Stats, alive: bool, dropped_frames: int) -> SourceHealth:
    """One source's numbers for /healthz and /metrics (its stages' counters; the samples
    the ring buffer dropped, live)."""
    recent = st.drops.dropped_recently(60.0)
    return SourceHealth(
        name=name,
        status=st.source.status,
        detail=st.source.detail,
        alive=alive,
        windows=st.inference.windows,
        gated=st.inference.gated,
        dropped_windows=st.drops.windows,
        dropped_frames=dropped_frames,
        inference_ms=st.inference.inference_ms,
        level_dbfs=st.inference.level_dbfs,
        recent_dropped_windows=recent[0],
        recent_dropped_frames=recent[1],
    )


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
        # the one owner of the rules in force (config + values set at run time + taught
        # vetoes + reloads)
        self.veto_store = VetoStore(cfg.state_path)
        self.example_store = ExampleStore(cfg.state_path)  # "this was LABEL" (the web page)
        self.confirmed_store = ConfirmedStore(cfg.state_path)  # "yes, that was LABEL" (the web page)
        self.plane = ControlPlane(
            cfg,
            Controls(cfg.state_path, cfg.device),
            say=say,
            veto_store=self.veto_store,
            example_store=self.example_store,
            confirmed_store=self.confirmed_store,
        )
        self.scorer = self._scorer(cfg)
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
        self._reloading = False
        self.encoder = SharedEncoder(backend, linger_s=cfg.stream.batch_wait_s if self.several else 0.0)
        self.out_lock = threading.RLock()
        self.pipes = [self._pipeline(slot) for slot in slots]
        self.reloader = ConfigReloader(
            load_config,
            self.apply_live,
            cfg,
            self.stop,
            watch_path=watch_path,
            extra_paths=[self.veto_store.path, self.example_store.path, self.confirmed_store.path],
            say=say,
        )

    def _scorer(self, cfg: Config) -> Scorer:
        """The scorer of ``cfg``'s labels with their vetoes (a veto clip that is not there is
        refused, naming its place in the config)."""
        check_veto_clips(cfg)
        labels = with_taught_examples(cfg, self.example_store, self.confirmed_store).labels
        return Scorer(self.backend, labels, cfg.scoring, cache_dir=self.cache_dir, vetoes=self.plane.vetoes(cfg))

    def _pipeline(self, slot: SourceSlot) -> Pipeline:
        cfg = self.cfg
        tracker = EventTracker(
            dict(self.plane.rules.rules),
            device_id=cfg.device,
            source=slot.name,
            model=self.backend.name,
            next_seq=self.seq.next,
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
        """Build the new scorer here (reload thread); the control plane derives the rules of
        the new config and pushes them (the workers swap both in between windows)."""
        new_scorer = self._scorer(new_cfg)
        self.cfg, self.scorer = new_cfg, new_scorer
        self._reloading = True
        try:
            self.plane.reload(new_cfg)
        finally:
            self._reloading = False

    def _on_rules(self, rules: RulesInForce) -> None:
        """The rules in force changed: to every pipeline (between two windows, with the
        current scorer) and to every sink (the live view, the Home Assistant entities)."""
        for pipe in self.pipes:
            pipe.swap_live(self.scorer, dict(rules.rules), reload=self._reloading)
        for s in self.all_sinks:
            try:
                s.on_rules(rules)
            except Exception as e:  # noqa: BLE001 - one failing sink must not stop the others
                log.error("sink %s failed to take the rules: %s", s.name, e)

    @property
    def commands_applied(self) -> int:
        return self.plane.commands_applied

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
            if s.takes_commands:  # remote controls (MQTT; the web page next) all go to the plane
                s.attach_commands(self.plane.apply)
        self.plane.subscribe(self._on_rules)
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
        """Every few seconds, the run's numbers to the sinks that report them (MQTT diagnostics);
        with a CPU budget, its check once the first minute of a real-time run has passed."""
        check = None
        if self.cfg.model.cpu_budget_pct is not None and any(s.source.realtime for s in self.slots):
            from monitor.models.budget import BudgetCheck

            check = BudgetCheck(self.cfg.model.cpu_budget_pct, self.backend.name)
        while not done.wait(5.0):
            said = check.poll() if check is not None else None
            if said:
                self.say(said)
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
            t = self._workers.get(p.name)
            alive = t is None or t.is_alive()
            sources.append(source_health(p.name, p.stats, alive, p.feed.buffer.dropped_frames))
        pending = connected = None
        for s in self.all_sinks:
            ss = s.status()
            if ss.backlog is not None:  # a sink with a delivery backlog (the MQTT outbox)
                pending = (pending or 0) + ss.backlog
            if ss.connected is not None:
                connected = ss.connected if connected is None else connected and ss.connected
        counts = self.event_counter.counts() if self.event_counter is not None else {}
        rules = self.plane.rules
        return Snapshot(
            tuple(sources),
            counts,
            pending,
            connected,
            detection_enabled=rules.detection_enabled,
            labels_enabled=dict(rules.switches),
        )

    def refresh(self) -> None:
        """Status snapshot for the live view: drops, sinks (with the MQTT backlog), sources."""
        sinks = {}
        for s in self.all_sinks:
            if s is self.term or s is self.journal:
                continue
            sinks[s.name] = s.status().describe()  # the MQTT outbox: what waits, and how long
        status = [
            p.stats.source.status + (f" ({p.stats.source.detail})" if p.stats.source.detail else "") for p in self.pipes
        ]
        self.term.set_status(
            dropped_windows=sum(p.stats.drops.windows for p in self.pipes),
            dropped_frames=sum(p.stats.source.dropped_frames for p in self.pipes),
            sinks=sinks,
            source_status=status[0]
            if not self.several
            else ", ".join(f"{p.name}: {st}" for p, st in zip(self.pipes, status)),
        )
