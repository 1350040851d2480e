"""Configuration: pydantic models validated once, at the edge.

Every section is its own model so each stage receives only its own part. Unknown keys are
errors (``extra="forbid"``); errors are reported as ``<file>: <yaml.path>: <message>``.
"""

from __future__ import annotations

import os
import socket
import string
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.errors import UserError

DEFAULT_TEMPLATE = "This is a sound of {}."
DEFAULT_BACKGROUND = (
    "background noise",
    "silence",
    "room tone",
    "people talking in the distance",
    "traffic noise",
    "wind",
)
MAX_LABEL_CHARS = 120


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# CLAP presets for the hub path (issue 31): the transformers.js ONNX conversion and the
# original checkpoint (its logit scale is read by byte ranges), each pinned to a commit
CLAP_PRESETS: dict[str, dict[str, str]] = {
    # laion/clap-htsat-unfused; the pinned commit is Xenova's README-only commit over the ONNX
    # files of 2024-03-17
    "htsat-unfused": {
        "repo": "Xenova/clap-htsat-unfused",
        "revision": "c28f2883575e590e04d3146ff0713c2448d691ba",
        "checkpoint_repo": "laion/clap-htsat-unfused",
        "checkpoint_revision": "8fa0f1c6d0433df6e97c127f64b2a1d6c0dcda8a",
    },
    # laion/larger_clap_general: HTSAT with depths 2-2-12-2, width 1024 (the same front end,
    # rand_trunc at 48 kHz, and the same RoBERTa text tower)
    "larger-general": {
        "repo": "Xenova/larger_clap_general",
        "revision": "d78c3994912c441f0151a5cc44d86f6b7bf4c861",
        "checkpoint_repo": "laion/larger_clap_general",
        "checkpoint_revision": "ada0c23a36c4e8582805bb38fec3905903f18b41",
    },
    # laion/larger_clap_music_and_speech: the same architecture and ONNX layout (and sizes) as
    # larger-general, trained for music and speech; pinned as two public projects pin it
    "larger-music-speech": {
        "repo": "Xenova/larger_clap_music_and_speech",
        "revision": "e9fd5ac1dbf3280936a7fc3ec8a020453ff184db",
        "checkpoint_repo": "laion/larger_clap_music_and_speech",
        "checkpoint_revision": "195c3a3e68faebb3e2088b9a79e79b43ddbda76b",
    },
}
DEFAULT_PRESET = "htsat-unfused"


def preset_of_repo(repo: str) -> str | None:
    """The preset whose ONNX repository ``repo`` is (None: not one of the presets)."""
    return next((name for name, p in CLAP_PRESETS.items() if p["repo"] == repo), None)


class HubConfig(_Section):
    """Where `models fetch clap` and `model: auto` get the pre-exported CLAP (pinned commits):
    a ``preset`` (``CLAP_PRESETS``) gives the four pins; any of them given explicitly wins."""

    preset: str = DEFAULT_PRESET
    repo: str = CLAP_PRESETS[DEFAULT_PRESET]["repo"]
    revision: str = CLAP_PRESETS[DEFAULT_PRESET]["revision"]
    checkpoint_repo: str = CLAP_PRESETS[DEFAULT_PRESET]["checkpoint_repo"]
    checkpoint_revision: str = CLAP_PRESETS[DEFAULT_PRESET]["checkpoint_revision"]
    variant: Literal["fp32", "int8"] = "fp32"

    @model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("preset") or DEFAULT_PRESET
        if name not in CLAP_PRESETS:
            raise ValueError(f"unknown preset {name!r} (presets: {', '.join(CLAP_PRESETS)})")
        out = dict(data)
        for k, v in CLAP_PRESETS[name].items():
            if out.get(k) is None:
                out[k] = v
        out["preset"] = name
        return out

    @field_validator("repo", "checkpoint_repo")
    @classmethod
    def _repo_id(cls, v: str) -> str:
        parts = v.split("/")
        if len(parts) != 2 or not all(parts) or any(c.isspace() for c in v):
            raise ValueError("a Hugging Face repository id is owner/name")
        return v

    @field_validator("revision", "checkpoint_revision")
    @classmethod
    def _revision(cls, v: str) -> str:
        if not v or any(c.isspace() for c in v) or ".." in v:
            raise ValueError("a revision is a commit hash, a tag or a branch")
        return v


