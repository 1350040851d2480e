"""Frozen records passed between the data plane's stages (data flows one way: source ->
windows -> scores -> events -> sinks; monitor/stream/, monitor/stream/pipeline.py).

Units are in the names: ``*_s`` seconds of stream time (since the source began),
``*_hz`` rates, ``*_dbfs`` levels relative to digital full scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

EVENT_SCHEMA = 1


@dataclass(frozen=True)
class Block:
    """A block of source audio as captured: float32 [n_frames, n_channels] at the source rate."""

    samples: np.ndarray
    sample_rate_hz: int
    start_frame: int  # index of the first frame since the source began


@dataclass(frozen=True)
class Window:
    """A model-rate mono window, exact to the sample in stream time."""

    index: int  # 0, 1, 2, ... in order of emission
    samples: np.ndarray  # float32 [n] at the model rate
    sample_rate_hz: int
    start_s: float
    end_s: float
    level_dbfs: float


@dataclass(frozen=True)
class VetoCheck:
    """A label's vetoes in one window: the strongest one (its name), the label's score
    without its vetoes, and whether that veto is more like the window than the label (then
    the window does not count for the label)."""

    veto: str
    raw: float
    beats: bool


@dataclass(frozen=True)
class Scores:
    """Per-label scores of one window (or ``gated=True`` when below the level gate)."""

    window_index: int
    start_s: float
    end_s: float
    level_dbfs: float
    labels: tuple[str, ...]
    values: tuple[float, ...]  # same order as ``labels``; all 0.0 when gated
    gated: bool = False
    inference_ms: float = 0.0
    source: str = ""  # the pipeline's source name (several sources in one run)
    reused: bool = False  # the change gate reused the last real scores (no model run)
    vetoes: Mapping[str, VetoCheck] = field(default_factory=dict)  # labels that have vetoes
    # why a label at or above its threshold did not start or continue an event (the tracker's)
    held: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        return dict(zip(self.labels, self.values))

    def to_json_line(self, with_source: bool = False) -> str:
        """The per-window line of ``run --scores`` (contract: ../shared/DESIGN.md, README "Contracts"); with several
        sources in one run each line also names its ``source``."""
        d = {
            "t_s": round(self.start_s, 6),
            "level_dbfs": round(self.level_dbfs, 2),
            # a non-finite score (a broken model) is null: a line is always valid JSON
            "scores": {k: (round(v, 6) if math.isfinite(v) else None) for k, v in self.as_dict().items()},
        }
        if with_source:
            d["source"] = self.source
        if self.reused:
            d["reused"] = True  # a compatible addition: present only on reused windows
        d["held"] = dict(self.held)  # a compatible addition: {label: reason}, often empty
        return json.dumps(d)


EventType = Literal["start", "end"]


@dataclass(frozen=True)
class Event:
    """An event of the schema-1 contract (../shared/DESIGN.md "Event", README "Contracts")."""

    type: EventType
    event_id: str
    seq: int
    label: str
    score: float
    peak_score: float
    start_s: float
    end_s: float | None
    duration_s: float | None
    wall_time: str
    device_id: str
    source: str
    model: str
    schema: int = field(default=EVENT_SCHEMA)
    # only on some ``end`` events: "restart" = ended on the next start after a crash (the
    # run that opened it never ended it; end_s and duration_s are then null)
    reason: str | None = None
    # absolute UTC time of the event's first window (ISO 8601, ms, "Z"): the wall-clock
    # time of the stream's first sample + start_s (compatible addition; absent when unknown)
    start_time: str | None = None
    # on ``end`` events when clips are kept: the path of the event's clip file
    clip: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        ordered = {"schema": d.pop("schema")}
        for optional in ("reason", "start_time", "clip"):
            if d[optional] is None:
                del d[optional]  # compatible additions: absent unless there is one
        ordered.update(d)
        return ordered

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> Event:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
