"""`sound-monitor events [--since 24h] [--label L] [--source S] [--limit N] [--json|--csv]`:
the events on record in the local event store (monitor/eventstore.py), newest first.

Plain output is one line per event; ``--json`` prints one event per line in the event
schema (README "Contracts"), ``--csv`` a table with a header row (the schema's fields).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from monitor.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="the monitor's config (its state dir and device id)")
    parser.add_argument("--since", default="24h", help="how far back: 30m, 24h, 7d or a date (default: 24h; all: 0)")
    parser.add_argument("--label", help="only this label")
    parser.add_argument("--source", help="only this source")
    parser.add_argument("--limit", type=int, default=None, help="at most this many (the newest)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON event per line (the event schema)")
    out.add_argument("--csv", action="store_true", help="CSV with a header row")


def run(args: argparse.Namespace) -> int:
    from monitor.config import load_config
    from monitor.eventstore import EventStore, parse_since, store_path, to_csv

    cfg = load_config(args.config)
    path = store_path(cfg.state_path, cfg.device)
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    try:
        since = None if args.since.strip() in ("0", "all") else parse_since(args.since)
    except ValueError as err:
        raise UserError(f"--since {err}") from None
    try:
        store = EventStore(path, create=False)
    except FileNotFoundError:
        raise UserError(
            f"no events on record yet: {path} does not exist (a run with store.enabled writes it)"
        ) from None
    try:
        events = store.events(since=since, label=args.label, source=args.source, limit=args.limit)
    finally:
        store.close()
    if args.json:
        for ev in events:
            print(json.dumps(ev, separators=(",", ":")))
    elif args.csv:
        sys.stdout.write(to_csv(events))
    else:
        if not events:
            print(f"no events since {_when(since)}" + (f" for {args.label!r}" if args.label else ""))
        for e in events:
            when = e.get("start_time") or e.get("wall_time", "")
            dur = e.get("duration_s")
            state = (
                "open" if e["type"] == "start" else (f"{dur:.1f} s" if dur is not None else e.get("reason", "ended"))
            )
            print(f"{when}  {e['label']:<24} peak {e['peak_score']:.2f}  {state:<9} {e['source']}  {e['event_id']}")
    return 0


def _when(since: float | None) -> str:
    return "the first" if since is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(since))
