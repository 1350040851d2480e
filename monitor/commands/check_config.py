"""`sound-monitor check-config [PATH]`: validate a config file and print the effective config."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("path", nargs="?", default=None, help="config file (default: ./config.yaml if present)")


def run(args) -> int:
    from pathlib import Path

    from monitor.config import dump_config, load_config

    path = args.path
    if path is None and Path("config.yaml").exists():
        path = "config.yaml"
    cfg = load_config(path)
    sys.stdout.write(f"# effective config from {path or 'built-in defaults'}: valid\n")
    sys.stdout.write(dump_config(cfg))
    return 0
