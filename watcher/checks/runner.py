"""Run the checks against PostgreSQL and record each run in ``k8s_policy_results``.

A run stores one ``fail`` row per offending object, and one ``pass`` (or ``skipped``,
when a table the check reads is missing) row per check and context with no object.
Offending rows are written by ``INSERT ... SELECT`` inside PostgreSQL: only the
counts come back, so a run over a large inventory moves no rows through Python. The
same transaction brings ``k8s_policy_findings`` up to date (``tracking``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from watcher.checks import RESULT_COLUMNS, RESULTS_TABLE, SEVERITIES, Check
from watcher.checks.tracking import FindingChanges, prepare, track

_DDL = f"""
CREATE TABLE IF NOT EXISTS {RESULTS_TABLE} (
  run_id uuid NOT NULL,
  run_at timestamptz NOT NULL,
  check_id text NOT NULL,
  title text NOT NULL,
  severity text NOT NULL,
  frameworks text[] NOT NULL,
  section text NOT NULL,
  status text NOT NULL CHECK (status IN ('pass', 'fail', 'skipped')),
  context_name text,
  kind text,
  namespace text,
  name text,
  uid uuid
);
CREATE INDEX IF NOT EXISTS {RESULTS_TABLE}_run ON {RESULTS_TABLE} (run_at, run_id);
"""

_META_COLUMNS = "run_id, run_at, check_id, title, severity, frameworks, section, status"
_OBJECT_COLUMNS = ", ".join(RESULT_COLUMNS)
_OBJECT_COLUMNS_OF_C = ", ".join(f"c.{column}" for column in RESULT_COLUMNS)


@dataclass
class Outcome:
    """What one check found: offending objects per context, or the tables it lacked."""

    check: Check
    missing_tables: tuple[str, ...] = ()
    failed: dict[str, int] = field(default_factory=dict)

    def status(self, context: str) -> str:
        if self.missing_tables:
            return "skipped"
        return "fail" if self.failed.get(context) else "pass"


@dataclass
class Run:
    run_id: uuid.UUID
    run_at: datetime
    contexts: list[str]
    outcomes: list[Outcome]
    #: What the run did to ``k8s_policy_findings`` (set when it is recorded).
    finding_changes: FindingChanges | None = None

    def failing(self, threshold: str = "low") -> list[Outcome]:
        """Checks that failed somewhere, at or above ``threshold`` severity."""
        rank = SEVERITIES.index(threshold)
        return [o for o in self.outcomes if o.failed and o.check.rank >= rank]


def table_names(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
    return {r[0] for r in rows}


def known_contexts(conn: psycopg.Connection, tables: set[str]) -> list[str]:
    """The contexts the destination holds: one ``k8s_clusters`` row each (or, without
    that table, every context that has namespaces)."""
    source = next((t for t in ("k8s_clusters", "k8s_namespaces") if t in tables), None)
    if source is None:
        return []
    rows = conn.execute(f"SELECT DISTINCT context_name FROM {source} ORDER BY 1").fetchall()
    return [r[0] for r in rows]


def _meta(check: Check, run: Run, status: str) -> tuple[Any, ...]:
    """The values of ``_META_COLUMNS`` for one check of a run."""
    frameworks = list(check.frameworks)
    return (run.run_id, run.run_at, check.id, check.title, check.severity, frameworks, check.section, status)


def _record_failures(conn: psycopg.Connection, check: Check, run: Run) -> dict[str, int]:
    """Insert the check's offending objects; their count per context."""
    # The check's text is sent as written: no parameters, so '%' and '?' in it mean
    # what they mean to PostgreSQL.
    query = (
        sql.SQL(f"WITH found AS (INSERT INTO {RESULTS_TABLE} ({_META_COLUMNS}, {_OBJECT_COLUMNS}) SELECT ")
        + sql.SQL(", ").join(sql.Literal(v) for v in _meta(check, run, "fail"))
        + sql.SQL(f", {_OBJECT_COLUMNS_OF_C} FROM (\n{check.sql}\n) AS c ")
        + sql.SQL("RETURNING context_name) SELECT context_name, count(*) FROM found GROUP BY 1")
    )
    return dict(conn.execute(query).fetchall())


def run_checks(conn: psycopg.Connection, checks: Iterable[Check]) -> Run:
    """Run ``checks`` and record them as one run, committed when all are done."""
    # The planner prices every jsonb_array_elements() at 100 rows, so the container
    # checks look expensive enough to JIT-compile: seconds of compiling for queries
    # that run in milliseconds.
    conn.execute("SET LOCAL jit = off")
    conn.execute(_DDL)
    prepare(conn)
    # Timed once the findings are ours: a run that waited for another is later than it.
    run = Run(uuid.uuid4(), datetime.now(UTC), [], [])
    tables = table_names(conn)
    run.contexts = known_contexts(conn, tables)
    for check in checks:
        missing = tuple(sorted(check.tables - tables))
        outcome = Outcome(check, missing)
        if not missing:
            outcome.failed = _record_failures(conn, check, run)
        run.outcomes.append(outcome)
    run.contexts = sorted(set(run.contexts).union(*(o.failed for o in run.outcomes)))
    copy_sql = f"COPY {RESULTS_TABLE} ({_META_COLUMNS}, context_name) FROM STDIN"
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for o in run.outcomes:
            for ctx in run.contexts:
                if o.status(ctx) != "fail":
                    copy.write_row((*_meta(o.check, run, o.status(ctx)), ctx))
    ran = [o.check.id for o in run.outcomes if not o.missing_tables]
    run.finding_changes = track(conn, run.run_id, run.run_at, ran, run.contexts)
    conn.commit()
    return run


@dataclass(frozen=True)
class Finding:
    check_id: str
    context_name: str
    kind: str
    namespace: str | None
    name: str
    uid: str


def findings(
    conn: psycopg.Connection, run_id: uuid.UUID, *, limit_per_check: int | None = None
) -> list[Finding]:
    """The offending objects a run recorded, by check, context, kind, namespace, name."""
    limit = "" if limit_per_check is None else f"WHERE n <= {int(limit_per_check)}"
    rows = conn.execute(
        f"""SELECT check_id, context_name, kind, namespace, name, uid::text FROM (
              SELECT *, row_number() OVER (PARTITION BY check_id ORDER BY context_name, kind, namespace, name) AS n
              FROM {RESULTS_TABLE} WHERE run_id = %s AND status = 'fail') AS f {limit}
            ORDER BY check_id, context_name, kind, namespace NULLS FIRST, name""",
        (run_id,),
    ).fetchall()
    return [Finding(*r) for r in rows]
