"""MQTT topic names and Home Assistant discovery payloads (pure functions).

``{prefix}/{dev}/availability``, ``{prefix}/{dev}/events``, ``{prefix}/{dev}/scores``,
``{prefix}/{dev}/label/{slug}/state`` and
``{discovery_prefix}/binary_sensor/{dev}/{slug}/config``. Slugs are lowercase
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

    def discovery(self, slug: str) -> str:
        return f"{self.discovery_prefix}/binary_sensor/{self.dev}/{slug}/config"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    def discovery_payload(self, label: str, slug: str, model: str, version: str) -> dict:
        return {
            "name": label,
            "unique_id": f"sound_monitor_{self.dev}_{slug}",
            # Home Assistant 2025.10 replaced object_id with default_entity_id (domain.object)
            "default_entity_id": f"binary_sensor.sound_monitor_{self.dev.lower().replace('-', '_')}_{slug}",
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
            # who published this discovery message (Home Assistant logs it)
            "origin": {"name": "sound-monitor", "sw_version": version, "support_url": SUPPORT_URL},
        }
