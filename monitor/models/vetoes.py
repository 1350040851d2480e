"""Veto sounds: what a label must beat for a window to count for it.

A label's vetoes are the sounds it is confused with: text prompts (``labels[].veto``, and
``scoring.veto`` for every label) and example clips (``labels[].veto_examples``, and clips
taught with ``sound-monitor enroll LABEL --veto CLIP`` or from an event's kept clip). The
scorer (monitor/scoring.py) lets them compete with the label: a window more like one of them
than like the label does not count for it, and the label's score is what is left.

``vetoes_for`` derives every label's vetoes from the config and the store (the one place;
the control plane shows them, the scorer uses them). ``VetoStore`` keeps taught clips in
``<state dir>/vetoes/``: each clip copied there (an event's clip may be deleted by the clips
budget later; a veto must not vanish with it), listed in ``vetoes.json`` with where it came
from, removable again (an undo). A running monitor picks changes up on its next reload (the
reloader watches the list).

``ExampleStore`` is the same kind of store for the other correction, "this was LABEL"
(the web page): clips taught as examples of a label, in ``<state dir>/examples/``;
``with_taught_examples`` adds them to the label's ``examples`` (its text stays: the label's
vector mixes its text and the clips' prototype, monitor/models/labels.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from monitor.config import Config, missing_veto_clips
from monitor.errors import UserError
from monitor.files import write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Veto:
    """One veto sound of a label: a prompt (``text``) or a clip (``clip``). ``name`` is what
    a held reason shows (``veto:<name>``): the prompt, or the clip's file name."""

    name: str
    text: str | None = None
    clip: Path | None = None
    taught: bool = False  # a clip of the store (enroll --veto, the web page), not of the config

    def describe(self) -> str:
        if self.text is not None:
            return self.text
        return f"clip {self.name}" + (" (taught)" if self.taught else "")

    @property
    def key(self) -> str:
        return f"text:{self.text.casefold()}" if self.text is not None else f"clip:{self.clip}"


def vetoes_for(cfg: Config, store: VetoStore | None = None) -> dict[str, tuple[Veto, ...]]:
    """Every label's vetoes, in a fixed order: its own prompts, the global ones (not those
    that name the label itself), its example clips, then the clips taught into ``store``."""
    taught: dict[str, list[Veto]] = {}  # the store's list, read once
    if store is not None:
        for name, entries in store.labels().items():
            taught[name.casefold()] = [Veto(e["name"], clip=store.dir / e["clip"], taught=True) for e in entries]
    out: dict[str, tuple[Veto, ...]] = {}
    for lab in cfg.labels:
        own = {lab.name.casefold(), *(p.casefold() for p in lab.prompts)}
        items: list[Veto] = []
        for text in (*(lab.veto or ()), *(cfg.scoring.veto or ())):
            if text.casefold() not in own:
                items.append(Veto(text, text=text))
        for path in lab.veto_examples or ():
            p = Path(path).expanduser()
            items.append(Veto(p.name, clip=p))
        items.extend(taught.get(lab.name.casefold(), ()))
        unique: dict[str, Veto] = {}
        for v in items:
            unique.setdefault(v.key, v)
        out[lab.name] = tuple(unique.values())
    return out


