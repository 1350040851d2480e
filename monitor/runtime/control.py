"""The control plane: the rules in force and their one owner (``ControlPlane``).

Per-label thresholds and on/off switches, and pausing the whole device, are set at run time
(MQTT / Home Assistant `number` and `switch` entities today, the web page next: every remote
control sends a ``Command`` to ``ControlPlane.apply``) and kept across restarts.

The values live in ``<state dir>/control-<dev>.json`` as overrides of the config file:
``{"enabled": bool, "labels": {label: {"threshold": float, "enabled": bool}}}``. They are
validated here (a bad payload is refused with a reason, never applied), applied on top of
every config the monitor runs with (at start and on each reload) and reach the pipelines
between two windows, like a reload. `check-config` lists them.

A paused device keeps scoring (the live view and the level sensor go on) but starts no
events; a label switched off likewise; switching either off ends the open events.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from monitor.config import Config, hysteresis_problem
from monitor.events import LabelRule, lowest_threshold, rules_for
from monitor.files import write_text_atomic
from monitor.logs import Throttle, held_note
from monitor.models.vetoes import ConfirmedStore, ExampleStore, TaughtClips, Veto, VetoStore, vetoes_for
from monitor.runtime.state import state_file

log = logging.getLogger(__name__)


class ControlError(ValueError):
    """A control payload that cannot be applied (the message says why)."""


# a threshold as Home Assistant's number entity and a person type it: ASCII digits, one
# optional point, no sign, exponent, underscore or other script's digits (float() takes
# "0.2_5", "-0", "１" and " 5e-1")
_THRESHOLD = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


def parse_threshold(payload: bytes | str) -> float:
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    t = text.strip(" \t\r\n")
    if not _THRESHOLD.fullmatch(t):
        raise ControlError(f"threshold {text[:40]!r} is not a number between 0 and 1 (e.g. 0.35)")
    v = float(t)
    if not 0.0 <= v <= 1.0:
        raise ControlError(f"threshold {t[:40]} is outside 0..1")
    return round(v, 4)


def parse_switch(payload: bytes | str) -> bool:
    text = (payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload).strip().upper()
    if text not in ("ON", "OFF"):
        raise ControlError(f"switch payload {text[:40]!r}: use ON or OFF")
    return text == "ON"


class Controls:
    """The overrides, their file, and how they change the event rules (thread-safe)."""

    def __init__(self, state_dir: Path, device_id: str):
        self.path = state_file(state_dir, "control", device_id, ".json")
        self._lock = threading.Lock()
        self.enabled = True
        self.labels: dict[str, dict] = {}
        self._warned: set[tuple[str, float]] = set()
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable control overrides %s: %s", self.path, e)
            return
        if not isinstance(data, dict):
            return
        self.enabled = data.get("enabled", True) is not False
        for name, o in (data.get("labels") or {}).items():
            if not isinstance(o, dict):
                continue
            keep: dict = {}
            try:
                if "threshold" in o:
                    value = o["threshold"]
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                        raise ControlError(f"threshold {str(value)[:40]!r} is not a number between 0 and 1")
                    keep["threshold"] = round(float(value), 4)
            except ControlError as e:
                log.warning("%s: label %r: %s (ignored)", self.path, name, e)
            if "enabled" in o:
                keep["enabled"] = o["enabled"] is not False
            if keep:
                self.labels[str(name)] = keep

    def _save(self) -> None:
        data = {"enabled": self.enabled, "labels": self.labels}
        try:
            write_text_atomic(self.path, json.dumps(data, indent=1, sort_keys=True))
        except OSError as e:
            log.warning("cannot save control overrides %s: %s (they hold until the monitor stops)", self.path, e)

    # -- changes (from MQTT) ----------------------------------------------------------------
    # Each returns the change as "old -> new", or None when the value is already in force
    # (then nothing is written: a flood of the same command does not rewrite the file).
    def set_threshold(self, label: str, value: float, rule: LabelRule) -> str | None:
        """``rule``: the label's rule in force (its threshold and hysteresis); a threshold
        the config could not have (hysteresis not below it) is refused with its message."""
        problem = hysteresis_problem(value, rule.hysteresis, label)
        if problem:
            raise ControlError(problem)
        with self._lock:
            if rule.threshold == value:
                return None
            self.labels.setdefault(label, {})["threshold"] = value
            self._save()
        return f"threshold {rule.threshold:g} -> {value:g}"

    def set_label_enabled(self, label: str, on: bool) -> str | None:
        with self._lock:
            before = self.labels.get(label, {}).get("enabled", True) is not False
            if before == on:
                return None
            self.labels.setdefault(label, {})["enabled"] = on
            self._save()
        return f"detection {'off -> on' if on else 'on -> off'}"

    def set_enabled(self, on: bool) -> str | None:
        with self._lock:
            if self.enabled == on:
                return None
            self.enabled = on
            self._save()
        return "detection resumed" if on else "detection paused"

    def label_enabled(self, label: str) -> bool:
        """The label's own switch (the device switch aside)."""
        with self._lock:
            return self.labels.get(label, {}).get("enabled", True) is not False

    # -- what they do -----------------------------------------------------------------------
    def rules(self, cfg: Config) -> dict[str, LabelRule]:
        """The config's event rules with the overrides applied."""
        base = rules_for(cfg.labels, cfg.events)
        with self._lock:
            out = {}
            for name, rule in base.items():
                o = self.labels.get(name, {})
                if "threshold" in o:
                    problem = hysteresis_problem(o["threshold"], rule.hysteresis, name)
                    if problem is None:
                        rule = rule.with_threshold(o["threshold"])
                    elif (name, o["threshold"]) not in self._warned:
                        # the config's hysteresis grew past a threshold set earlier at run time
                        self._warned.add((name, o["threshold"]))
                        log.warning(
                            "%s: the threshold set at run time does not hold: %s; the config's %g is used",
                            self.path,
                            problem,
                            rule.threshold,
                        )
                label_on = o.get("enabled", True) is not False
                why = "" if (self.enabled and label_on) else ("paused" if not self.enabled else "switched off")
                rule = dataclasses.replace(rule, enabled=self.enabled and label_on, off_reason=why)
                out[name] = rule
            return out

    def describe(self, label_names: list[str]) -> list[str]:
        """Lines for check-config: what overrides the file, for the labels it has."""
        with self._lock:
            lines = [] if self.enabled else ["device paused (enabled: OFF)"]
            for name in label_names:
                o = self.labels.get(name, {})
                if "threshold" in o:
                    lines.append(f"labels[{name!r}].threshold = {o['threshold']}")
                if o.get("enabled") is False:
                    lines.append(f"labels[{name!r}] switched off")
            return lines