class LevelConfig(_Section):
    """The level stage (monitor/models/level.py): windows scaled to ``target_dbfs`` RMS before the
    model, gain bounded to ±``max_gain_db``. ``auto``: what the backend needs (on for the
    offline backend, off for CLAP, whose reference pipeline does not normalise)."""

    normalise: bool | Literal["auto"] = "auto"
    target_dbfs: float = Field(-20.0, ge=-60.0, le=0.0)
    max_gain_db: float = Field(30.0, ge=0.0, le=60.0)


def default_models_dir() -> Path:
    """One fixed place for downloaded and exported models, whatever the working directory:
    ``$SOUND_MONITOR_MODELS``, else ``$XDG_DATA_HOME/sound-monitor/models`` (default
    ``~/.local/share/sound-monitor/models``)."""
    env = os.environ.get("SOUND_MONITOR_MODELS")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "sound-monitor" / "models"


class ModelConfig(_Section):
    # auto | offline | a directory with an exported CLAP (manifest.json)
    spec: str = "auto"
    # where `auto` looks for exports and where `models fetch` puts downloads (None: the
    # fixed default, see default_models_dir)
    models_dir: str | None = None
    threads: int = Field(2, ge=1, le=64)
    # the int8 audio encoder: true | false | auto (time both on the first start on a machine,
    # keep int8 where it is clearly faster and agrees on the configured labels:
    # monitor/models/clap/int8_auto.py). `classify`, `eval` and `bench` run fp32 unless asked
    int8: bool | Literal["auto"] = "auto"
    # let onnxruntime's threads busy-wait between operators (a little faster, much more CPU)
    spinning: bool = False
    # a learned adapter file (see `eval --save-adapter`), applied to label embeddings
    adapter: str | None = None
    hub: HubConfig = HubConfig()
    # share of the whole machine (%) the encoder may take at the run's hop with the change
    # gate on: `model: auto` then picks the most accurate preset whose estimate fits
    # (monitor/models/budget.py); null: the configured preset
    cpu_budget_pct: float | None = Field(None, gt=0.0, le=100.0)
    level: LevelConfig = LevelConfig()

    @property
    def models_path(self) -> Path:
        return Path(self.models_dir).expanduser() if self.models_dir else default_models_dir()


class SourceConfig(_Section):
    # "mic", a file path, or "-" for raw PCM on stdin; or a list of them (several sources
    # in one process, one model: "mic:DEVICE" picks an input device by index or name)
    input: str | tuple[str, ...] = "mic"
    device: int | str | None = None
    sample_rate_hz: int | None = Field(None, ge=8000, le=384000)
    channels: int = Field(1, ge=1, le=32)
    format: Literal["s16le", "f32le"] = "s16le"  # stdin only
    block_frames: int = Field(1024, ge=16, le=65536)
    realtime: bool = True  # file sources: replay at real-time pace (False == --fast)
    buffer_s: float = Field(10.0, gt=0, le=600)
    stall_timeout_s: float = Field(5.0, gt=0, le=3600)
    silence_timeout_s: float = Field(60.0, gt=0)
    retry_max_s: float = Field(30.0, gt=0, le=3600)

    @field_validator("input")
    @classmethod
    def _inputs(cls, v: str | Sequence[str]) -> str | tuple[str, ...]:
        items = [v] if isinstance(v, str) else list(v)
        if not items:
            raise ValueError("at least one source is needed")
        for item in items:
            if not isinstance(item, str) or not item.strip():
                raise ValueError("a source must be mic, mic:DEVICE, a file path, - or a stream URL")
        if len(items) > 1:
            if items.count("-") > 1:
                raise ValueError("stdin (-) can be only one of the sources")
            dup = sorted({i for i in items if items.count(i) > 1})
            if dup:
                raise ValueError(f"source listed twice: {dup[0]}")
        return v if isinstance(v, str) else tuple(items) if len(items) > 1 else items[0]

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input,) if isinstance(self.input, str) else tuple(self.input)


