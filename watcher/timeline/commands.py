"""``k8s-watcher history install``: the as-of functions in the destination's PostgreSQL."""

from __future__ import annotations

import argparse
import os
import sys

from watcher.timeline import FUNCTIONS, TimelineError, install


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    history = sub.add_parser("history", help="the fleet as of a time: SQL functions over the history tables")
    actions = history.add_subparsers(dest="history_command", required=True)
    run = actions.add_parser(
        "install",
        help="create or replace k8s_objects_as_of, k8s_objects_diff, k8s_changes_between and their indexes",
        description="Create or replace, in one transaction, the SQL functions that answer what existed "
        "at a time, what differs between two times and what changed between them, over the "
        "k8s_object_changes and k8s_object_lifetimes tables a sync wrote (docs/history.md).",
    )
    run.add_argument(
        "--dsn",
        default=os.environ.get("K8S_WATCHER_HISTORY_DSN"),
        help="the destination database, postgresql://user:password@host/db (default: $K8S_WATCHER_HISTORY_DSN)",
    )
    run.add_argument("--schema", default="public", help="schema of the history tables and the functions")
    run.set_defaults(func=_install)


def _install(args: argparse.Namespace) -> int:
    if not args.dsn:
        print("history install: --dsn (or $K8S_WATCHER_HISTORY_DSN) is required", file=sys.stderr)
        return 2
    try:
        install(args.dsn, schema=args.schema)
    except TimelineError as exc:
        print(f"history install: {exc}", file=sys.stderr)
        return 1
    print(f"installed {', '.join(FUNCTIONS)} in {args.schema}")
    return 0