# -- the owner of the rules in force -----------------------------------------------------------
# veto / forget_veto: teach the label a veto clip (payload: the clip's path) or take one back
# (payload: its name); example / forget_example: the same for an example clip of the label
# ("this was LABEL"); confirm / forget_confirm: a clip of the label's own event confirmed ("yes,
# that was LABEL": it keeps veto clips off that sound). The reloader rebuilds the scorer.
CommandKind = Literal[
    "threshold",
    "enabled",
    "device_enabled",
    "veto",
    "forget_veto",
    "example",
    "forget_example",
    "confirm",
    "forget_confirm",
]
TEACH_KINDS = ("veto", "forget_veto", "example", "forget_example", "confirm", "forget_confirm")


@dataclass(frozen=True)
class Command:
    """One remote command, whatever transport carried it (MQTT today, the web page next).
    ``payload`` is the raw value as sent (``"0.35"``, ``"ON"``); ``via`` names the transport
    in the log line."""

    kind: CommandKind
    label: str | None
    payload: bytes | str
    via: str = "MQTT"
    origin: str | None = None  # a taught veto: where the clip came from (an event id)


CommandHandler = Callable[[Command], "str | None"]  # -> why it was refused (None: applied or already so)


@dataclass(frozen=True)
class RulesInForce:
    """What every stage that decides or shows uses, derived in one place (``ControlPlane``):
    each label's event rule (threshold, off level, ... and whether it may start events), its
    own switch, the lowest threshold its hysteresis allows, and the device switch."""

    labels: tuple[str, ...]
    rules: Mapping[str, LabelRule]
    switches: Mapping[str, bool]  # each label's own switch (the device switch aside)
    lowest: Mapping[str, float]
    detection_enabled: bool
    # each label's veto sounds (config prompts and clips, and the clips taught into the store)
    vetoes: Mapping[str, tuple[Veto, ...]] = dataclasses.field(default_factory=dict)

    def thresholds(self) -> dict[str, float]:
        return {k: r.threshold for k, r in self.rules.items()}

    def switched_off(self) -> list[str]:
        return [k for k, on in self.switches.items() if not on]


RulesListener = Callable[[RulesInForce], None]