class ChangeGateConfig(_Section):
    """The change gate (monitor/stream/change_gate.py), taken by the gate as it is: a window
    reuses the last real scores when no event is open, every score was below ``margin`` x
    its off level and none rose by more than ``rise`` x its off level over the last two runs,
    its spectrum moved by at most ``db`` and no frame the last run had not settled (its newest
    ``settled_s``, and after) is ``novel_db`` louder in a band than every frame it had settled
    (0: no such rule); the model runs at least every ``max_age_s``. The defaults were chosen on
    held-in classes (README, "Cost per hour")."""

    enabled: bool = True
    db: float = Field(4.5, gt=0.0, le=40.0)
    max_age_s: float = Field(15.0, gt=0.0, le=60.0)
    rise: float = Field(0.3, ge=0.0, le=1.0)
    novel_db: float = Field(6.0, ge=0.0, le=40.0)
    margin: float = Field(0.7, gt=0.0, le=1.0)
    settled_s: float = Field(3.0, ge=0.0, le=5.0)


# the flat keys of earlier versions (stream.change_db, ...) -> the nested section's
_FLAT_GATE_KEYS = {
    "change_db": "db",
    "change_max_age_s": "max_age_s",
    "change_rise": "rise",
    "change_novel_db": "novel_db",
    "change_margin": "margin",
    "change_settled_s": "settled_s",
}


class StreamConfig(_Section):
    # seconds per window; unset: the model's own (5 s for LAION CLAP and the offline
    # backend, 7 s for Microsoft CLAP 2023, from its manifest)
    window_s: float | None = Field(None, gt=0.5, le=10.0)
    hop_s: float = Field(1.0, gt=0.05, le=10.0)
    gate_dbfs: float = Field(-70.0, ge=-150.0, le=0.0)
    # adaptive hop: this longer hop while no event is open and no score is near its
    # threshold; back to hop_s at once when one is (0 disables; hop_s..window_s)
    idle_hop_s: float = Field(0.0, ge=0.0, le=10.0)
    # several sources: how long the encoder waits for the other sources' windows so that
    # they go through the model in one batch (seconds of added delay at most)
    batch_wait_s: float = Field(0.05, ge=0.0, le=1.0)
    # the change gate: one section (ChangeGateConfig); `change_gate: true|false` and the
    # flat keys of earlier versions (change_db, change_max_age_s, ...) are still read
    change_gate: ChangeGateConfig = ChangeGateConfig()

    @model_validator(mode="before")
    @classmethod
    def _flat_gate_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        gate = data.get("change_gate")
        if isinstance(gate, bool):
            gate = {"enabled": gate}
        elif gate is None:
            gate = {}
        elif isinstance(gate, ChangeGateConfig):
            gate = gate.model_dump()
        if isinstance(gate, dict):
            gate = dict(gate)
            for old, new in _FLAT_GATE_KEYS.items():
                if old in data:
                    gate.setdefault(new, data.pop(old))
            data["change_gate"] = gate
        return data

    @model_validator(mode="after")
    def _hop_fits(self) -> StreamConfig:
        window = self.window_s or 5.0  # unset: checked again against the model's (Pipeline)
        if self.hop_s > window:
            raise ValueError("hop_s must not exceed window_s")
        if self.idle_hop_s and not (self.hop_s <= self.idle_hop_s <= (self.window_s or 10.0)):
            # a hop longer than the window would leave audio that no window sees
            raise ValueError("idle_hop_s must be 0 (off) or between hop_s and window_s")
        return self


def veto_list(v: tuple[str, ...]) -> tuple[str, ...]:
    """Veto prompts as given, cleaned like labels; an empty list given is refused (leave the key out)."""
    if not v:
        raise ValueError("an empty list: name at least one sound, or leave the key out")
    out = tuple(clean_label(p) for p in v)
    dup = {p.casefold() for p in out if [q.casefold() for q in out].count(p.casefold()) > 1}
    if dup:
        raise ValueError(f"{sorted(dup)[0]!r} is given twice")
    return out


# veto prompts as a config field: None when not given (an empty list given is refused)
VetoPrompts = Annotated[tuple[str, ...] | None, AfterValidator(lambda v: None if v is None else veto_list(v))]


