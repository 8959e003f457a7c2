"""Findings over time: ``k8s_policy_findings``, one row per stretch of time an object
failed a check.

A finding is (check, context, kind, uid): the object, not its name, so an object
deleted and created again under the same name is a new finding. Each ``check`` run,
in the transaction that stores its results, updates the findings from those results
with statements inside PostgreSQL (no row crosses the wire):

- **close**: an open finding of a check that *ran* over a context the run *saw*, that
  the run did not report, gets ``closed_at`` = the run's time;
- **open**: a reported object with no open finding opens one (``opened_at`` = the
  run's time), also when an earlier finding of it was closed: failing again is a
  new row, so each row is one stretch of failing;
- **ran**: the run becomes the last one of each check it ran over each context it saw,
  which is what an open finding's ``last_seen_at`` reads, so a finding reported again
  is not rewritten (at 100k objects, rewriting the ~480k open findings every run cost
  more than the checks themselves).

What a run did not look at says nothing: a check left out (``--framework``) or
skipped (a table it reads was not synced) closes nothing, and neither does a run
over a context whose data is not in the database (a context dropped from the sync;
its findings stay open until a run sees the context again). A check that errors
aborts the whole run, which then stores and closes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from watcher.checks import RESULTS_TABLE

#: What users query: one row per finding (a view over the two tables below).
FINDINGS_VIEW = "k8s_policy_findings"
#: The findings as stored: an open one's ``last_seen_*`` are those of its check and context.
SPANS_TABLE = "k8s_policy_finding_spans"
#: Per check and context, the last run that ran the check over the context.
CHECK_RUNS_TABLE = "k8s_policy_check_runs"

_DDL = f"""
CREATE TABLE IF NOT EXISTS {SPANS_TABLE} (
  finding_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  check_id text NOT NULL,
  title text NOT NULL,
  severity text NOT NULL,
  frameworks text[] NOT NULL,
  context_name text NOT NULL,
  kind text NOT NULL,
  namespace text,
  name text NOT NULL,
  uid uuid NOT NULL,
  opened_at timestamptz NOT NULL,
  opened_run_id uuid NOT NULL,
  -- Written when the finding opens and when it closes, not by every run in between.
  last_seen_at timestamptz NOT NULL,
  last_seen_run_id uuid NOT NULL,
  closed_at timestamptz,
  closed_run_id uuid
);
-- At most one open finding per object and check: the key every run matches on.
CREATE UNIQUE INDEX IF NOT EXISTS {SPANS_TABLE}_open
  ON {SPANS_TABLE} (check_id, context_name, kind, uid) WHERE closed_at IS NULL;
CREATE TABLE IF NOT EXISTS {CHECK_RUNS_TABLE} (
  check_id text NOT NULL,
  context_name text NOT NULL,
  last_ran_at timestamptz NOT NULL,
  last_run_id uuid NOT NULL,
  PRIMARY KEY (check_id, context_name)
);
"""

# An open finding was reported by every run of its check over its context since it
# opened (one that did not report it closed it), so its last sighting is that pair's
# last run: one row per check and context moves each run, not one per finding.
_VIEW = f"""
CREATE VIEW {FINDINGS_VIEW} AS
SELECT f.finding_id, f.check_id, f.title, f.severity, f.frameworks,
       f.context_name, f.kind, f.namespace, f.name, f.uid, f.opened_at, f.opened_run_id,
       CASE WHEN f.closed_at IS NULL THEN r.last_ran_at ELSE f.last_seen_at END AS last_seen_at,
       CASE WHEN f.closed_at IS NULL THEN r.last_run_id ELSE f.last_seen_run_id END AS last_seen_run_id,
       f.closed_at, f.closed_run_id
