"""`sound-monitor models fetch offline | list`: the registry-installable offline model."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="models_cmd", metavar="ACTION", required=True)
    f = sub.add_parser("fetch", help="download, verify (sha256) and extract a model")
    f.add_argument("which", choices=["offline"], help="the model to fetch")
    f.add_argument("--dir", help="target folder (default: models/offline, or ~/.cache/sound-monitor/offline)")
    f.add_argument("--models-dir", default="models")
    lst = sub.add_parser("list", help="list the models present")
    lst.add_argument("--models-dir", default="models")


def run(args) -> int:
    from pathlib import Path

    from monitor.offline.fetch import default_dir, fetch_offline, is_complete

    if args.models_cmd == "fetch":
        target = Path(args.dir) if args.dir else default_dir(args.models_dir)
        fetch_offline(target, say=lambda m: print(m, file=sys.stderr, flush=True))
        print(target)
        return 0
    from monitor.offline.select import find_clap_export

    clap = find_clap_export(Path(args.models_dir))
    off = default_dir(args.models_dir)
    print(f"clap:    {clap or 'none (sound-monitor export --out models/clap-htsat-unfused)'}")
    print(f"offline: {off if is_complete(off) else 'not fetched (sound-monitor models fetch offline)'}")
    return 0