# chosen on the even half of the uiowa-dev classes (scripts/bench_vetoes.py, README "Veto sounds");
# the clip margin between what the same sound heard again scores against its clip (0.87-0.94,
# tests/test_vetoes_real.py) and what other recordings of a confusable sound do (up to 0.87)
VETO_MARGIN = 0.08
VETO_CLIP_MARGIN = 0.10
# ... and by this much nearer than the label's own example / confirmed clips (chosen on the
# even classes' tuning streams, seeds 11/12 and 21/22: 0 / 0.03 / 0.06, notes/issue29.md)
VETO_OWN_MARGIN = 0.03
VETO_COMPETES = False


class ScoringConfig(_Section):
    method: Literal["vs-background", "softmax"] = "vs-background"
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    background: tuple[str, ...] = DEFAULT_BACKGROUND
    # veto sounds of every label (e.g. speech, television): a window more like one of them
    # than like a label does not count for it (monitor/scoring.py)
    veto: VetoPrompts = None
    # a window counts for a label only when it is more like the label than like each of its
    # text vetoes by this much (cosine similarity; 0: merely more like it) ...
    veto_margin: float = Field(VETO_MARGIN, ge=0.0, le=1.0)
    # a veto clip vetoes a window at least 1 - this like one of the clip's windows where the
    # label was on (cosine: the same sound heard again, not a merely related one)
    veto_clip_margin: float = Field(VETO_CLIP_MARGIN, ge=0.0, le=1.0)
    # and at least this much more like it than like the label's own example and confirmed
    # clips ("yes, that was LABEL"), when it has any (cosine)
    veto_own_margin: float = Field(VETO_OWN_MARGIN, ge=0.0, le=1.0)
    # the vetoes also join the label's competitors (its score falls as a veto comes near)
    veto_competes: bool = VETO_COMPETES

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one template is needed")
        for t in v:
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
            except ValueError as e:  # a lone { or }
                raise ValueError(f"template {t!r}: {e} (write {{{{ and }}}} for literal braces)") from None
            if fields != [""]:
                raise ValueError(
                    f"template {t!r} must contain exactly one '{{}}' and no other {{field}} "
                    "(write {{ and }} for literal braces)"
                )
        return v

    @field_validator("background")
    @classmethod
    def _background(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one background prompt is needed (vs-background scores labels against them)")
        return tuple(clean_label(b) for b in v)


def clean_label(text: str) -> str:
    """Validate a user-typed label: printable, non-empty, bounded. Returns it stripped."""
    if not isinstance(text, str):
        raise ValueError("a label must be text")
    s = text.strip()
    if not s:
        raise ValueError("a label must not be empty")
    if len(s) > MAX_LABEL_CHARS:
        raise ValueError(f"a label must be at most {MAX_LABEL_CHARS} characters (got {len(s)})")
    for ch in s:
        if unicodedata.category(ch).startswith("C"):
            raise ValueError(f"label {s[:40]!r} contains a control character")
    return s


class LabelConfig(_Section):
    name: str
    # prompts; empty = the name itself in every template
    prompts: tuple[str, ...] = ()
    # example clips (enroll): their mean embedding becomes a prototype of this label
    examples: tuple[str, ...] = ()
    # clips of this label's own sound as it fired here ("this was LABEL" on its own event):
    # nothing in its score changes; a veto clip must be nearer to a window than they are
    confirmed: tuple[str, ...] = ()
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    hysteresis: float | None = Field(None, ge=0.0, le=1.0)
    min_windows: int | None = Field(None, ge=1, le=100)
    # k-of-n confirmation: an event starts when min_windows of the last within_windows windows are on
    within_windows: int | None = Field(None, ge=1, le=100)
    cooldown_s: float | None = Field(None, ge=0.0)
    # sounds this label is confused with: text prompts and example clips (a recorded false
    # alarm); a window more like one of them than like the label does not count for it
    veto: VetoPrompts = None
    veto_examples: tuple[str, ...] | None = None

    @field_validator("veto_examples")
    @classmethod
    def _veto_examples(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("an empty list: name at least one clip, or leave the key out")
        for p in v:
            if not str(p).strip():
                raise ValueError("an empty path")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return clean_label(v)

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(clean_label(p) for p in v)


def hysteresis_problem(threshold: float, hysteresis: float, label: str) -> str | None:
    """Why an on level and a hysteresis cannot go together (None: they can). The config,
    ``check-config`` and a threshold set at run time (MQTT, the web page) share this rule.
    Threshold 0 marks every window (a diagnostic setting); otherwise the off level
    (threshold - hysteresis) must be above 0, or an event could end only at max_event_s."""
    if threshold > 0 and hysteresis >= threshold:
        return f"hysteresis ({hysteresis:g}) must be below the threshold ({threshold:g}) of {label!r}, or its events never end"
    return None


class EventsConfig(_Section):
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    hysteresis: float = Field(0.1, ge=0.0, le=1.0)
    min_windows: int = Field(2, ge=1, le=100)
    # k-of-n confirmation: min_windows of the last within_windows windows (None: = min_windows,
    # i.e. min_windows in a row)
    within_windows: int | None = Field(None, ge=1, le=100)
    cooldown_s: float = Field(5.0, ge=0.0, le=86400.0)
    max_event_s: float = Field(300.0, gt=0.0)

    @model_validator(mode="after")
    def _confirmation(self) -> EventsConfig:
        if self.within_windows is not None and self.within_windows < self.min_windows:
            raise ValueError(
                f"within_windows ({self.within_windows}) must be at least min_windows ({self.min_windows})"
            )
        return self

    @model_validator(mode="after")
    def _can_end(self) -> EventsConfig:
        # checked on its own: it is what every label without its own values uses (also the
        # labels given later, on the command line), so check-config and run agree
        if self.threshold > 0 and self.hysteresis >= self.threshold:
            raise ValueError(
                f"hysteresis ({self.hysteresis:g}) must be below the threshold ({self.threshold:g}), or events never end"
            )
        return self


class OutputConfig(_Section):
    events_path: str | None = None  # JSON lines; "-" = stdout
    scores_path: str | None = None
    tui: bool = True


class TLSConfig(_Section):
    enabled: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # turning verification off is possible, and loudly reported
    insecure: bool = False


class MQTTConfig(_Section):
    host: str | None = None  # no host = no MQTT
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None
    username: str | None = None
    # the password never sits in this file: name an env variable or a file
    password_env: str | None = "SOUND_MONITOR_MQTT_PASSWORD"
    password_file: str | None = None
    tls: TLSConfig = TLSConfig()
    keepalive_s: int = Field(30, ge=5, le=3600)
    prefix: str = "sound-monitor"
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    # remote control: thresholds, switches and the device pause settable over MQTT (Home
    # Assistant's number and switch entities). Anyone who may publish to the `.../set`
    # topics can then pause detection: restrict them with a broker ACL (README), or false
    control: bool = True
    scores_interval_s: float | None = Field(None, gt=0)
    reconnect_min_s: float = Field(1.0, gt=0, le=3600)
    reconnect_max_s: float = Field(60.0, gt=0, le=86400)
    # "5": a broker's refusal of a publish (PUBACK reason code) is seen and reported;
    # "3.1.1" for old brokers: a denied publish then looks delivered
    protocol: Literal["5", "3.1.1"] = "5"

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, v: object) -> object:
        # YAML reads `protocol: 5` as a number and `3.1.1` as text
        return {5: "5", 311: "3.1.1"}.get(v, v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _backoff(self) -> MQTTConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self

    @field_validator("prefix", "discovery_prefix")
    @classmethod
    def _topic_prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#\x00") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be a plain topic prefix without + # NUL or leading/trailing /")
        return v


class ClipsConfig(_Section):
    enabled: bool = False
    dir: str = "clips"
    max_total_mb: float = Field(200.0, gt=0)
    max_age_days: float = Field(7.0, gt=0)


def _label_entry(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


def parse_listen(spec: str, what: str = "metrics.listen", example: str = "9108") -> tuple[str, int]:
    """``PORT`` -> (127.0.0.1, PORT); ``HOST:PORT`` -> (HOST, PORT); anything else: UserError."""
    host, _, port = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        p = -1
    if not 0 < p < 65536:
        raise UserError(f"{what} {spec!r}: use PORT or HOST:PORT (e.g. {example} or 0.0.0.0:{example})")
    return host, p


def _listen_value(v: object, what: str, example: str) -> str | None:
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)  # `listen: 9108` in YAML
    if v is not None:
        try:
            parse_listen(str(v), what, example)
        except UserError as e:
            raise ValueError(str(e).removeprefix(what + " ")) from None
    return None if v is None else str(v)


class MetricsConfig(_Section):
    # HTTP /healthz and /metrics (Prometheus): PORT (on 127.0.0.1) or HOST:PORT; null = off
    listen: str | None = None

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, v: object) -> str | None:
        return _listen_value(v, "metrics.listen", "9108")


WEB_PORT = 8765  # the page's fixed default port (README "The web page")


class WebConfig(_Section):
    # the local web page (live view, history, corrections): PORT (on 127.0.0.1) or
    # HOST:PORT; null = off. Any address other than loopback needs a password.
    listen: str | None = f"127.0.0.1:{WEB_PORT}"
    # the password for a non-loopback address (else $SOUND_MONITOR_WEB_PASSWORD): a file
    # holding it, like mqtt.password_file
    password_file: str | None = None

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, v: object) -> str | None:
        if v is False or (isinstance(v, str) and v.strip().lower() in ("off", "none", "false", "")):
            return None  # `--web off`
        return _listen_value(v, "web.listen", str(WEB_PORT))


