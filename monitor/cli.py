"""Command line: argparse subcommands.

Each subcommand lives in ``monitor/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``. Every command module is imported to build the parser, but the command
modules import their stages (onnxruntime, PortAudio, paho) inside ``run``, so ``devices``
works without onnxruntime and ``classify`` without PortAudio.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from monitor import __version__
from monitor.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("monitor.commands.run", "monitor a microphone, file or stdin stream"),
    "classify": ("monitor.commands.classify", "zero-shot classify whole audio files"),
    "export": ("monitor.commands.export", "export a CLAP checkpoint to ONNX"),
    "models": ("monitor.commands.models", "fetch and list models (offline backend)"),
    "devices": ("monitor.commands.devices", "list audio input devices"),
    "check-config": ("monitor.commands.check_config", "validate and print the effective config"),
    "eval": ("monitor.commands.eval", "evaluate zero-shot accuracy on a labelled dataset"),
    "enroll": ("monitor.commands.enroll", "teach a label by example clips"),
    "events": ("monitor.commands.events", "list the events on record (the local event store)"),
    "bench": ("monitor.commands.bench", "measure speed and memory"),
    "service": ("monitor.commands.systemd", "install a systemd unit that runs the monitor at boot"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sound-monitor",
        description="Always-on zero-shot sound-event monitor.",
    )
    parser.add_argument("--version", action="version", version=f"sound-monitor {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    # -v also after the subcommand (`sound-monitor run -v`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.set_defaults(_module=module)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    from monitor import logs

    logs.setup(args.verbose)
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)  # one plain line: the whole story
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # downstream closed (e.g. `| head`): not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
