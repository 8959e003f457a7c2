"""``k8s-watcher compat install``: the official CloudQuery k8s plugin's tables as views."""

from __future__ import annotations

import argparse
import os
import sys

from watcher.compat.install import CompatError, install, uninstall


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    compat = sub.add_parser(
        "compat", help="the official CloudQuery k8s plugin's tables (v6.2.4) as PostgreSQL views"
    )
    actions = compat.add_subparsers(dest="compat_command", required=True)
    run = actions.add_parser(
        "install",
        help="create or upgrade the views (one transaction; views built on them are kept)",
        description="Create or upgrade the 43 views named and typed like the official plugin's tables, "
        "over the tables a sync of k8s-watcher wrote into the same database.",
    )
    run.add_argument(
        "--dsn",
        default=os.environ.get("K8S_WATCHER_COMPAT_DSN"),
        help="the destination database, postgresql://user:password@host/db (default: $K8S_WATCHER_COMPAT_DSN)",
    )
    run.add_argument("--schema", default="public", help="schema of the views (default public)")
    run.add_argument(
        "--source-schema", default="public", help="schema of k8s-watcher's tables (default public)"
    )
    run.set_defaults(func=_install)
    drop = actions.add_parser(
        "uninstall",
        help="drop the views (before a migrate_mode: forced sync, whose DROP TABLE they would block)",
    )
    drop.add_argument("--dsn", default=run.get_default("dsn"), help="as for install")
    drop.add_argument("--schema", default="public", help="schema of the views (default public)")
    drop.add_argument(
        "--source-schema", default="public", help="schema of k8s-watcher's tables (default public)"
    )
    drop.add_argument("--cascade", action="store_true", help="also drop the views built on them")
    drop.set_defaults(func=_uninstall)


def _install(args: argparse.Namespace) -> int:
    if not args.dsn:
        print("compat install: --dsn (or $K8S_WATCHER_COMPAT_DSN) is required", file=sys.stderr)
        return 2
    try:
        done = install(args.dsn, schema=args.schema, source_schema=args.source_schema)
    except CompatError as exc:
        print(f"compat install: {exc}", file=sys.stderr)
        return 1
    was = f" (was {done.previous})" if done.previous else ""
    kept = (
        f"; kept {len(done.dependents)} view(s) built on them: {', '.join(done.dependents)}"
        if done.dependents
        else ""
    )
    print(f"installed {done.views} compat views in {done.schema}, version {done.version}{was}{kept}")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    if not args.dsn:
        print("compat uninstall: --dsn (or $K8S_WATCHER_COMPAT_DSN) is required", file=sys.stderr)
        return 2
    try:
        dropped = uninstall(
            args.dsn, schema=args.schema, source_schema=args.source_schema, cascade=args.cascade
        )
    except CompatError as exc:
        print(f"compat uninstall: {exc}", file=sys.stderr)
        return 1
    print(f"dropped the compat views in {args.schema}" + (f" and {', '.join(dropped)}" if dropped else ""))
    return 0
