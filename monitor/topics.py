"""MQTT topic names and Home Assistant discovery payloads (pure functions).

``{prefix}/{dev}/availability``, ``{prefix}/{dev}/events``, ``{prefix}/{dev}/scores``,
``{prefix}/{dev}/label/{slug}/state`` and ``{discovery_prefix}/binary_sensor/{dev}/{slug}/config``
(the contract of ../shared/DESIGN.md), extended compatibly with runtime control and sensors:
``.../label/{slug}/threshold[/set]``, ``.../label/{slug}/enabled[/set]``,
``.../label/{slug}/attributes``, ``.../label/{slug}/event``, ``{prefix}/{dev}/enabled[/set]``,
``{prefix}/{dev}/level``, ``{prefix}/{dev}/heard``, ``{prefix}/{dev}/diagnostics``, and their
number / switch / event / sensor discovery. Slugs are lowercase
``[a-z0-9_]``; ``+ # /``, NUL, control and non-ASCII characters never reach a topic. A
slug depends on its own label only, a device slug on the device id only.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

MAX_SLUG = 48
SUPPORT_URL = "https://github.com/sound-monitor/sound-monitor"


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]


def slugify(text: str) -> str:
    """Lowercase ``[a-z0-9_]`` form of ``text`` (lossy: for file and folder names)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    return s[:MAX_SLUG].rstrip("_") or "label"


def label_slug(label: str) -> str:
    """A label's topic slug, from the label alone (never from the other labels): a label
    written as lowercase ASCII words separated by single spaces maps to its words joined
    by ``_``; any other spelling ("Dog barking", "dog-barking", non-ASCII, too long) gets
    a short hash of the exact label appended, so two labels never share a slug and adding
    one never moves another's entity."""
    base = slugify(label)
    if label == base.replace("_", " ") and re.fullmatch(r"[a-z0-9]+( [a-z0-9]+)*", label):
        return base
    return f"{base[: MAX_SLUG - 7]}_{_short_hash(label)}"


def label_slugs(labels: Sequence[str]) -> dict[str, str]:
    """Label -> slug (see ``label_slug``; each depends on its label alone)."""
    return {lab: label_slug(lab) for lab in labels}