class StoreConfig(_Section):
    """The local event store (SQLite in the state dir): every event, whether or not MQTT is
    configured, and a compact history of the window scores (the web page, `events`)."""

    enabled: bool = True
    keep_days: float = Field(90.0, gt=0)  # events older than this are deleted
    max_mb: float = Field(200.0, gt=0)  # and the oldest go first when the file grows past this
    # per-window scores (the score curve around an event) are kept this long; per-minute
    # maxima per label (suggested thresholds) as long as the events
    scores_hours: float = Field(48.0, ge=0)


class Config(_Section):
    device_id: str | None = None
    state_dir: str | None = None
    model: ModelConfig = ModelConfig()
    source: SourceConfig = SourceConfig()
    stream: StreamConfig = StreamConfig()
    scoring: ScoringConfig = ScoringConfig()
    labels: tuple[LabelConfig, ...] = ()
    events: EventsConfig = EventsConfig()
    output: OutputConfig = OutputConfig()
    mqtt: MQTTConfig = MQTTConfig()
    clips: ClipsConfig = ClipsConfig()
    metrics: MetricsConfig = MetricsConfig()
    web: WebConfig = WebConfig()
    store: StoreConfig = StoreConfig()

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_shorthand(cls, v: Any) -> Any:
        if v is None:
            return ()
        if isinstance(v, str):
            v = [s for s in v.split(",")]
        if isinstance(v, (list, tuple)):
            return tuple(_label_entry(x) for x in v)
        return v

    @model_validator(mode="after")
    def _unique_labels(self) -> Config:
        seen: dict[str, str] = {}
        for lab in self.labels:
            key = lab.name.casefold()
            if key in seen:
                raise ValueError(f"duplicate label {lab.name!r}")
            seen[key] = lab.name
        return self

    @model_validator(mode="after")
    def _events_can_end(self) -> Config:
        for i, lab in enumerate(self.labels):
            thr = self.events.threshold if lab.threshold is None else lab.threshold
            hyst = self.events.hysteresis if lab.hysteresis is None else lab.hysteresis
            problem = hysteresis_problem(thr, hyst, lab.name)
            if problem:
                raise ValueError(f"labels[{i}]: {problem}")
            k = self.events.min_windows if lab.min_windows is None else lab.min_windows
            n = lab.within_windows or self.events.within_windows or k
            if n < k:
                raise ValueError(
                    f"labels[{i}]: within_windows ({n}) must be at least min_windows ({k}) of {lab.name!r}"
                )
        return self

    # --- derived values -------------------------------------------------------------
    @property
    def device(self) -> str:
        return self.device_id or socket.gethostname() or "sound-monitor"

    @property
    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        env = os.environ.get("SOUND_MONITOR_STATE")
        if env:
            return Path(env).expanduser()
        base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
        return Path(base) / "sound-monitor"


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("function-after[_name(), str]",))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{where}: {_format_loc(loc)}: {msg}")
    return "; ".join(parts)