FROM {SPANS_TABLE} AS f LEFT JOIN {CHECK_RUNS_TABLE} AS r USING (check_id, context_name)"""

# The run's offending objects, as the runner stored them (the results' index is on
# (run_at, run_id)).
_REPORTED = f"""
  FROM {RESULTS_TABLE} AS r
  WHERE r.run_at = %(run_at)s AND r.run_id = %(run_id)s AND r.status = 'fail'"""
_SAME_OBJECT = """
  r.check_id = f.check_id AND r.context_name = f.context_name AND r.kind = f.kind AND r.uid = f.uid"""

# Before this run's CHECK_RUNS_TABLE rows move: a closing finding was last seen by the
# previous run of its check over its context.
_CLOSE = f"""
UPDATE {SPANS_TABLE} AS f
SET closed_at = %(run_at)s, closed_run_id = %(run_id)s, last_seen_at = c.last_ran_at, last_seen_run_id = c.last_run_id
FROM {CHECK_RUNS_TABLE} AS c
WHERE c.check_id = f.check_id AND c.context_name = f.context_name
  AND f.closed_at IS NULL AND f.check_id = ANY(%(ran)s) AND f.context_name = ANY(%(contexts)s)
  AND NOT EXISTS (SELECT 1 {_REPORTED} AND {_SAME_OBJECT})"""

# DISTINCT ON: a check that returns an object twice still opens one finding. Every
# Kubernetes object has a uid; a row without one is not an object to follow.
_OPEN = f"""
INSERT INTO {SPANS_TABLE} (check_id, title, severity, frameworks, context_name, kind, namespace, name,
                           uid, opened_at, opened_run_id, last_seen_at, last_seen_run_id)
SELECT DISTINCT ON (r.check_id, r.context_name, r.kind, r.uid)
       r.check_id, r.title, r.severity, r.frameworks, r.context_name, r.kind, r.namespace, r.name,
       r.uid, r.run_at, r.run_id, r.run_at, r.run_id
{_REPORTED} AND r.uid IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM {SPANS_TABLE} AS f WHERE f.closed_at IS NULL AND {_SAME_OBJECT})"""

# Every context the run saw, including one that has only failures (it has a finding, so
# it needs a row), for every check that ran.
_RAN = f"""
INSERT INTO {CHECK_RUNS_TABLE} (check_id, context_name, last_ran_at, last_run_id)
SELECT check_id, context_name, %(run_at)s, %(run_id)s
FROM unnest(%(ran)s::text[]) AS check_id, unnest(%(contexts)s::text[]) AS context_name
ON CONFLICT (check_id, context_name) DO UPDATE SET last_ran_at = excluded.last_ran_at, last_run_id = excluded.last_run_id"""

_OPEN_COUNT = f"SELECT count(*) FROM {SPANS_TABLE} WHERE closed_at IS NULL"


@dataclass(frozen=True)
class FindingChanges:
    """What one run did to the findings."""

    opened: int
    closed: int
    #: Findings open after the run (of every check and context).
    open: int


def prepare(conn: psycopg.Connection) -> None:
    """Create the tables and the view if needed, and hold the findings until the run commits.

    Runs take turns (a second ``check`` waits for the first to commit), so each one
    reads the findings the previous one left and the runs' times follow their order.
    Readers (dashboards, psql) are not blocked: the lock conflicts only with writers.
    """
    conn.execute(_DDL)
    # PostgreSQL has no CREATE VIEW IF NOT EXISTS, and OR REPLACE would lock out readers
    # on every run.
    if conn.execute("SELECT to_regclass(%s)", (FINDINGS_VIEW,)).fetchone() == (None,):
        conn.execute(_VIEW)
    conn.execute(f"LOCK TABLE {SPANS_TABLE}, {CHECK_RUNS_TABLE} IN SHARE ROW EXCLUSIVE MODE")


def track(
    conn: psycopg.Connection,
    run_id: uuid.UUID,
    run_at: datetime,
    ran: Sequence[str],
    contexts: Sequence[str],
) -> FindingChanges:
    """Update the findings from the results of run ``run_id`` (already inserted, not yet
    committed): ``ran`` are the ids of the checks that ran, ``contexts`` the contexts the
    run saw; only findings of both may close."""
    params = {"run_id": run_id, "run_at": run_at, "ran": list(ran), "contexts": list(contexts)}
    # The statistics know neither this run's results (inserted by this transaction) nor
    # the findings the last run opened, so the planner expects a row or two on each side
    # and picks nested loops: 480k findings against 480k results of a run at 100k objects
    # ran for minutes. Hash joins are right at any size; this transaction ends with these.
    conn.execute("SET LOCAL enable_nestloop = off")
    closed = conn.execute(_CLOSE, params).rowcount
    opened = conn.execute(_OPEN, params).rowcount
    conn.execute(_RAN, params)
    row = conn.execute(_OPEN_COUNT).fetchone()
    return FindingChanges(opened=opened, closed=closed, open=row[0] if row else 0)
