"""Home Assistant's side of the MQTT sink: discovery of every entity, the retained label
topics (state, attributes, threshold, switches), the event entities, the sensors (level,
"heard", diagnostics) and clearing the topics of labels that are gone.

Its topics go out only after a connection's announcement; until then they wait here (the
latest retained value per topic; event-entity messages in order, bounded), and the
announcement sends discovery, the kept attributes and states, every label's state and the
controls, the kept event messages, and only then ``online``: Home Assistant never sees a
stale ``ON`` come back to life. One lock (``_ha_lock``) orders the announcement, events and
controls. Discovery topics this device published are remembered in the state dir; on
connect the ones whose labels are gone are cleared (also after a run that ended during an
outage).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monitor import __version__
from monitor.config import MQTTConfig
from monitor.events import utc_now_iso
from monitor.files import write_text_atomic
from monitor.sinks.base import OpenLabels
from monitor.topics import Topics, label_slugs, slugify
from monitor.types import Event, Scores

if TYPE_CHECKING:
    from monitor.runtime.control import RulesInForce

log = logging.getLogger("monitor.sinks.mqtt")

Send = Callable[..., None]  # (topic, payload, *, retain, qos=1)


class HomeAssistant:
    def __init__(self, cfg: MQTTConfig, topics: Topics, model_name: str, known_path: Path, send: Send):
        self.cfg = cfg
        self.topics = topics
        self.model_name = model_name
        self._known_path = known_path
        self._send = send
        self._lock = threading.Lock()  # labels, slugs, open labels, controls
        self._labels: list[str] = []
        self._slugs: dict[str, str] = {}
        # label -> event_ids of its open events: with several sources a label is ON while
        # any source has it open, OFF only when the last one ends
        self._open = OpenLabels()
        self._controls: dict[str, tuple[float, bool, float]] = {}  # label -> (threshold, enabled, lowest)
        self._device_enabled = True
        self._announced_lowest: dict[str, float] = {}  # label -> the number entity's min last announced
        self._ha_lock = threading.RLock()
        self._ha_ready = False
        self._ha_retained: dict[str, str] = {}
        self._ha_events: collections.deque[tuple[str, str]] = collections.deque(maxlen=1000)
        self.sensor_interval_s = 10.0  # level / heard: at most one message per this
        self._last_sensor_t = 0.0
        self._last_heard: str | None = None
        self._last_diag_t = 0.0
        self._last_scores_t = 0.0

    # -- labels ---------------------------------------------------------------------------------
    def label_of(self, slug: str) -> str | None:
        with self._lock:
            return next((lab for lab, sl in self._slugs.items() if sl == slug), None)

    def set_labels(self, labels: Sequence[str]) -> bool:
        """The label set; True when it changed and the entities must be announced again."""
        with self._lock:
            if list(labels) == self._labels and self._ha_ready:
                return False  # a change of rules only: nothing to re-announce
            self._labels = list(labels)
            self._slugs = label_slugs(self._labels)
            self._open.keep(self._labels)
        with self._ha_lock:
            if not self._ha_ready:
                return False  # the next connection announces them
            self._announce_entities()
        return True

    # -- the announcement (network thread, on every connection) -----------------------------------
    def announce(self) -> None:
        with self._ha_lock:
            self._announce_entities()
            for topic in sorted(self._ha_retained, key=lambda t: not t.endswith("/attributes")):
                self._send(topic, self._ha_retained[topic], retain=True)
            self._ha_retained.clear()
            self._publish_states()
            while self._ha_events:
                topic, payload = self._ha_events.popleft()
                self._send(topic, payload, retain=False)
            self._send(self.topics.availability, "online", retain=True)
            self._ha_ready = True

    def connection_lost(self) -> None:
        with self._ha_lock:
            self._ha_ready = False

    def _announce_entities(self) -> None:
        """Discovery of the device's and every label's entities (``_ha_lock`` held)."""
        with self._lock:
            labels = list(self._labels)
            slugs = dict(self._slugs)
            lowest = {lab: c[2] for lab, c in self._controls.items()}
            self._announced_lowest = dict(lowest)
        if not self.cfg.discovery:
            return
        control = self.cfg.control
        if not control:  # no pause switch: an earlier run's is removed
            self._send(self.topics.discovery("", "switch", "enabled"), b"", retain=True)
        for topic, payload in self.topics.device_entities(self.model_name, __version__, control=control).items():
            self._send(topic, json.dumps(payload), retain=True)
        for lab in labels:
            s = slugs[lab]
            payload = self.topics.discovery_payload(lab, s, self.model_name, __version__)
            self._send(self.topics.discovery(s), json.dumps(payload), retain=True)
            entities = self.topics.label_entities(
                lab, s, self.model_name, __version__, min_threshold=lowest.get(lab, 0.0), control=control
            )
            for topic, p in entities.items():
                self._send(topic, json.dumps(p), retain=True)

    def rediscover(self) -> None:
        """Home Assistant came online again: discovery once more (states are retained)."""
        with self._ha_lock:
            self._announce_entities()

    def _publish_states(self) -> None:
        """Every label's state (ON while any source has it open) and the controls (``_ha_lock`` held)."""
        with self._lock:
            on = {lab: (slug, self._open.is_on(lab)) for lab, slug in self._slugs.items()}
        for slug, is_on in on.values():
            self._send(self.topics.state(slug), "ON" if is_on else "OFF", retain=True)
        self._publish_controls()

    def _publish_controls(self) -> None:
        with self._lock:
            controls = dict(self._controls)
            slugs = dict(self._slugs)
            dev_on = self._device_enabled
        self._send(self.topics.device_topic("enabled"), "ON" if dev_on else "OFF", retain=True)
        for lab, (thr, on, _) in controls.items():
            s = slugs.get(lab)
            if s:
                self._send(self.topics.label_topic(s, "threshold"), f"{thr:g}", retain=True)
                self._send(self.topics.label_topic(s, "enabled"), "ON" if on else "OFF", retain=True)

    def on_rules(self, rules: RulesInForce) -> None:
        """Each label's threshold in force, its switch and the lowest threshold its hysteresis
        allows (the number entity's ``min``), and the device switch."""
        values = {
            k: (r.threshold, rules.switches.get(k, True), rules.lowest.get(k, 0.0)) for k, r in rules.rules.items()
        }
        with self._ha_lock:
            with self._lock:
                lowest_changed = {k: v[2] for k, v in values.items()} != self._announced_lowest
                self._controls = values
                self._device_enabled = rules.detection_enabled
            if self._ha_ready:  # else the next announcement sends them
                if lowest_changed and self.cfg.discovery and self.cfg.control:
                    self._announce_entities()  # the number entities' min changed
                self._publish_controls()

    # -- events ---------------------------------------------------------------------------------
    def event(self, event: Event) -> None:
        """Attributes, then state, then the event entity's message: an automation triggered by
        ``on`` reads this event's values. The event entity: one message per occurrence (not
        retained: a restart of Home Assistant must not replay it); an end carries its reason."""
        with self._lock:
            on = self._open.apply(event) if event.label in self._slugs else False
            slug = self._slugs.get(event.label)
        if not slug:
            return
        attrs = {
            "score": event.score,
            "peak_score": event.peak_score,
            "source": event.source,
            "event_id": event.event_id,
        }
        entity = {"event_type": event.type, **attrs, **({"reason": event.reason} if event.reason else {})}
        with self._ha_lock:
            self._ha_send(self.topics.label_topic(slug, "attributes"), json.dumps(attrs), retain=True)
            self._ha_send(self.topics.state(slug), "ON" if on else "OFF", retain=True)
            self._ha_send(self.topics.label_topic(slug, "event"), json.dumps(entity), retain=False)

    def _ha_send(self, topic: str, payload: str, *, retain: bool) -> None:
        if self._ha_ready:
            self._send(topic, payload, retain=retain)
        elif retain:
            self._ha_retained[topic] = payload
        else:
            self._ha_events.append((topic, payload))

    # -- sensors (level, heard, diagnostics, scores) ----------------------------------------------
    def scores(self, scores: Scores, connected: bool) -> None:
        if not connected:
            return
        self._sensors(scores)
        if not self.cfg.scores_interval_s or scores.gated:
            return
        now = time.monotonic()
        if now - self._last_scores_t < self.cfg.scores_interval_s:
            return
        self._last_scores_t = now
        body = json.dumps({"t_s": scores.start_s, "scores": scores.as_dict()})
        self._send(self.topics.scores, body, retain=False, qos=0)

    def _sensors(self, scores: Scores) -> None:
        """The level and "heard" sensors: at most one update per ``sensor_interval_s``, and
        "heard" also when its top label changes."""
        now = time.monotonic()
        values = scores.as_dict()
        top = max(values, key=lambda k: values[k]) if values and not scores.gated else None
        due = now - self._last_sensor_t >= self.sensor_interval_s
        if not (due or (top != self._last_heard and now - self._last_sensor_t >= 1.0)):
            return
        self._last_sensor_t, self._last_heard = now, top
        self._send(self.topics.device_topic("level"), f"{scores.level_dbfs:.1f}", retain=True, qos=0)
        heard = {
            "label": top if top is not None else "(quiet)",
            "score": round(float(values[top]), 4) if top is not None else 0.0,
            "t_s": round(scores.start_s, 3),  # the window's stream time
            "time": utc_now_iso(),
            "source": scores.source,
            "held": dict(scores.held),  # the labels at/above their threshold that did not fire, and why
        }
        self._send(self.topics.device_topic("heard"), json.dumps(heard), retain=True, qos=0)

    def diagnostics(self, snapshot: Any, backlog: int, connected: bool) -> None:
        """Source status, inference ms, outbox backlog: every ~30 s."""
        now = time.monotonic()
        if not connected or now - self._last_diag_t < 30.0:
            return
        self._last_diag_t = now
        srcs = snapshot.sources
        measured = [s.inference_ms for s in srcs if s.inference_ms is not None]
        diag = {
            "source_status": ", ".join(f"{s.name}: {s.status}" for s in srcs) if len(srcs) > 1 else srcs[0].status,
            # null until the model has run (Home Assistant shows "unknown", not a false 0 ms)
            "inference_ms": round(max(measured), 2) if measured else None,
            "outbox_backlog": backlog,
        }
        self._send(self.topics.device_topic("diagnostics"), json.dumps(diag), retain=True, qos=0)

    # -- topics of labels that are gone -----------------------------------------------------------
    def _label_topics(self, slugs: Iterable[str]) -> set[str]:
        """The retained topics of these labels (state, control values, attributes, discovery)."""
        out = set()
        for s in slugs:
            out.add(self.topics.state(s))
            out.add(self.topics.label_topic(s, "threshold"))
            out.add(self.topics.label_topic(s, "enabled"))
            out.add(self.topics.label_topic(s, "attributes"))
            if self.cfg.discovery:
                out.add(self.topics.discovery(s))
                out.update(self.topics.label_entities("", s, "", "", control=self.cfg.control))
        return out

    def _known_topics(self) -> set[str] | None:
        try:
            data = json.loads(self._known_path.read_text(encoding="utf-8"))
            return {t for t in data.get("topics", []) if isinstance(t, str)}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError) as e:
            log.warning(
                "cannot read %s (%s): retained topics of removed labels may stay on the broker", self._known_path, e
            )
            return None

    def clear_stale(self) -> None:
        """Clear the retained topics of labels this device published before and no longer has
        (remembered in the state dir; on the first start, the slugs of the older slug rule)."""
        with self._lock:
            current = self._label_topics(self._slugs.values())
            legacy = {slugify(lab) for lab in self._labels}
        known = self._known_topics()
        if known is None:
            known = self._label_topics(legacy) | {self.topics.discovery(s) for s in legacy}
        for topic in sorted(known - current):
            self._send(topic, b"", retain=True)
        try:
            write_text_atomic(self._known_path, json.dumps({"topics": sorted(current)}))
        except OSError as e:
            log.warning("cannot save %s (%s)", self._known_path, e.strerror)
