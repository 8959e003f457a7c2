"""The hardening checks on real data: objects created through a real API server, synced
by the real CLI and destination into PostgreSQL, checked by ``k8s-watcher check``."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.postgres import Postgres, pg_bin
from tests.conftest import new_dsn, sync, unique
from tests.hardening import (
    EAST,
    ENFORCE,
    POD_CASES,
    WEST,
    Hardened,
    collection,
    good_pod_spec,
    k8s_watcher,
    pod_manifest,
)
from watcher.checks import FRAMEWORKS, RESULT_COLUMNS, SQL_DIR, CheckFileError, load_checks, parse_check
from watcher.checks.runner import table_names

pytest_plugins = ["tests.hardening_fixtures"]

CHECKS = {c.id: c for c in load_checks()}


@pytest.fixture(scope="module")
def json_run(hardened: Hardened) -> dict[str, Any]:
    """One ``k8s-watcher check --format json`` over the whole data set."""
    result = k8s_watcher(
        "check", "--dsn", hardened.dsn, "--format", "json", "--severity-threshold", "critical"
    )
    assert result.returncode == 1, result.stderr  # anonymous-bindings (critical) fails in east
    return json.loads(result.stdout)


def _stored_failures(dsn: str, run_id: str) -> dict[str, set[str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT check_id, uid::text FROM k8s_policy_results WHERE run_id = %s AND status = 'fail'",
            (run_id,),
        ).fetchall()
    found: dict[str, set[str]] = defaultdict(set)
    for check_id, uid in rows:
        found[check_id].add(uid)
    return found


# --------------------------------------------------------------------------- the files


def test_there_are_at_least_40_checks_each_with_its_metadata() -> None:
    assert len(CHECKS) >= 40
    for framework in FRAMEWORKS:
        assert len(load_checks(framework)) >= 10, framework
    for check in CHECKS.values():
        assert check.title and check.section and check.remediation, check.id
        assert check.tables, check.id


def test_a_check_file_with_an_incomplete_or_wrong_header_is_refused() -> None:
    good = (SQL_DIR / "host-pid.sql").read_text()
    assert parse_check(good, "host-pid.sql").severity == "high"
    with pytest.raises(CheckFileError, match="lacks severity"):
        parse_check(good.replace("-- severity: high\n", ""), "host-pid.sql")
    with pytest.raises(CheckFileError, match="unknown severity or framework"):
        parse_check(good.replace("pss-baseline", "pss-lenient"), "host-pid.sql")
    with pytest.raises(CheckFileError, match="not the file's name"):
        parse_check(good, "host-ipc.sql")


def test_container_checks_expand_the_same_pod_specs_and_containers() -> None:
    """Every file carries its own copy of the expansion (so psql runs it alone): the
    copies must not drift apart."""
    patterns = {
        "pod specs": r"WITH pod_specs AS \(.*?\n\)",
        "containers": r"SELECT 1 FROM \(  -- every init, regular and ephemeral container.*?\) AS c",
    }
    blocks: dict[str, set[str]] = defaultdict(set)
    for check in CHECKS.values():
        for name, pattern in patterns.items():
            blocks[name].update(re.findall(pattern, check.sql, re.S))
    assert len(blocks["pod specs"]) == 1 and len(blocks["containers"]) == 1, blocks
    pod_specs, containers = next(iter(blocks["pod specs"])), next(iter(blocks["containers"]))
    for table in ("pods", "deployments", "daemonsets", "statefulsets", "replicasets", "jobs", "cronjobs"):
        assert f"FROM k8s_{table}\n" in pod_specs + "\n", table
    for field in ("'initContainers'", "'containers'", "'ephemeralContainers'"):
        assert field in containers


# --------------------------------------------------------------------------- on real data


def test_every_check_reports_exactly_the_objects_that_violate_it(
    hardened: Hardened, json_run: dict[str, Any]
) -> None:
    assert {v for c in hardened.cases for v in c.violates} <= CHECKS.keys()
    with psycopg.connect(hardened.dsn) as conn:
        tables = table_names(conn)
    found = _stored_failures(hardened.dsn, json_run["run_id"])
    label = {c.uid: f"{c.kind} {c.namespace}/{c.name}" for c in hardened.cases}
    wrong = {}
    for check in CHECKS.values():
        expected = hardened.expected(check.id)
        assert expected, f"{check.id}: the data set has no object that violates it"
        assert not check.tables - tables, f"{check.id} reads tables no sync created"
        mine = found[check.id] & hardened.uids
        if mine != expected:
            wrong[check.id] = {
                "missed": sorted(label[u] for u in expected - mine),
                "extra": sorted(label[u] for u in mine - expected),
            }
    assert not wrong, json.dumps(wrong, indent=1)


def test_bootstrap_rbac_objects_are_not_reported(hardened: Hardened, json_run: dict[str, Any]) -> None:
    """cluster-admin has '*' everywhere and is bound to system:masters: the API server's
    own roles and bindings (labelled rbac-defaults) are not findings."""
    names = {
        (o["kind"], o["name"])
        for c in json_run["checks"]
        if c["id"] in ("clusterrole-wildcard", "cluster-admin-bindings", "secrets-read-access")
        for o in c["results"][EAST]["objects"]
    }
    assert names and ("ClusterRole", "cluster-admin") not in names
    assert ("ClusterRoleBinding", "cluster-admin") not in names


def test_check_files_run_in_psql_on_their_own(hardened: Hardened, json_run: dict[str, Any]) -> None:
    with psycopg.connect(hardened.dsn) as conn:
        tables = table_names(conn)
    runnable = [c for c in CHECKS.values() if c.tables <= tables]
    psql = pg_bin() / "psql"
    argv = [str(psql), "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1", "-d", hardened.dsn.split("?")[0]]
    for check in runnable:
        argv += ["-f", str(SQL_DIR / f"{check.id}.sql")]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    header = ",".join(RESULT_COLUMNS)
    blocks = out.stdout.split(header + "\n")[1:]
    assert len(blocks) == len(runnable)
    stored = _stored_failures(hardened.dsn, json_run["run_id"])
    for check, block in zip(runnable, blocks, strict=True):
        uids = {row[4] for row in csv.reader(io.StringIO(block))}
        assert uids == stored[check.id], check.id


def test_the_pod_security_admission_of_the_api_server_agrees_with_the_pss_checks(hardened: Hardened) -> None:
    """Each pod of the data set, offered (dry run) to namespaces enforcing baseline and
    restricted: the API server refuses it exactly when a check of that profile reports it."""
    admin = hardened.admin
    namespaces = {}
    for level in ("baseline", "restricted"):
        name = unique(f"hard-pss-{level}")
        admin.create(collection("Namespace", None), {"metadata": {"name": name, "labels": {ENFORCE: level}}})
        namespaces[level] = name
    disagreements = []
    for case in (c for c in POD_CASES if c.kind == "Pod"):
        spec = good_pod_spec()
        case.mutate(spec)
        for level, ns in namespaces.items():
            flagged = any(f"pss-{level}" in CHECKS[v].frameworks for v in case.violates)
            try:
                admin.create(
                    collection("Pod", ns) + "?dryRun=All",
                    pod_manifest("Pod", case.name, spec, case.annotations),
                )
                refused = False
            except RuntimeError as exc:
                assert "violates PodSecurity" in str(exc), exc
                refused = True
            if refused != flagged:
                disagreements.append((case.name, level, "refused" if refused else "admitted"))
    assert not disagreements


def test_summary_is_per_check_and_context_and_the_exit_code_follows_the_threshold(hardened: Hardened) -> None:
    table = k8s_watcher("check", "--dsn", hardened.dsn, "--severity-threshold", "critical")
    assert table.returncode == 1, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "SEVERITY", EAST, WEST]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows.keys() == CHECKS.keys()
    privileged = len(hardened.expected("privileged-containers"))
    assert rows["privileged-containers"] == ["high", "fail", f"({privileged})", "pass"]
    assert rows["anonymous-bindings"] == ["critical", "fail", "(1)", "pass"]
    assert "at or above critical" in table.stderr

    # Only the restricted profile's checks, none of them critical: nothing at or above it fails.
    restricted = k8s_watcher(
        "check", "--dsn", hardened.dsn, "--framework", "pss-restricted", "--severity-threshold", "critical"
    )
    assert restricted.returncode == 0, restricted.stderr
    assert {line.split()[0] for line in restricted.stdout.splitlines()[1:]} == {
        c.id for c in load_checks("pss-restricted")
    }
    high = k8s_watcher(
        "check", "--dsn", hardened.dsn, "--framework", "pss-restricted", "--severity-threshold", "high"
    )
    assert high.returncode == 1


def test_results_are_stored_per_object_and_per_passing_check_and_context(
    hardened: Hardened, json_run: dict[str, Any]
) -> None:
    with psycopg.connect(hardened.dsn) as conn:
        rows = conn.execute(
            "SELECT check_id, status, context_name, kind, namespace, name, severity, run_at FROM k8s_policy_results "
            "WHERE run_id = %s",
            (json_run["run_id"],),
        ).fetchall()
    by_status: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in rows:
        by_status[row[1]].append(row)
    assert ("privileged-containers", "pass", WEST) in {r[:3] for r in by_status["pass"]}
    assert ("privileged-containers", "fail", EAST) not in {r[:3] for r in by_status["pass"]}
    privileged = {(r[3], r[4], r[5]) for r in by_status["fail"] if r[0] == "privileged-containers"}
    bad = hardened.namespaces["bad"]
    assert privileged == {
        ("Pod", bad, "privileged"),
        ("Deployment", bad, "deploy-privileged"),
        ("Pod", bad, "ephemeral"),
    }
    assert {r[6] for r in rows if r[0] == "privileged-containers"} == {"high"}
    assert len({r[7] for r in rows}) == 1  # one run, one time
    # Every check has a verdict in every context: failures, or one pass/skipped row.
    verdicts = {(r[0], r[2]) for r in rows}
    assert verdicts == {(c, ctx) for c in CHECKS for ctx in (EAST, WEST)}


def test_json_and_csv_list_the_offending_objects(hardened: Hardened, json_run: dict[str, Any]) -> None:
    host_pid = next(c for c in json_run["checks"] if c["id"] == "host-pid")
    assert host_pid["severity"] == "high" and "pss-baseline" in host_pid["frameworks"]
    east = host_pid["results"][EAST]
    assert east["status"] == "fail" and east["failed"] == 2
    assert sorted((o["kind"], o["name"]) for o in east["objects"]) == [
        ("CronJob", "cron-host-pid"),
        ("Pod", "host-pid"),
    ]
    assert host_pid["results"][WEST] == {"status": "pass", "failed": 0, "objects": []}

    out = k8s_watcher("check", "--dsn", hardened.dsn, "--format", "csv", "--severity-threshold", "critical")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    host_pid_rows = [r for r in rows if r["check_id"] == "host-pid"]
    assert sorted((r["status"], r["context_name"], r["name"]) for r in host_pid_rows) == [
        ("fail", EAST, "cron-host-pid"), ("fail", EAST, "host-pid"), ("pass", WEST, ""),
    ]  # fmt: skip


def test_checks_over_tables_that_were_not_synced_are_skipped(
    hardened: Hardened, pg_server: Postgres, tmp_path: Path
) -> None:
    dsn = new_dsn(pg_server)
    spec = {
        "kubeconfig": str(hardened.kubeconfig),
        "contexts": [EAST],
        "cache_path": str(tmp_path / "cache.db"),
    }
    assert sync(tmp_path, dsn, spec, tables=["k8s_namespaces"]).returncode == 0
    out = k8s_watcher("check", "--dsn", dsn, "--format", "json", "--severity-threshold", "critical")
    assert out.returncode == 0, out.stderr
    results = {c["id"]: c for c in json.loads(out.stdout)["checks"]}
    assert results["namespace-without-network-policy"]["results"][EAST]["status"] == "skipped"
    assert results["namespace-without-network-policy"]["missing_tables"] == ["k8s_networkpolicies"]
    enforcement = results["namespace-without-pod-security-enforcement"]["results"][EAST]
    assert enforcement["status"] == "fail"
    assert hardened.namespaces["bad"] in {o["name"] for o in enforcement["objects"]}
    assert hardened.namespaces["good"] not in {o["name"] for o in enforcement["objects"]}


def test_an_unreachable_database_is_an_error_not_a_verdict() -> None:
    out = k8s_watcher("check", "--dsn", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    assert out.returncode == 2
    assert "k8s-watcher check:" in out.stderr
