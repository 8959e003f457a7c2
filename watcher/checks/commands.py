"""``k8s-watcher check`` and ``k8s-watcher report``: argument parsing and output."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watcher.checks import FRAMEWORKS, SEVERITIES, load_checks

if TYPE_CHECKING:  # psycopg is imported only by the commands that connect
    from watcher.checks.runner import Finding, Run


def register(sub: Any) -> None:
    """Add the ``check`` and ``report`` subcommands to the main parser's subparsers."""
    check = sub.add_parser(
        "check", help="run the hardening checks against PostgreSQL, store and print the results"
    )
    check.add_argument("--dsn", required=True, help="the PostgreSQL the CloudQuery destination writes")
    check.add_argument("--framework", choices=FRAMEWORKS, help="only the checks of this framework")
    check.add_argument(
        "--severity-threshold", choices=SEVERITIES, default="high",
        help="exit 1 when a check of this severity or above fails (default: high)",
    )  # fmt: skip
    check.add_argument("--format", choices=["table", "json", "csv"], default="table")
    check.set_defaults(func=check_command)
    report = sub.add_parser("report", help="run the checks and write a self-contained HTML report")
    report.add_argument("--dsn", required=True, help="the PostgreSQL the CloudQuery destination writes")
    report.add_argument("--out", required=True, help="the HTML file to write")
    report.add_argument("--framework", choices=FRAMEWORKS, help="only the checks of this framework")
    report.set_defaults(func=report_command)


def check_command(args: argparse.Namespace) -> int:
    import psycopg

    from watcher.checks.runner import findings, run_checks

    try:
        with psycopg.connect(args.dsn) as conn:
            run = run_checks(conn, load_checks(args.framework))
            found = findings(conn, run.run_id) if args.format != "table" else []
    except psycopg.Error as exc:
        print(f"k8s-watcher check: {exc}", file=sys.stderr)
        return 2
    render = {"table": as_table, "json": as_json, "csv": as_csv}[args.format]
    sys.stdout.write(render(run, found))
    failing = run.failing(args.severity_threshold)
    print(
        f"run {run.run_id}: {len(run.outcomes)} checks over {len(run.contexts)} contexts; "
        f"{len(run.failing())} failing, {len(failing)} at or above {args.severity_threshold}",
        file=sys.stderr,
    )
    changes = run.finding_changes
    if changes is not None:
        print(
            f"findings: {changes.opened} opened, {changes.closed} closed, {changes.open} open",
            file=sys.stderr,
        )
    return 1 if failing else 0


def report_command(args: argparse.Namespace) -> int:
    import psycopg

    from watcher.checks.report import build_report

    try:
        with psycopg.connect(args.dsn) as conn:
            html = build_report(conn, load_checks(args.framework))
    except psycopg.Error as exc:
        print(f"k8s-watcher report: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(html, encoding="utf-8")
    return 0


# --------------------------------------------------------------------------- formats


def as_table(run: Run, _found: list[Finding]) -> str:
    """One line per check: its severity, then pass/fail (offending objects) per context."""
    width = max([len(o.check.id) for o in run.outcomes] + [5])
    cells = {ctx: max(len(ctx), 10) for ctx in run.contexts}
    lines = [f"{'CHECK':<{width}}  {'SEVERITY':<8}  " + "  ".join(f"{c:<{w}}" for c, w in cells.items())]
    for o in run.outcomes:
        verdicts = []
        for ctx, w in cells.items():
            status = o.status(ctx)
            verdicts.append(f"{status + (f' ({o.failed[ctx]})' if status == 'fail' else ''):<{w}}")
        lines.append(f"{o.check.id:<{width}}  {o.check.severity:<8}  " + "  ".join(verdicts))
    return "\n".join(line.rstrip() for line in lines) + "\n"


def as_json(run: Run, found: list[Finding]) -> str:
    objects: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in found:
        objects[f.check_id, f.context_name].append(
            {"kind": f.kind, "namespace": f.namespace, "name": f.name, "uid": f.uid}
        )
    checks = []
    for o in run.outcomes:
        c = o.check
        results = {
            ctx: {
                "status": o.status(ctx),
                "failed": o.failed.get(ctx, 0),
                "objects": objects.get((c.id, ctx), []),
            }
            for ctx in run.contexts
        }
        checks.append(
            {
                "id": c.id, "title": c.title, "severity": c.severity, "frameworks": list(c.frameworks),
                "section": c.section, "remediation": c.remediation, "missing_tables": list(o.missing_tables),
                "results": results,
            }
        )  # fmt: skip
    doc = {
        "run_id": str(run.run_id),
        "run_at": run.run_at.isoformat(),
        "contexts": run.contexts,
        "checks": checks,
    }
    return json.dumps(doc, indent=2) + "\n"


def as_csv(run: Run, found: list[Finding]) -> str:
    """One row per offending object, and one per check and context without any."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["check_id", "severity", "status", "context_name", "kind", "namespace", "name", "uid"])
    severity = {o.check.id: o.check.severity for o in run.outcomes}
    for o in run.outcomes:
        for ctx in run.contexts:
            if o.status(ctx) != "fail":
                writer.writerow([o.check.id, o.check.severity, o.status(ctx), ctx, "", "", "", ""])
    for f in found:
        writer.writerow(
            [
                f.check_id,
                severity[f.check_id],
                "fail",
                f.context_name,
                f.kind,
                f.namespace or "",
                f.name,
                f.uid,
            ]
        )
    return out.getvalue()