def check_veto_clips(cfg: Config, where: str = "config") -> None:
    """Refuse a config whose veto clips are not there (one line naming each YAML path)."""
    missing = missing_veto_clips(cfg)  # the same lines check-config gives
    if missing:
        raise UserError(f"{where}: " + "; ".join(missing))


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class TaughtClips:
    """Clips taught to labels: ``<state dir>/<FOLDER>/<FOLDER>.json`` and the copies in
    ``<state dir>/<FOLDER>/clips/`` (folder 0700, files 0600: recordings of a home)."""

    FOLDER = "taught"

    def __init__(self, state_dir: str | os.PathLike):
        self.dir = Path(state_dir).expanduser() / self.FOLDER
        self.path = self.dir / f"{self.FOLDER}.json"
        self._lock = threading.Lock()

    def _load(self) -> dict[str, list[dict]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("ignoring the unreadable veto list %s: %s", self.path, e)
            return {}
        labels = data.get("labels") if isinstance(data, dict) else None
        if not isinstance(labels, dict):
            return {}
        out: dict[str, list[dict]] = {}
        for name, entries in labels.items():
            if isinstance(entries, list):
                ok = [e for e in entries if isinstance(e, dict) and isinstance(e.get("clip"), str) and "name" in e]
                out[str(name)] = [e for e in ok if (self.dir / e["clip"]).is_file()]
        return out

    def entries(self, label: str) -> list[dict]:
        """The label's taught clips (``clip`` relative to the store, ``name``, ``from``, ``added``)."""
        want = label.casefold()
        for name, entries in self._load().items():
            if name.casefold() == want:
                return entries
        return []

    def labels(self) -> Mapping[str, list[dict]]:
        """Every label's taught clips (the list read once)."""
        return self._load()

    def add(self, label: str, clip: str | os.PathLike, origin: str | None = None) -> tuple[dict, bool]:
        """Copy ``clip`` into the store as a veto of ``label``; -> (its entry, whether it is new:
        the same clip taught twice is kept once)."""
        src = Path(clip)
        data = src.read_bytes()
        digest = hashlib.sha256(data).hexdigest()[:16]
        rel = f"clips/{digest}{src.suffix.lower() or '.wav'}"
        with self._lock:
            labels = self._load()
            key = next((k for k in labels if k.casefold() == label.casefold()), label)
            entries = labels.setdefault(key, [])
            for e in entries:
                if e["clip"] == rel:
                    return e, False
            dest = self.dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir, 0o700)
            if not dest.exists():
                tmp = dest.with_name(f".{dest.name}.tmp")
                with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                    f.write(data)
                os.replace(tmp, dest)
            entry = {"clip": rel, "name": src.name, "from": origin or str(src), "added": _now_iso()}
            entries.append(entry)
            self._save(labels)
        return entry, True

    def remove(self, label: str, clip: str) -> bool:
        """Forget one taught clip of ``label`` (by its ``clip`` or ``name``); -> whether it was there.
        The copy is deleted when no other label uses it."""
        with self._lock:
            labels = self._load()
            key = next((k for k in labels if k.casefold() == label.casefold()), None)
            if key is None:
                return False
            keep = [e for e in labels[key] if clip not in (e["clip"], e["name"])]
            if len(keep) == len(labels[key]):
                return False
            gone = {e["clip"] for e in labels[key]} - {e["clip"] for e in keep}
            labels[key] = keep
            if not keep:
                del labels[key]
            self._save(labels)
            used = {e["clip"] for entries in labels.values() for e in entries}
            for rel in gone - used:
                (self.dir / rel).unlink(missing_ok=True)
        return True

    def _save(self, labels: dict[str, list[dict]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(self.path, {"schema": 1, "labels": labels})


class VetoStore(TaughtClips):
    """Taught veto clips of every label (``<state dir>/vetoes/``)."""

    FOLDER = "vetoes"


class ExampleStore(TaughtClips):
    """Clips taught as examples of a label ("this was LABEL" on another label's event;
    ``<state dir>/examples/``)."""

    FOLDER = "examples"


class ConfirmedStore(TaughtClips):
    """A label's own events confirmed ("yes, that was LABEL"; ``<state dir>/confirmed/``): its
    score does not change; a veto clip must be nearer to a window than they are."""

    FOLDER = "confirmed"


def with_taught_examples(cfg: Config, store: ExampleStore | None, confirmed: ConfirmedStore | None = None) -> Config:
    """``cfg`` with each label's taught example clips added to its ``examples`` (a label
    without prompts keeps its name as its prompt: text and clips mix, the text is not lost)
    and its confirmed clips to its ``confirmed``."""
    taught = {k.casefold(): v for k, v in (store.labels() if store is not None else {}).items()}
    sure = {k.casefold(): v for k, v in (confirmed.labels() if confirmed is not None else {}).items()}
    if not taught and not sure:
        return cfg
    labels = []
    for lab in cfg.labels:
        entries = taught.get(lab.name.casefold())
        if entries and store is not None:
            clips = tuple(str(store.dir / e["clip"]) for e in entries)
            lab = lab.model_copy(update={"examples": (*lab.examples, *clips), "prompts": lab.prompts or (lab.name,)})
        entries = sure.get(lab.name.casefold())
        if entries and confirmed is not None:
            lab = lab.model_copy(
                update={"confirmed": (*lab.confirmed, *(str(confirmed.dir / e["clip"]) for e in entries))}
            )
        labels.append(lab)
    return cfg.model_copy(update={"labels": tuple(labels)})


def event_clip(folders: Iterable[Path], event_id: str) -> Path:
    """The kept clip of the event ``event_id`` (at least its first 8 characters), in the clips
    folders of a run; UserError when there is none."""
    eid = event_id.strip().lower()
    if len(eid) < 8 or not all(c in "0123456789abcdef" for c in eid):
        raise UserError(f"event id {event_id!r}: give at least the first 8 hex characters of the event's event_id")
    found: list[Path] = []
    for folder in folders:
        for ext in ("flac", "wav"):
            found.extend(sorted(Path(folder).expanduser().glob(f"**/clip-*-{eid[:8]}.{ext}")))
    if not found:
        raise UserError(
            f"no kept clip of event {event_id} (clips are kept with clips.enabled: true, and deleted "
            "by the clips budget after max_age_days)"
        )
    if len(found) > 1:
        raise UserError(f"event id {event_id}: {len(found)} clips match; give more of the id")
    return found[0]