def device_slug(device_id: str) -> str:
    """The device id as it appears in topics and file names: kept when it is already
    ``[A-Za-z0-9_-]`` (1-64 characters); otherwise made safe with a short hash of the exact
    id appended, so that two ids never share topics, unique_ids or an outbox."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", device_id):
        return device_id
    ascii_id = unicodedata.normalize("NFKD", device_id).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_id).strip("_")[:57] or "dev"
    return f"{s}_{_short_hash(device_id)}"


class Topics:
    def __init__(self, prefix: str, device_id: str, discovery_prefix: str = "homeassistant"):
        self.prefix = prefix
        self.dev = device_slug(device_id)
        self.discovery_prefix = discovery_prefix

    @property
    def availability(self) -> str:
        return f"{self.prefix}/{self.dev}/availability"

    @property
    def events(self) -> str:
        return f"{self.prefix}/{self.dev}/events"

    @property
    def scores(self) -> str:
        return f"{self.prefix}/{self.dev}/scores"

    def state(self, slug: str) -> str:
        return f"{self.prefix}/{self.dev}/label/{slug}/state"

    def label_topic(self, slug: str, what: str) -> str:
        """``{prefix}/{dev}/label/{slug}/{what}``: threshold, threshold/set, enabled,
        enabled/set, attributes (JSON of the latest event), event (the event entity's feed)."""
        return f"{self.prefix}/{self.dev}/label/{slug}/{what}"

    def device_topic(self, what: str) -> str:
        """``{prefix}/{dev}/{what}``: enabled, enabled/set, level, heard, diagnostics."""
        return f"{self.prefix}/{self.dev}/{what}"

    @property
    def command_filters(self) -> tuple[str, ...]:
        """What the device subscribes to for runtime control."""
        return (
            self.label_topic("+", "threshold/set"),
            self.label_topic("+", "enabled/set"),
            self.device_topic("enabled/set"),
        )

    def command_of(self, topic: str) -> tuple[str, str | None] | None:
        """A command topic -> ("threshold" | "enabled", slug) or ("device_enabled", None)."""
        if topic == self.device_topic("enabled/set"):
            return ("device_enabled", None)
        head = f"{self.prefix}/{self.dev}/label/"
        if not topic.startswith(head):
            return None
        slug, _, rest = topic[len(head) :].partition("/")
        if rest in ("threshold/set", "enabled/set") and slug:
            return (rest.split("/")[0], slug)
        return None

    def discovery(self, slug: str, component: str = "binary_sensor", object_id: str | None = None) -> str:
        return f"{self.discovery_prefix}/{component}/{self.dev}/{object_id or slug}/config"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def _device(self, model: str, version: str) -> dict:
        return {
            "identifiers": [f"sound_monitor_{self.dev}"],
            "name": f"sound-monitor {self.dev}",
            "model": model,
            "sw_version": version,
            "manufacturer": "sound-monitor",
        }

    def _common(self, component: str, object_id: str, model: str, version: str) -> dict:
        ent = f"{self.dev.lower().replace('-', '_')}_{object_id}"
        return {
            "unique_id": f"sound_monitor_{self.dev}_{object_id}",
            # Home Assistant 2025.10 replaced object_id with default_entity_id (domain.object)
            "default_entity_id": f"{component}.sound_monitor_{ent}",
            "availability_topic": self.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": self._device(model, version),
            # who published this discovery message (Home Assistant logs it)
            "origin": {"name": "sound-monitor", "sw_version": version, "support_url": SUPPORT_URL},
        }

    def discovery_payload(self, label: str, slug: str, model: str, version: str) -> dict:
        """The label's binary sensor (ON while an event is open), with the latest event's
        score, peak, source and event_id as attributes."""
        return {
            "name": label,
            **self._common("binary_sensor", slug, model, version),
            "device_class": "sound",
            "state_topic": self.state(slug),
            "payload_on": "ON",
            "payload_off": "OFF",
            "json_attributes_topic": self.label_topic(slug, "attributes"),
        }

    def label_entities(
        self, label: str, slug: str, model: str, version: str, *, min_threshold: float = 0.0, control: bool = True
    ) -> dict[str, dict]:
        """Discovery topic -> payload of the label's other entities: its threshold (number,
        from the lowest threshold its hysteresis allows) and its on/off switch when remote
        control is on, and an event entity that fires on each start and end."""
        event = {
            self.discovery(slug, "event", slug): {
                "name": f"{label} event",
                **self._common("event", slug, model, version),
                "state_topic": self.label_topic(slug, "event"),
                "event_types": ["start", "end"],
            },
        }
        if not control:
            return event
        return {
            **event,
            self.discovery(slug, "number", f"{slug}_threshold"): {
                "name": f"{label} threshold",
                **self._common("number", f"{slug}_threshold", model, version),
                "entity_category": "config",
                "state_topic": self.label_topic(slug, "threshold"),
                "command_topic": self.label_topic(slug, "threshold/set"),
                "min": min_threshold,
                "max": 1.0,
                "step": 0.01,
                "mode": "slider",
            },
            self.discovery(slug, "switch", f"{slug}_enabled"): {
                "name": f"{label} detection",
                **self._common("switch", f"{slug}_enabled", model, version),
                "entity_category": "config",
                "state_topic": self.label_topic(slug, "enabled"),
                "command_topic": self.label_topic(slug, "enabled/set"),
                "payload_on": "ON",
                "payload_off": "OFF",
            },
        }

    def device_entities(self, model: str, version: str, *, control: bool = True) -> dict[str, dict]:
        """Discovery topic -> payload of the device's own entities: the pause switch (when
        remote control is on), the level and "what it hears" sensors, and diagnostics."""
        diag = self.device_topic("diagnostics")
        switch = {
            self.discovery("", "switch", "enabled"): {
                "name": "detection",
                **self._common("switch", "enabled", model, version),
                "state_topic": self.device_topic("enabled"),
                "command_topic": self.device_topic("enabled/set"),
                "payload_on": "ON",
                "payload_off": "OFF",
            },
        }
        return {
            **(switch if control else {}),
            self.discovery("", "sensor", "level"): {
                "name": "sound level",
                **self._common("sensor", "level", model, version),
                "state_topic": self.device_topic("level"),
                "unit_of_measurement": "dBFS",
                "state_class": "measurement",
                "suggested_display_precision": 1,
            },
            self.discovery("", "sensor", "heard"): {
                "name": "heard",
                **self._common("sensor", "heard", model, version),
                "state_topic": self.device_topic("heard"),
                "value_template": "{{ value_json.label }}",
                "json_attributes_topic": self.device_topic("heard"),
            },
            self.discovery("", "sensor", "source_status"): {
                "name": "source status",
                **self._common("sensor", "source_status", model, version),
                "entity_category": "diagnostic",
                "state_topic": diag,
                "value_template": "{{ value_json.source_status }}",
            },
            self.discovery("", "sensor", "inference_ms"): {
                "name": "inference per window",
                **self._common("sensor", "inference_ms", model, version),
                "entity_category": "diagnostic",
                "state_topic": diag,
                # null until measured: renders "None", which Home Assistant shows as unknown
                "value_template": "{{ value_json.inference_ms }}",
                "unit_of_measurement": "ms",
                "state_class": "measurement",
            },
            self.discovery("", "sensor", "outbox_backlog"): {
                "name": "outbox backlog",
                **self._common("sensor", "outbox_backlog", model, version),
                "entity_category": "diagnostic",
                "state_topic": diag,
                "value_template": "{{ value_json.outbox_backlog }}",
                "state_class": "measurement",
            },
        }