def parse_config(data: Any, where: str = "config") -> Config:
    """Validate a mapping (from YAML or built in code); raise UserError naming the path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{where}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise UserError(format_validation_error(e, where)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"key {key!r} is given twice", key_node.start_mark
                )
        except TypeError:
            continue  # an unhashable key: SafeLoader reports it
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_config(path: str | os.PathLike | None) -> Config:
    """Load and validate a YAML config file; ``None`` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {p}: {e}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{p}: malformed YAML{at}: {problem}") from None
    except (ValueError, RecursionError) as e:  # e.g. a date like 2001-02-30, absurd nesting
        raise UserError(f"{p}: malformed YAML: {str(e)[:200] or type(e).__name__}") from None
    return parse_config(data, where=str(p))


def with_overrides(cfg: Config, overrides: dict[str, Any], where: str = "command line") -> Config:
    """Apply dotted overrides (``{"scoring.method": "softmax"}``) and re-validate."""
    data = cfg.model_dump(mode="python")
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return parse_config(data, where=where)


def dump_config(cfg: Config, effective: bool = False) -> str:
    """YAML of ``cfg``; ``effective`` fills in what unset values resolve to on this machine
    (device id from the host name, state and models dirs)."""
    from monitor.sources import redact_url

    data = cfg.model_dump(mode="json")
    inp = data["source"]["input"]  # a camera URL may carry a password: never printed
    data["source"]["input"] = redact_url(inp) if isinstance(inp, str) else [redact_url(i) for i in inp]
    if effective:
        data["device_id"] = cfg.device
        data["state_dir"] = str(cfg.state_path)
        data["model"]["models_dir"] = str(cfg.model.models_path)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def missing_veto_clips(cfg: Config) -> list[str]:
    """``labels[i].veto_examples[j]: file not found: PATH`` for each veto clip that is not there
    (check-config, and a run or reload, which refuses them)."""
    out = []
    for i, lab in enumerate(cfg.labels):
        for j, path in enumerate(lab.veto_examples or ()):
            p = Path(path).expanduser()
            if not p.is_file():
                out.append(f"labels[{i}].veto_examples[{j}]: file not found: {p}")
    return out