class ControlPlane:
    """The one owner of the rules in force: the config's labels and event settings, the
    values set at run time (``Controls``, kept in the state dir) and reloads. Every remote
    control talks to it through ``apply(Command)``; whoever uses or shows the rules
    (pipelines, live view, Home Assistant entities, /healthz) subscribes and is pushed a new
    ``RulesInForce`` on every change. Thread-safe: commands arrive on network threads,
    reloads on the reload thread."""

    def __init__(
        self,
        cfg: Config,
        controls: Controls,
        say: Callable[[str], None] = log.warning,
        veto_store: VetoStore | None = None,
        example_store: ExampleStore | None = None,
        confirmed_store: ConfirmedStore | None = None,
    ):
        self._cfg = cfg
        self.controls = controls
        self.veto_store = veto_store
        self.example_store = example_store
        self.confirmed_store = confirmed_store
        self.say = say
        self._lock = threading.RLock()
        self._listeners: list[RulesListener] = []
        self._log = Throttle(60.0)  # applied commands: one line per kind a minute (a flood: counted)
        self.commands_applied = 0
        self._rules = self._derive()

    @property
    def rules(self) -> RulesInForce:
        with self._lock:
            return self._rules

    def subscribe(self, listener: RulesListener) -> None:
        """``listener(rules)`` now and on every change (on the changing thread)."""
        with self._lock:
            self._listeners.append(listener)
            rules = self._rules
        listener(rules)

    def reload(self, cfg: Config) -> None:
        """A new config (hot reload): the rules are derived again and pushed."""
        with self._lock:
            self._cfg = cfg
        self._changed()

    def apply(self, cmd: Command) -> str | None:
        """Validate, keep and apply a command; -> why it was refused (None: done). A value
        already in force changes nothing (no file write, no log line); a change is logged
        with what it was before, at most one line per kind of command a minute."""
        with self._lock:
            rules = self._rules
        try:
            if cmd.kind == "threshold":
                rule = rules.rules.get(cmd.label or "")
                if cmd.label is None or rule is None:
                    return "no such label on this device"
                change = self.controls.set_threshold(cmd.label, parse_threshold(cmd.payload), rule)
            elif cmd.kind == "enabled":
                if cmd.label is None or cmd.label not in rules.rules:
                    return "no such label on this device"
                change = self.controls.set_label_enabled(cmd.label, parse_switch(cmd.payload))
            elif cmd.kind == "device_enabled":
                change = self.controls.set_enabled(parse_switch(cmd.payload))
            elif cmd.kind in TEACH_KINDS:
                if cmd.label is None or cmd.label not in rules.rules:
                    return "no such label on this device"
                change = self._teach(cmd)
            else:
                return f"unknown command {cmd.kind!r}"
        except ControlError as e:
            return str(e)
        if change is None:
            return None
        with self._lock:
            self.commands_applied += 1
        held = self._log.take(cmd.kind)
        if held is not None:
            who = f"{cmd.label}: " if cmd.label else ""
            self.say(f"{who}{change} (set over {cmd.via})" + held_note(held, self._log.interval_s))
        self._changed()
        return None

    def _teach(self, cmd: Command) -> str | None:
        """Teach or forget a veto or example clip of ``cmd.label`` (the store is the record)."""
        what = cmd.kind.removeprefix("forget_")
        stores: dict[str, TaughtClips | None] = {
            "veto": self.veto_store,
            "example": self.example_store,
            "confirm": self.confirmed_store,
        }
        store = stores[what]
        what = {"confirm": "confirmation"}.get(what, what)
        if store is None:
            raise ControlError(f"this run keeps no taught {what}s")
        text = cmd.payload.decode("utf-8", "replace") if isinstance(cmd.payload, bytes) else cmd.payload
        assert cmd.label is not None
        if not cmd.kind.startswith("forget_"):
            try:
                entry, new = store.add(cmd.label, text, origin=cmd.origin)
            except OSError as e:
                raise ControlError(f"cannot read the clip: {e.strerror or e}") from None
            return f"{what} {entry['name']} taught" if new else None
        if not store.remove(cmd.label, text):
            raise ControlError(f"no taught {what} {text[:80]!r}")
        return f"{what} {text[:80]} taken back"

    def notes(self) -> list[str]:
        """What values set at run time override in this run's config: said at start, so a
        threshold from Home Assistant never silently beats --threshold."""
        with self._lock:
            labels = list(self._rules.labels)
        lines = self.controls.describe(labels)
        if not lines:
            return []
        return [
            f"set at run time and kept in {self.controls.path} (they override the config and the "
            "command line; change them from Home Assistant / MQTT, or delete that file):",
            *lines,
        ]

    def vetoes(self, cfg: Config | None = None) -> dict[str, tuple[Veto, ...]]:
        """Each label's vetoes under ``cfg`` (default: the config in force) and the taught clips."""
        with self._lock:
            cfg = cfg or self._cfg
        return vetoes_for(cfg, self.veto_store)

    def _derive(self) -> RulesInForce:
        cfg = self._cfg
        rules = self.controls.rules(cfg)
        labels = tuple(lab.name for lab in cfg.labels)
        return RulesInForce(
            labels=labels,
            rules=rules,
            switches={k: self.controls.label_enabled(k) for k in rules},
            lowest={k: lowest_threshold(r.hysteresis) for k, r in rules.items()},
            detection_enabled=self.controls.enabled,
            vetoes=self.vetoes(cfg),
        )

    def _changed(self) -> None:
        with self._lock:
            self._rules = rules = self._derive()
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(rules)
            except Exception as e:  # noqa: BLE001 - one failing listener must not stop the others
                log.error("a user of the rules failed to take a change: %s", e)
