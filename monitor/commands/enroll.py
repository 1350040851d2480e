"""`sound-monitor enroll LABEL FILE... --model DIR|offline [--config config.yaml]`: teach a label by example.

The label's prototype is the mean of the audio embeddings of the clips' windows (each clip
cut into consecutive ``window_s`` windows, see monitor.models.prototypes; each clip weighs the
same). It is stored durably in ``<state_dir>/prototypes/<model cache_key>.json``; from then
on a label of that name in ``run``/``classify`` with that model uses the prototype in place
of its text embedding and behaves like any other label (thresholds, events, MQTT).

With ``--config``, the label is also written to the config file with ``examples:`` (the
clips' absolute paths), so the config alone carries it (and other models can rebuild it).
A label that has explicit ``prompts:`` and examples mixes both (normalised sum of the
text and prototype vectors).

`sound-monitor enroll LABEL --veto CLIP... [--veto-event EVENT_ID...]`: teach the label
what it is *not* (a recorded false alarm): the clips are copied into
``<state_dir>/vetoes/`` and become veto examples of the label (monitor/models/vetoes.py);
an event's kept clip is found by its ``event_id``. A running monitor picks them up within
seconds (its reloader watches the veto list). ``--forget-veto NAME`` takes one back.

`sound-monitor enroll LABEL --confirm CLIP... [--confirm-event EVENT_ID...]`: what the web
page's "Yes, that was LABEL" does: the clips (of the label's own sound, as it fired here) go
to ``<state_dir>/confirmed/``; the label's score does not change, and a veto clip must be
nearer to a window than they are to hold the label back. ``--forget-confirm NAME``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from monitor.errors import ModelError, UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("label", metavar="LABEL", help='the label to teach, e.g. "our doorbell"')
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="example clips of the sound (any format, rate, length)"
    )
    parser.add_argument(
        "--veto",
        nargs="+",
        default=[],
        metavar="CLIP",
        help="clips of sounds this label must NOT fire on (a recorded false alarm)",
    )
    parser.add_argument(
        "--veto-event",
        action="append",
        default=[],
        metavar="EVENT_ID",
        help="the kept clip of this event (clips.enabled) becomes a veto of the label",
    )
    parser.add_argument("--forget-veto", action="append", default=[], metavar="NAME", help="take a taught veto back")
    parser.add_argument(
        "--confirm",
        nargs="+",
        default=[],
        metavar="CLIP",
        help="clips of this label's own sound as it fired here (keeps veto clips off it; its score is unchanged)",
    )
    parser.add_argument(
        "--confirm-event",
        action="append",
        default=[],
        metavar="EVENT_ID",
        help="the kept clip of this event of the label is confirmed (the web page's 'Yes, that was LABEL')",
    )
    parser.add_argument(
        "--forget-confirm", action="append", default=[], metavar="NAME", help="take a confirmation back"
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="exported model directory, 'offline' or 'auto' (default: the config's, else auto)",
    )
    parser.add_argument("--config", metavar="PATH", help="also add the label with examples: to this YAML config")
    parser.add_argument(
        "--prompt", action="append", metavar="TEXT", help="with --config: text prompts to mix with the examples"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for inference (default 2)")


def _say(msg: str) -> None:
    from monitor.logs import say as _say

    _say(msg)


def _audio_files(paths: list[str]) -> list[Path]:
    files = []
    for f in paths:
        p = Path(f).expanduser()
        if not p.is_file():
            raise UserError(
                f"audio file not found: {p}" if not p.exists() else f"expected an audio file, got a directory: {p}"
            )
        files.append(Path(os.path.abspath(p)))  # absolute, but the user's path (symlinks kept)
    return files


def run(args: argparse.Namespace) -> int:
    from monitor.config import clean_label, load_config
    from monitor.models.backend import l2_normalise
    from monitor.models.prototypes import PrototypeStore, embed_files
    from monitor.models.select import select_backend

    try:
        label = clean_label(args.label)
    except ValueError as e:
        raise UserError(f"LABEL: {e}") from None
    vetoing = bool(args.veto or args.veto_event or args.forget_veto)
    confirming = bool(args.confirm or args.confirm_event or args.forget_confirm)
    if vetoing or confirming:
        if args.files or (vetoing and confirming):
            raise UserError("give example clips, --veto clips or --confirm clips: one of them in one call")
        if confirming:
            return _taught(label, args, "confirm", args.confirm, args.confirm_event, args.forget_confirm)
        return _taught(label, args, "veto", args.veto, args.veto_event, args.forget_veto)
    if not args.files:
        raise UserError("name at least one example clip (FILE), or --veto CLIP / --veto-event EVENT_ID")
    files = _audio_files(args.files)
    if args.prompt and not args.config:
        raise UserError("--prompt needs --config (prompts are stored with the label in the config)")
    if args.threads < 1:
        raise UserError("--threads must be at least 1")
    cfg = load_config(args.config) if args.config else load_config(None)
    model_cfg = cfg.model.model_copy(update={"threads": args.threads})
    try:
        backend = select_backend(args.model or cfg.model.spec, model_cfg).backend
    except ImportError as e:
        raise ModelError(f"--model {args.model}: this backend is not available ({e})") from None

    cache_dir = cfg.state_path / "label-cache"  # where label_embeddings looks for example clips
    per_clip = embed_files(backend, files, "audio", cache_dir)
    unit = l2_normalise(per_clip)
    proto = l2_normalise(unit.mean(axis=0))
    from monitor.audio_io import read_audio
    from monitor.models.prototypes import clip_windows

    n_windows = sum(
        clip_windows(read_audio(f, backend.sample_rate_hz).samples, backend.sample_rate_hz, backend.window_s).shape[0]
        for f in files
    )
    store = PrototypeStore(cfg.state_path, backend.cache_key)
    store.put(label, proto, [str(f) for f in files], n_windows)
    cos = unit @ proto
    print(
        f"enrolled {label!r} for {backend.name} from {len(files)} clip(s), {n_windows} window(s); "
        f"clip-to-prototype cosine {float(cos.min()):.3f}..{float(cos.max()):.3f}"
    )
    print(f"  stored in {store.path}")
    if args.config:
        _add_to_config(Path(args.config), label, [str(f) for f in files], args.prompt or [])
        print(f"  added to {args.config} (labels: {label} with {len(files)} examples)")
    if len(files) == 1:
        _say("one example clip gives a fragile prototype: 3-5 clips of different occurrences work better")
    return 0


def _add_to_config(path: Path, label: str, files: list[str], prompts: list[str]) -> None:
    """Add or update the label (``examples:``, optional ``prompts:``) in the YAML config.

    The document is rewritten by the YAML library: comments are not kept, so the previous
    file is saved as ``<name>.bak`` first. The result is validated before it replaces the file.
    """
    import shutil

    import yaml

    from monitor.config import parse_config
    from monitor.files import write_text_atomic

    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    labels = data.get("labels") or []
    if isinstance(labels, str):
        labels = [s.strip() for s in labels.split(",") if s.strip()]
    out, found = [], False
    for entry in labels:
        e = {"name": entry} if isinstance(entry, str) else dict(entry)
        if str(e.get("name", "")).strip().casefold() == label.casefold():
            found = True
            e["examples"] = files
            if prompts:
                e["prompts"] = prompts
        out.append(e)
    if not found:
        e = {"name": label, "examples": files}
        if prompts:
            e["prompts"] = prompts
        out.append(e)
    data["labels"] = out
    parse_config(data, where=str(path))  # never write a config that would not load
    shutil.copy2(path, path.with_name(path.name + ".bak"))
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _taught(
    label: str, args: argparse.Namespace, kind: str, paths: list[str], events: list[str], forget: list[str]
) -> int:
    """Teach (or take back) veto clips (``kind`` "veto") or confirmations ("confirm") of
    ``label``: copied into the state dir's store of that kind."""
    from monitor.audio_io import read_audio
    from monitor.config import load_config
    from monitor.models.vetoes import ConfirmedStore, VetoStore, event_clip

    store_cls, what = {"veto": (VetoStore, "veto"), "confirm": (ConfirmedStore, "confirmation")}[kind]
    cfg = load_config(args.config) if args.config else load_config(None)
    if cfg.labels and label.casefold() not in {lab.name.casefold() for lab in cfg.labels}:
        _say(f"{label!r} is not a label of {args.config}: the {what} applies once a label of that name is monitored")
    clips: list[tuple[Path, str | None]] = [(p, None) for p in _audio_files(paths)]
    folders = [Path(cfg.clips.dir).expanduser()]
    if args.config and not folders[0].is_absolute():
        folders.append(Path(args.config).resolve().parent / cfg.clips.dir)
    for eid in events:
        clips.append((event_clip(folders, eid), f"event {eid}"))
    for p, _ in clips:  # refuse what the monitor could not read before anything is stored
        try:
            read_audio(p, 16000)
        except Exception as e:  # noqa: BLE001 - any decoding failure is the user's file
            raise UserError(f"{p}: not a readable audio file ({e})") from None
    store = store_cls(cfg.state_path)
    for p, origin in clips:
        entry, new = store.add(label, p, origin)
        how = "taught" if new else "already known"
        print(f"{what} of {label!r} {how}: {entry['name']} (from {entry['from']}) -> {store.dir / entry['clip']}")
    for name in forget:
        if not store.remove(label, name):
            known = ", ".join(e["name"] for e in store.entries(label)) or "none"
            raise UserError(f"{label!r} has no taught {what} {name!r} (taught: {known})")
        print(f"{what} {name!r} of {label!r} taken back")
    print(f"  list: {store.path} (a running monitor with this state dir picks it up within seconds)")
    return 0
