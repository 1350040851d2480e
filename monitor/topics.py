"""MQTT topic names and Home Assistant discovery payloads (pure functions).

``{prefix}/{dev}/availability``, ``{prefix}/{dev}/events``, ``{prefix}/{dev}/scores``,
``{prefix}/{dev}/label/{slug}/state`` and
``{discovery_prefix}/binary_sensor/{dev}/{slug}/config``. Slugs are lowercase
``[a-z0-9_]``; ``+ # /``, NUL, control and non-ASCII characters never reach a topic.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Sequence

MAX_SLUG = 48


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    return s[:MAX_SLUG].rstrip("_") or "label"


def label_slugs(labels: Sequence[str]) -> dict[str, str]:
    """Label -> slug, unique per device: collisions get a short hash of the label."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for lab in labels:
        s = slugify(lab)
        if s in used:
            s = f"{s}_{hashlib.sha1(lab.encode('utf-8')).hexdigest()[:6]}"
        n = 2
        base = s
        while s in used:
            s = f"{base}_{n}"
            n += 1
        used.add(s)
        out[lab] = s
    return out


def device_slug(device_id: str) -> str:
    ascii_id = unicodedata.normalize("NFKD", device_id).encode("ascii", "ignore").decode("ascii")
    s = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_id).strip("_")
    return s[:64] or "sound-monitor"


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

    def discovery(self, slug: str) -> str:
        return f"{self.discovery_prefix}/binary_sensor/{self.dev}/{slug}/config"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def discovery_payload(self, label: str, slug: str, model: str, version: str) -> dict:
        return {
            "name": label,
            "unique_id": f"sound_monitor_{self.dev}_{slug}",
            "object_id": f"sound_monitor_{self.dev}_{slug}",
            "device_class": "sound",
            "state_topic": self.state(slug),
            "payload_on": "ON",
            "payload_off": "OFF",
            "availability_topic": self.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {
                "identifiers": [f"sound_monitor_{self.dev}"],
                "name": f"sound-monitor {self.dev}",
                "model": model,
                "sw_version": version,
                "manufacturer": "sound-monitor",
            },
        }
