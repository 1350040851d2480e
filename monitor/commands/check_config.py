"""`sound-monitor check-config [PATH]`: validate a config file, check that the files it names
exist, and print the effective config (with the device id, state and models dirs that unset
values resolve to on this machine)."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("path", nargs="?", default=None, help="config file (default: ./config.yaml if present)")


def run(args) -> int:
    from pathlib import Path

    from monitor.config import dump_config, load_config, missing_files
    from monitor.errors import UserError

    path = args.path
    if path is None and Path("config.yaml").exists():
        path = "config.yaml"
    cfg = load_config(path)
    where = path or "built-in defaults"
    missing = missing_files(cfg)
    if missing:
        raise UserError(f"{where}: " + "; ".join(missing))
    sys.stdout.write(f"# effective config from {where}: valid\n")
    sys.stdout.write(dump_config(cfg, effective=True))
    from monitor.runtime.control import Controls

    controls = Controls(cfg.state_path, cfg.device)
    lines = controls.describe([lab.name for lab in cfg.labels])
    if lines:
        sys.stdout.write(f"# overrides of this file set over MQTT (kept in {controls.path}):\n")
        sys.stdout.write("".join(f"#   {line}\n" for line in lines))
    from monitor.models.vetoes import VetoStore, vetoes_for

    store = VetoStore(cfg.state_path)
    vetoes = {k: v for k, v in vetoes_for(cfg, store).items() if v}
    if vetoes:
        sys.stdout.write("# veto sounds (a window more like one of them than like the label does not count for it):\n")
        for name, items in vetoes.items():
            shown = [v.describe() for v in items]
            sys.stdout.write(f"#   {name}: {', '.join(shown)}\n")
    from monitor.models.vetoes import ConfirmedStore, ExampleStore

    for store_cls, what in (
        (ExampleStore, 'examples taught on the web page ("this was LABEL": they join the label\'s vector)'),
        (ConfirmedStore, 'events confirmed on the web page ("yes, that was LABEL": veto clips must be nearer)'),
    ):
        taught = {k: v for k, v in store_cls(cfg.state_path).labels().items() if v}
        if taught:
            sys.stdout.write(f"# {what}:\n")
            for name, entries in taught.items():
                sys.stdout.write(f"#   {name}: {', '.join(e['name'] for e in entries)}\n")
    return 0
