"""Runtime control: per-label thresholds and on/off switches, and pausing the whole device,
set over MQTT (Home Assistant `number` and `switch` entities) and kept across restarts.

The values live in ``<state dir>/control-<dev>.json`` as overrides of the config file:
``{"enabled": bool, "labels": {label: {"threshold": float, "enabled": bool}}}``. They are
validated here (a bad payload is refused with a reason, never applied), applied on top of
every config the monitor runs with (at start and on each reload) and reach the pipelines
between two windows, like a reload. `check-config` lists them.

A paused device keeps scoring (the live view and the level sensor go on) but starts no
events; a label switched off likewise; switching either off ends the open events.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import replace
from pathlib import Path

from monitor.config import Config
from monitor.events import LabelRule, rules_for
from monitor.files import write_text_atomic
from monitor.state import state_file

log = logging.getLogger(__name__)


class ControlError(ValueError):
    """A control payload that cannot be applied (the message says why)."""


def parse_threshold(payload: bytes | str) -> float:
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    try:
        v = float(text.strip())
    except ValueError:
        raise ControlError(f"threshold {text[:40]!r} is not a number") from None
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ControlError(f"threshold {v} is outside 0..1")
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
                    keep["threshold"] = parse_threshold(str(o["threshold"]))
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
    def set_threshold(self, label: str, value: float) -> None:
        with self._lock:
            self.labels.setdefault(label, {})["threshold"] = value
            self._save()

    def set_label_enabled(self, label: str, on: bool) -> None:
        with self._lock:
            self.labels.setdefault(label, {})["enabled"] = on
            self._save()

    def set_enabled(self, on: bool) -> None:
        with self._lock:
            self.enabled = on
            self._save()

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
                    thr = o["threshold"]
                    hyst = rule.threshold - rule.off_level
                    rule = replace(rule, threshold=thr, off_level=max(0.0, thr - hyst))
                rule = replace(rule, enabled=self.enabled and o.get("enabled", True))
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
