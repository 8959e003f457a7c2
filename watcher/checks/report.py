"""``k8s-watcher report``: one self-contained HTML page (inline CSS, script and SVG; no
request at view time) with the inventory, each cluster's version and freshness, and
the results of a check run with the objects that failed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import psycopg

from watcher.checks import RESULTS_TABLE, SEVERITIES, Check
from watcher.checks.charts import PALETTE, donut, stacked_bars
from watcher.checks.runner import Finding, Run, findings, run_checks, table_names
from watcher.checks.tracking import FINDINGS_VIEW, SPANS_TABLE

#: Offending objects listed per check; the rest are counted.
OBJECTS_PER_CHECK = 200
SEVERITY_COLORS = {"critical": "#7f1d1d", "high": "#dc2626", "medium": "#f59e0b", "low": "#3b82f6"}
_ASSETS = Path(__file__).parent / "assets"


@dataclass
class ReportData:
    generated_at: datetime
    run: Run
    findings: list[Finding]
    #: table -> context -> live objects
    inventory: dict[str, dict[str, int]]
    clusters: list[dict[str, Any]]
    #: (image, pods, contexts)
    images: list[tuple[str, int, int]]


def _object_tables(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        r"""SELECT table_name FROM information_schema.columns
            WHERE table_schema = current_schema() AND table_name LIKE 'k8s\_%'
              AND column_name IN ('context_name', 'uid')
            GROUP BY table_name HAVING count(*) = 2 ORDER BY 1"""
    ).fetchall()
    return [r[0] for r in rows if r[0] not in ("k8s_clusters", RESULTS_TABLE, FINDINGS_VIEW, SPANS_TABLE)]


def _inventory(conn: psycopg.Connection) -> dict[str, dict[str, int]]:
    tables = _object_tables(conn)
    if not tables:
        return {}
    query = " UNION ALL ".join(
        f"SELECT '{t}', context_name, count(*) FROM {t} GROUP BY context_name" for t in tables
    )
    inventory: dict[str, dict[str, int]] = defaultdict(dict)
    for table, ctx, n in conn.execute(query).fetchall():
        inventory[table][ctx] = n
    return dict(inventory)


def _clusters(conn: psycopg.Connection, tables: set[str]) -> list[dict[str, Any]]:
    if "k8s_clusters" not in tables:
        return []
    cur = conn.execute(
        """SELECT context_name, kubernetes_version, server, node_count, informers_watching, informers_total,
                  cache_staleness_seconds, synced_at,
                  EXTRACT(EPOCH FROM (now() AT TIME ZONE 'UTC') - synced_at)::bigint AS synced_seconds_ago,
                  last_error
           FROM k8s_clusters ORDER BY context_name"""
    )
    names = [d.name for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _images(conn: psycopg.Connection, tables: set[str], limit: int = 15) -> list[tuple[str, int, int]]:
    if "k8s_pods" not in tables:
        return []
    rows = conn.execute(
        """SELECT image, count(*), count(DISTINCT context_name) FROM k8s_pods, unnest(images) AS image
           GROUP BY image ORDER BY 2 DESC, 1 LIMIT %s""",
        (limit,),
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def gather(conn: psycopg.Connection, checks: Iterable[Check]) -> ReportData:
    """Run (and record) the checks, then read what the page shows."""
    run = run_checks(conn, checks)
    tables = table_names(conn)
    return ReportData(
        generated_at=datetime.now(UTC),
        run=run,
        findings=findings(conn, run.run_id, limit_per_check=OBJECTS_PER_CHECK),
        inventory=_inventory(conn),
        clusters=_clusters(conn, tables),
        images=_images(conn, tables),
    )


def build_report(conn: psycopg.Connection, checks: Iterable[Check]) -> str:
    return render(gather(conn, checks))


# --------------------------------------------------------------------------- HTML


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _badge(text: str, kind: str) -> str:
    return f'<span class="badge {escape(kind)}">{escape(text)}</span>'


def _summary(data: ReportData) -> str:
    run = data.run
    objects = sum(sum(by_ctx.values()) for by_ctx in data.inventory.values())
    failing = run.failing()
    serious = run.failing("high")
    cards = [
        ("contexts", len(run.contexts), ""),
        ("objects", objects, ""),
        ("checks failing", f"{len(failing)} / {len(run.outcomes)}", "warn" if failing else "ok"),
        ("high or critical failing", len(serious), "bad" if serious else "ok"),
    ]
    html = ['<div class="cards">']
    html += [
        f'<div class="card {cls}"><div class="n">{v}</div><div>{escape(k)}</div></div>' for k, v, cls in cards
    ]
    html.append('</div><div class="donuts">')
    for ctx in run.contexts:
        ran = [o for o in run.outcomes if o.status(ctx) != "skipped"]
        failed = sum(1 for o in ran if o.status(ctx) == "fail")
        html.append(
            f"<figure>{donut(len(ran) - failed, failed, title=f'{ctx}: checks passing')}"
            f"<figcaption>{escape(ctx)}: {len(ran) - failed} of {len(ran)} checks pass</figcaption></figure>"
        )
    html.append("</div>")
    return "".join(html)


def _clusters_section(data: ReportData) -> str:
    if not data.clusters:
        return "<p>No <code>k8s_clusters</code> table: sync it to see versions and freshness.</p>"
    rows = []
    for c in data.clusters:
        staleness = c["cache_staleness_seconds"]
        fresh = "ok" if staleness is not None and staleness < 60 else "warn"
        watching = f"{c['informers_watching'] or 0} / {c['informers_total'] or 0}"
        rows.append(
            [
                f"<b>{escape(c['context_name'])}</b>",
                escape(c["kubernetes_version"] or "unknown"),
                f"<code>{escape(c['server'] or '')}</code>",
                c["node_count"] if c["node_count"] is not None else "",
                watching,
                _badge("unknown" if staleness is None else f"{staleness} s", fresh),
                escape(_ago(c["synced_seconds_ago"])),
                escape(c["last_error"] or ""),
            ]
        )
    head = [
        "context",
        "version",
        "server",
        "nodes",
        "informers watching",
        "cache behind API",
        "synced",
        "last error",
    ]
    return _table(head, rows)


def _inventory_section(data: ReportData) -> str:
    if not data.inventory:
        return "<p>No object tables found.</p>"
    contexts = sorted({ctx for by_ctx in data.inventory.values() for ctx in by_ctx})
    colors = {ctx: PALETTE[i % len(PALETTE)] for i, ctx in enumerate(contexts)}
    ordered = sorted(data.inventory.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    bars = [
        (table.removeprefix("k8s_"), {c: float(n) for c, n in by_ctx.items()}) for table, by_ctx in ordered
    ]
    chart = stacked_bars(bars, colors, title="Objects per kind and context")
    rows = [
        [escape(table), *(by_ctx.get(ctx, 0) for ctx in contexts), sum(by_ctx.values())]
        for table, by_ctx in ordered
    ]
    return chart + _table(["table", *contexts, "total"], rows, "numbers")


def _images_section(data: ReportData) -> str:
    if not data.images:
        return "<p>No pods.</p>"
    bars = [(image, {"pods": float(n)}) for image, n, _ in data.images]
    chart = stacked_bars(bars, {"pods": PALETTE[1]}, title="Pods per image", label_width=300)
    rows = [[f"<code>{escape(image)}</code>", n, ctxs] for image, n, ctxs in data.images]
    return chart + _table(["image", "pods", "contexts"], rows, "numbers")


def _check_details(data: ReportData) -> str:
    run = data.run
    objects: dict[str, list[Finding]] = defaultdict(list)
    for f in data.findings:
        objects[f.check_id].append(f)
    outcomes = sorted(run.outcomes, key=lambda o: (not o.failed, -o.check.rank, o.check.id))
    html = []
    for o in outcomes:
        c = o.check
        status = "fail" if o.failed else ("skipped" if o.missing_tables else "pass")
        pills = "".join(
            _badge(
                f"{ctx}: {o.status(ctx)}" + (f" ({o.failed[ctx]})" if o.failed.get(ctx) else ""),
                o.status(ctx),
            )
            for ctx in run.contexts
        )
        body = [
            f"<p><b>{escape(c.section)}</b> · {escape(', '.join(c.frameworks))}</p>",
            f"<p>{escape(c.remediation)}</p>",
        ]
        if o.missing_tables:
            body.append(f"<p>Skipped: not synced: {escape(', '.join(o.missing_tables))}.</p>")
        listed = objects.get(c.id, [])
        if listed:
            rows = [
                [escape(f.context_name), escape(f.kind), escape(f.namespace or ""), escape(f.name)]
                for f in listed
            ]
            body.append(_table(["context", "kind", "namespace", "name"], rows))
            total = sum(o.failed.values())
            if total > len(listed):
                body.append(f"<p>… and {total - len(listed)} more.</p>")
        text = escape(f"{c.id} {c.title} {' '.join(f.name for f in listed)}".lower())
        html.append(
            f'<details class="check" data-rank="{c.rank}" data-status="{status}" data-text="{text}">'
            f'<summary><span class="what">{_badge(c.severity, c.severity)} <b>{escape(c.title)}</b> '
            f'<code>{escape(c.id)}</code></span><span class="pills">{pills}</span></summary>{"".join(body)}</details>'
        )
    return "".join(html)


def _checks_section(data: ReportData) -> str:
    run = data.run
    colors = {**{s: SEVERITY_COLORS[s] for s in reversed(SEVERITIES)}, "passing": "#16a34a"}
    bars = []
    for ctx in run.contexts:
        counts: dict[str, float] = defaultdict(float)
        for o in run.outcomes:
            status = o.status(ctx)
            if status == "fail":
                counts[o.check.severity] += 1
            elif status == "pass":
                counts["passing"] += 1
        bars.append((ctx, dict(counts)))
    chart = stacked_bars(bars, colors, title="Checks per context: failing by severity, and passing")
    options = "".join(f'<option value="{i}">{escape(s)} and above</option>' for i, s in enumerate(SEVERITIES))
    controls = (
        '<div class="controls"><input id="filter-text" type="search" placeholder="filter checks and objects">'
        f'<select id="filter-severity">{options}</select>'
        '<label><input id="filter-failing" type="checkbox"> failing only</label>'
        '<span id="filter-count"></span></div>'
    )
    return chart + controls + _check_details(data)


def render(data: ReportData) -> str:
    run = data.run
    sections = [
        ("summary", "Summary", _summary(data)),
        ("clusters", "Clusters: versions and freshness", _clusters_section(data)),
        ("inventory", "Inventory", _inventory_section(data)),
        ("images", "Top images", _images_section(data)),
        ("checks", "Hardening checks", _checks_section(data)),
    ]
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{escape(title)}</h2>{html}</section>' for sid, title, html in sections
    )
    generated = data.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>k8s-watcher report {generated}</title><style>{(_ASSETS / 'report.css').read_text()}</style></head>"
        f"<body><header><h1>Kubernetes inventory and hardening report</h1>"
        f"<p>Generated {generated} · check run <code>{run.run_id}</code> · "
        f"contexts: {escape(', '.join(run.contexts)) or 'none'}</p><nav>{nav}</nav></header>"
        f"<main>{body}</main><script>{(_ASSETS / 'report.js').read_text()}</script></body></html>\n"
    )