def missing_files(cfg: Config) -> list[str]:
    """``<yaml path>: <file>`` for every file or folder the config names that is not there."""
    out: list[str] = []

    def need(where: str, path: str | None, kind: str = "file") -> None:
        if not path:
            return
        p = Path(path).expanduser()
        ok = p.is_dir() if kind == "folder" else p.is_file()
        if not ok:
            out.append(f"{where}: {kind} not found: {p}")

    from monitor.sources import is_stream_url

    for i, src in enumerate(cfg.source.inputs):
        if src not in ("mic", "-") and not src.startswith("mic:") and not is_stream_url(src):
            need("source.input" + (f"[{i}]" if len(cfg.source.inputs) > 1 else ""), src)
    if cfg.model.spec not in ("auto", "offline"):
        need("model.spec", cfg.model.spec, "folder")
        if Path(cfg.model.spec).expanduser().is_dir():
            need("model.spec", str(Path(cfg.model.spec).expanduser() / "manifest.json"))
    need("model.adapter", cfg.model.adapter)
    for i, lab in enumerate(cfg.labels):
        for j, ex in enumerate(lab.examples):
            need(f"labels[{i}].examples[{j}]", ex)
        for j, ex in enumerate(lab.confirmed):
            need(f"labels[{i}].confirmed[{j}]", ex)
    out.extend(missing_veto_clips(cfg))
    need("mqtt.password_file", cfg.mqtt.password_file)
    for key in ("ca_file", "cert_file", "key_file"):
        need(f"mqtt.tls.{key}", getattr(cfg.mqtt.tls, key))
    return out
