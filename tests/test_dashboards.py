"""The Grafana dashboards: every SQL panel runs (Grafana's macros and variables expanded
the way Grafana expands them) against the hardening data set in PostgreSQL, and every
PromQL panel names metrics and labels that the daemon's ``/metrics`` serves."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import eventually
from tests.hardening import EAST, WEST, Hardened, k8s_watcher

pytest_plugins = ["tests.hardening_fixtures"]

DASHBOARDS = sorted((Path(__file__).parent.parent / "dashboards").glob("*.json"))
_NOW = datetime.now(UTC)
TIME_FROM, TIME_TO = (
    (_NOW - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    (_NOW + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
)
INTERVAL = "1m"


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def datasource_type(obj: dict[str, Any]) -> str:
    return str(obj["datasource"]["type"])


def _seconds(interval: str) -> int:
    value = interval.strip().strip("'")
    return int(value[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]


def expand_sql(sql: str, variables: dict[str, list[str]]) -> str:
    """Grafana's PostgreSQL macros and multi-value variables (``'a','b'``), as it sends them."""
    sql = sql.replace("$__interval", INTERVAL)
    sql = re.sub(
        r"\$__timeGroupAlias\(([^,]+),\s*([^)]+)\)",
        lambda m: f'floor(extract(epoch from {m[1]})/{_seconds(m[2])})*{_seconds(m[2])} AS "time"',
        sql,
    )
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN '{TIME_FROM}' AND '{TIME_TO}'", sql)
    for name, values in variables.items():
        quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values)
        sql = re.sub(rf"\$\{{{name}\}}|\${name}\b", quoted, sql)
    assert "$" not in sql, sql
    return sql


@pytest.fixture(scope="module")
def checked(hardened: Hardened) -> Hardened:
    """The data set with a check run stored, as the hardening dashboard expects."""
    assert k8s_watcher("check", "--dsn", hardened.dsn).returncode in (0, 1)
    return hardened


def test_every_dashboard_panel_is_wired_to_a_declared_data_source() -> None:
    assert {p.name for p in DASHBOARDS} == {
        "k8s-inventory.json",
        "k8s-hardening.json",
        "k8s-watcher-daemon.json",
    }
    for path in DASHBOARDS:
        dashboard = load(path)
        inputs = {f"${{{i['name']}}}": i["pluginId"] for i in dashboard["__inputs"]}
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids)) >= 8, path.name
        for panel in panels(dashboard):
            for obj in (panel, *panel["targets"]):
                assert inputs[obj["datasource"]["uid"]] == datasource_type(obj), (path.name, panel["title"])
            assert panel["targets"] and panel["gridPos"]["w"] <= 24, (path.name, panel["title"])


def test_every_sql_panel_runs_and_finds_something_in_the_data_set(checked: Hardened) -> None:
    ran = 0
    with psycopg.connect(checked.dsn) as conn:
        for path in DASHBOARDS:
            dashboard = load(path)
            variables: dict[str, list[str]] = {}
            for var in dashboard["templating"]["list"]:
                if datasource_type(var) == "grafana-postgresql-datasource":
                    rows = conn.execute(var["query"]).fetchall()
                    variables[var["name"]] = [str(r[0]) for r in rows]
                    assert variables[var["name"]], (path.name, var["name"])
            if "context" in variables:
                assert set(variables["context"]) == {EAST, WEST}
            for panel in panels(dashboard):
                for target in panel["targets"]:
                    if datasource_type(target) != "grafana-postgresql-datasource":
                        continue
                    sql = expand_sql(target["rawSql"], variables)
                    try:
                        cur = conn.execute(sql)
                    except psycopg.Error as exc:
                        raise AssertionError(f"{path.name} / {panel['title']}: {exc}\n{sql}") from exc
                    rows = cur.fetchall()
                    # Counts must count something; only ages (unit s) may be 0 on fresh data.
                    may_be_zero = panel.get("fieldConfig", {}).get("defaults", {}).get("unit") == "s"
                    assert rows and (may_be_zero or any(any(row) for row in rows)), (
                        f"{path.name} / {panel['title']}"
                    )
                    if target["format"] == "time_series":
                        assert cur.description and cur.description[0].name == "time", panel["title"]
                    ran += 1
    assert ran >= 20


# --------------------------------------------------------------------------- PromQL

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", re.M)


def exposed(metrics_text: str) -> dict[str, set[str]]:
    """Sample name -> label names, from Prometheus' text exposition format."""
    out: dict[str, set[str]] = {}
    for name, labels in _SAMPLE.findall(metrics_text):
        out.setdefault(name, set()).update(re.findall(r'(\w+)="', labels or ""))
    return out


def promql_references(expr: str) -> tuple[set[str], set[str]]:
    """The k8s-watcher metrics and the label names an expression uses."""
    metrics = set(re.findall(r"\bk8s_watcher_[a-z_]+\b", expr))
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    for selector in re.findall(r"\{([^{}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
    return metrics, labels


def _balanced(expr: str) -> bool:
    depth = {"(": 0, "[": 0, "{": 0}
    closing = {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in depth:
            depth[ch] += 1
        elif ch in closing:
            depth[closing[ch]] -= 1
            if depth[closing[ch]] < 0:
                return False
    return not any(depth.values())


def test_every_promql_panel_uses_metrics_and_labels_the_daemon_serves(
    checked: Hardened, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon(checked.kubeconfig, tmp_path / "cache.db", f"{EAST},{WEST}")

    def scrape() -> str | None:
        try:  # a scrape can take seconds on a loaded machine; the client gives up after 5
            code, text = daemon.http("/metrics")
        except OSError:
            return None
        return text if code == 200 and f'k8s_watcher_events_total{{context="{EAST}"' in text else None

    served = exposed(eventually(scrape, timeout=60, what="/metrics with every informer"))
    used: set[str] = set()
    dashboard = load(next(p for p in DASHBOARDS if p.name == "k8s-watcher-daemon.json"))
    exprs = [
        (p["title"], t["expr"], t.get("legendFormat", "")) for p in panels(dashboard) for t in p["targets"]
    ]
    exprs += [(v["name"], v["definition"], "") for v in dashboard["templating"]["list"]]
    for where, expr, legend in exprs:
        assert _balanced(expr), (where, expr)
        metrics, labels = promql_references(expr)
        labels |= set(re.findall(r"\{\{(\w+)\}\}", legend))
        labels |= set(re.findall(r"label_values\(\w+,\s*(\w+)\)", expr))
        assert metrics, (where, expr)
        missing = metrics - served.keys()
        assert not missing, (where, missing)
        available = set().union(*(served[m] for m in metrics))
        assert labels <= available, (where, labels - available)
        used |= metrics
    wanted = {
        "k8s_watcher_informer_state", "k8s_watcher_events_total", "k8s_watcher_lists_total",
        "k8s_watcher_relists_total", "k8s_watcher_cache_rows", "k8s_watcher_sync_duration_seconds_bucket",
    }  # fmt: skip
    assert wanted <= used
