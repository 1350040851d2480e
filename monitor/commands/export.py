"""`sound-monitor export`: a CLAP checkpoint (hub id or local HF directory) to ONNX.

Heavy imports (torch, transformers, onnx) happen inside ``run`` via monitor.models.clap.export.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_SOURCE = "laion/clap-htsat-unfused"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_SOURCE,
        metavar="SRC",
        help=f"Hugging Face id or local Hugging Face directory of a LAION CLAP (default {DEFAULT_SOURCE}); "
        "msclap:2023 or msclap:2022 for Microsoft CLAP (microsoft/msclap), or a local msclap .pth",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (default ~/.local/share/sound-monitor/models/<name of SRC>, where model: auto finds it)",
    )
    parser.add_argument("--int8", action="store_true", help="also write a dynamically quantised int8 audio encoder")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for export checks (default 2)")


def run(args: argparse.Namespace) -> int:
    from monitor.config import default_models_dir
    from monitor.models.clap.msclap_export import export_msclap, is_msclap_source

    src = args.model
    if is_msclap_source(src):
        name = src.replace(":", "-") if src.startswith("msclap:") else "msclap-" + Path(src).stem
        out = Path(args.out) if args.out else default_models_dir() / name
        m = export_msclap(src, out, int8=args.int8, threads=max(1, args.threads))
    else:
        from monitor.models.clap.export import export_clap

        out = Path(args.out) if args.out else default_models_dir() / Path(src.rstrip("/")).name
        m = export_clap(src, out, int8=args.int8, threads=max(1, args.threads))
    line = (
        f"exported {src} -> {out}: embedding_dim {m['embedding_dim']}, logit_scale {m['logit_scale']:.4f}, "
        f"max |onnx - torch| audio {m['max_abs_diff']['audio']:.2e} text {m['max_abs_diff']['text']:.2e}"
    )
    if m.get("int8"):
        line += f", int8 min cosine {m['int8']['min_cosine']:.4f}"
    print(line, file=sys.stdout)
    return 0
