"""Findings over time (``k8s_policy_findings``) on real data: objects changed through a
real API server, synced by the real CLI and destination into PostgreSQL between
``k8s-watcher check`` runs, and the findings each run opens, keeps and closes."""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from testbed.cluster import ControlPlanes, KubeHttp
from tests.conftest import namespace, sync, unique
from tests.hardening import collection, good_pod_spec, k8s_watcher, pod_manifest
from watcher.checks import Check, load_checks
from watcher.checks.runner import run_checks

CONTEXT = "prod"
#: The tables the pod-spec checks read, and the two that say which contexts a run saw.
TABLES = [
    "k8s_clusters", "k8s_namespaces", "k8s_pods", "k8s_deployments", "k8s_daemonsets", "k8s_statefulsets",
    "k8s_replicasets", "k8s_jobs", "k8s_cronjobs",
]  # fmt: skip
#: In every framework (so a pss-baseline run covers it); the other two are not in pss-baseline.
PRIVILEGED, ESCALATION, MUTABLE_TAG = (
    "privileged-containers",
    "privilege-escalation-allowed",
    "image-mutable-tag",
)


class Timeline:
    """One database that the test syncs into and runs the checks over, again and again."""

    def __init__(self, planes: ControlPlanes, dsn: str, tmp: Path) -> None:
        self.planes, self.dsn, self.tmp = planes, dsn, tmp
        self._syncs = itertools.count()

    def sync(self, contexts: list[str]) -> None:
        # A new cache each time: the local plugin lists everything afresh, so each sync
        # delivers the API's state of now (and delete-stale drops what is gone).
        n = next(self._syncs)
        spec = {
            "kubeconfig": str(self.planes.kubeconfig),
            "contexts": contexts,
            "cache_path": str(self.tmp / f"cache-{n}.db"),
        }
        result = sync(self.tmp / f"sync-{n}", self.dsn, spec, tables=TABLES)
        assert result.returncode == 0, result.output[-3000:]

    def check(self, *args: str) -> dict[str, Any]:
        """``k8s-watcher check`` as a user runs it; its JSON, with ``run_at`` parsed and the
        findings line of its summary."""
        out = k8s_watcher("check", "--dsn", self.dsn, "--format", "json", *args)
        assert out.returncode in (0, 1), out.stderr
        run: dict[str, Any] = json.loads(out.stdout)
        run["run_at"] = datetime.fromisoformat(run["run_at"])
        run["summary"] = next(line for line in out.stderr.splitlines() if line.startswith("findings:"))
        return run

    def findings(self, uids: set[str]) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:
            return conn.execute(
                "SELECT * FROM k8s_policy_findings WHERE uid::text = ANY(%s) ORDER BY finding_id",
                (list(uids),),
            ).fetchall()


def _privileged(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with its container privileged (which the API refuses beside
    allowPrivilegeEscalation: false)."""
    context = spec["containers"][0]["securityContext"]
    context["privileged"] = True
    del context["allowPrivilegeEscalation"]
    return spec


def _set_container(admin: KubeHttp, ns: str, spec: dict[str, Any]) -> None:
    """web's container becomes the first of ``spec`` (a merge patch replaces the list)."""
    patch = {"spec": {"template": {"spec": {"containers": spec["containers"][:1]}}}}
    admin.patch(f"{collection('Deployment', ns)}/web", patch)


def _doc_queries() -> list[str]:
    """The SQL examples of the "Findings over time" section of docs/checks.md."""
    text = (Path(__file__).parent.parent / "docs" / "checks.md").read_text()
    section = text.split("## Findings over time\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def _by_check(rows: list[dict[str, Any]], name: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["name"] == name:
            found.setdefault(row["check_id"], []).append(row)
    return found


def test_findings_open_stay_open_close_and_reopen_as_new_rows(
    planes: ControlPlanes, dsn: str, tmp_path: Path
) -> None:
    admin = planes.servers[CONTEXT].admin()
    ns = namespace(admin, unique("findings"))
    # A Deployment whose template is privileged (it will be fixed in place, then broken
    # again: one object, one uid), and a privileged pod running a mutable tag (deleted).
    web = admin.create(
        collection("Deployment", ns), pod_manifest("Deployment", "web", _privileged(good_pod_spec()))
    )
    debug_spec = _privileged(good_pod_spec())
    debug_spec["containers"][0]["image"] = "nginx"
    debug = admin.create(collection("Pod", ns), pod_manifest("Pod", "debug", debug_spec))
    uids = {web["metadata"]["uid"], debug["metadata"]["uid"]}
    timeline = Timeline(planes, dsn, tmp_path)

    # Run 1: each failure opens a finding (a privileged container also allows escalation).
    timeline.sync(["dev", CONTEXT])
    run1 = timeline.check()
    rows = timeline.findings(uids)
    assert {(r["check_id"], r["name"]) for r in rows} == {
        (PRIVILEGED, "web"), (ESCALATION, "web"), (PRIVILEGED, "debug"), (ESCALATION, "debug"), (MUTABLE_TAG, "debug"),
    }  # fmt: skip
    for row in rows:
        assert (row["opened_at"], row["last_seen_at"], row["closed_at"]) == (
            run1["run_at"],
            run1["run_at"],
            None,
        )
        assert str(row["opened_run_id"]) == str(row["last_seen_run_id"]) == run1["run_id"]
        assert (row["context_name"], row["namespace"]) == (CONTEXT, ns)
    web_row = _by_check(rows, "web")[PRIVILEGED][0]
    assert (web_row["kind"], web_row["severity"]) == ("Deployment", "high")
    assert web_row["frameworks"] == ["nsa-cisa", "pss-baseline", "pss-restricted"]
    assert web_row["title"] == next(c for c in load_checks() if c.id == PRIVILEGED).title

    # Run 2 finds them again: the same rows, last seen now.
    timeline.sync(["dev", CONTEXT])
    run2 = timeline.check()
    assert run2["run_at"] > run1["run_at"]
    again = timeline.findings(uids)
    assert [r["finding_id"] for r in again] == [r["finding_id"] for r in rows]
    assert {(r["opened_at"], r["last_seen_at"], r["closed_at"]) for r in again} == {
        (run1["run_at"], run2["run_at"], None)
    }

    # Fixed: web's template is no longer privileged, the debug pod is gone.
    _set_container(admin, ns, good_pod_spec())
    admin.delete(f"{collection('Pod', ns)}/debug")
    timeline.sync(["dev", CONTEXT])

    # A run that fails (one check errors) stores nothing and closes nothing.
    broken = Check(
        "broken", "Always errors", "low", ("nsa-cisa",), "-", "-",
        "SELECT context_name, 'Pod' AS kind, namespace, name, uid FROM k8s_pods "
        "WHERE 1 / (SELECT count(*) - count(*) FROM k8s_pods) = 1",
    )  # fmt: skip
    with psycopg.connect(dsn) as conn:
        checks = [c for c in load_checks() if c.id == PRIVILEGED] + [broken]
        with pytest.raises(psycopg.errors.DivisionByZero):
            run_checks(conn, checks)
        conn.rollback()
    assert timeline.findings(uids) == again
    # A run in which the checks are skipped (a table they read was not synced) closes nothing.
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE k8s_cronjobs RENAME TO k8s_cronjobs_away")
    skipped = timeline.check()
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE k8s_cronjobs_away RENAME TO k8s_cronjobs")
    assert {c["id"]: c["results"][CONTEXT]["status"] for c in skipped["checks"]}[PRIVILEGED] == "skipped"
    assert timeline.findings(uids) == again

    # Only pss-baseline: the privileged findings close at this run; escalation and the
    # mutable tag are checks that did not run, so theirs stay open.
    run3 = timeline.check("--framework", "pss-baseline")
    # Nothing else changed in the clusters between the syncs (the test bed runs no controllers).
    assert re.fullmatch(r"findings: 0 opened, 2 closed, \d+ open", run3["summary"]), run3["summary"]
    after3 = timeline.findings(uids)
    closed3 = {(r["check_id"], r["name"]) for r in after3 if r["closed_at"] is not None}
    assert closed3 == {(PRIVILEGED, "web"), (PRIVILEGED, "debug")}
    for row in after3:
        assert (row["last_seen_at"], str(row["last_seen_run_id"])) == (run2["run_at"], run2["run_id"])
        if row["closed_at"] is not None:
            assert (row["closed_at"], str(row["closed_run_id"])) == (run3["run_at"], run3["run_id"])

    # Every check: the other three close now.
    run4 = timeline.check()
    after4 = timeline.findings(uids)
    assert {(r["check_id"], r["name"]) for r in after4 if r["closed_at"] == run4["run_at"]} == {
        (ESCALATION, "web"), (ESCALATION, "debug"), (MUTABLE_TAG, "debug"),
    }  # fmt: skip
    assert all(r["closed_at"] is not None for r in after4)

    # web is privileged again: a new finding, the old one stays closed as it was.
    _set_container(admin, ns, _privileged(good_pod_spec()))
    timeline.sync(["dev", CONTEXT])
    run5 = timeline.check()
    web_rows = _by_check(timeline.findings(uids), "web")
    assert [(r["opened_at"], r["closed_at"]) for r in web_rows[PRIVILEGED]] == [
        (run1["run_at"], run3["run_at"]),
        (run5["run_at"], None),
    ]
    assert web_rows[PRIVILEGED][1]["finding_id"] > max(r["finding_id"] for r in after4)

    # The example queries of docs/checks.md, on this timeline.
    close_by_hand, how_long, per_namespace, per_team, old_open = _doc_queries()
    with psycopg.connect(dsn) as conn:
        debug_span = conn.execute(how_long.replace("'payments'", f"'{ns}'")).fetchall()
        assert [row[3:6] for row in debug_span] == [(run1["run_at"], run2["run_at"], run3["run_at"])]
        assert debug_span[0][6] == run3["run_at"] - run1["run_at"]
        fixed = {(row[0], row[1]): row[2] for row in conn.execute(per_namespace)}
        assert fixed[CONTEXT, ns] == 5  # the two privileged, two escalation and one mutable-tag findings
        assert "(no team)" in {row[0] for row in conn.execute(per_team)}
        assert (ns, "web") not in {row[4:6] for row in conn.execute(old_open)}
        conn.execute(
            "UPDATE k8s_policy_finding_spans SET opened_at = opened_at - interval '8 days' WHERE finding_id = %s",
            (web_rows[PRIVILEGED][1]["finding_id"],),
        )
        assert (ns, "web") in {row[4:6] for row in conn.execute(old_open)}
        conn.rollback()

    # prod drops out of the sync (delete-stale removes its rows): a run that does not
    # see prod does not close prod's findings, though web's rows are gone.
    timeline.sync(["dev"])
    run6 = timeline.check()
    assert CONTEXT not in run6["contexts"] and "dev" in run6["contexts"]
    with psycopg.connect(dsn) as conn:
        gone = conn.execute(
            "SELECT count(*) FROM k8s_deployments WHERE context_name = %s", (CONTEXT,)
        ).fetchone()
    assert gone == (0,)
    assert [r["closed_at"] for r in _by_check(timeline.findings(uids), "web")[PRIVILEGED]] == [
        run3["run_at"],
        None,
    ]
    # Closed by hand, as docs/checks.md says for a context gone for good.
    with psycopg.connect(dsn) as conn:
        conn.execute(close_by_hand.replace("'old'", f"'{CONTEXT}'"))
    reopened = _by_check(timeline.findings(uids), "web")[PRIVILEGED][1]
    assert reopened["closed_at"] is not None and reopened["closed_run_id"] is None
    assert (reopened["last_seen_at"], str(reopened["last_seen_run_id"])) == (run5["run_at"], run5["run_id"])
