"""The official CloudQuery k8s plugin's schema as views (``k8s-watcher compat install``):
its tables, its policies and its dashboards on this project's data.

One test bed of two contexts, seeded with objects that pass and fail each official
policy, is synced by the official plugin v6.2.4 into one database and by k8s-watcher
(then ``k8s-watcher compat install``) into another, both through the real CLI and
destination. Everything is compared between the two databases.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.peer import environment, official_source_config
from testbed.cluster import ControlPlanes, KubeHttp, control_planes, crd_manifest
from testbed.cq import destination_config, run_cloudquery
from testbed.postgres import Postgres, pg_bin
from tests.conftest import new_dsn, sync
from tests.hardening import good_container
from tests.test_dashboards import expand_sql
from tests.test_kinds import _collection, _kinds
from watcher.compat import generate, views
from watcher.compat.install import CompatError, install, uninstall

TARBALL = generate.DEFAULT_TARBALL
CONTEXTS = ["alpha", "beta"]
EXECUTION_TIME = "2026-12-01 00:00:00.000000"
LABELS = {"app": "compat"}

#: Columns the views cannot reproduce from this project's data (NULL there): the
#: justified differences of docs/compat.md, besides the ``_cq_*`` columns.
NOT_KEPT = generate.NOT_KEPT


# --------------------------------------------------------------------------- the test bed


def _pod_spec(good: bool) -> dict[str, Any]:
    if good:
        container = good_container()
        container["securityContext"]["runAsNonRoot"] = True
        return {"automountServiceAccountToken": False, "containers": [container]}
    return {
        "hostNetwork": True,
        "hostPID": True,
        "hostIPC": True,
        "automountServiceAccountToken": True,
        "containers": [
            {
                "name": "app",
                "image": "registry.example/app:1",
                "securityContext": {"privileged": True, "allowPrivilegeEscalation": True},
            }
        ],
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
    }


def _template(good: bool) -> dict[str, Any]:
    return {"metadata": {"labels": LABELS}, "spec": _pod_spec(good)}


def seed(admin: KubeHttp) -> None:
    """Objects that pass (``compat-good``) and fail (``compat-bad``) each policy, and a
    few more kinds so that the views' columns see values."""
    for ns in ("compat-good", "compat-bad"):
        admin.create("/api/v1/namespaces", {"metadata": {"name": ns, "labels": LABELS}})
    good = "/api/v1/namespaces/compat-good"
    quantities = {"cpu": "100m", "memory": "64Mi"}
    admin.create(f"{good}/limitranges", {"metadata": {"name": "defaults"}, "spec": {"limits": [
        {"type": "Container", "default": quantities, "defaultRequest": quantities}]}})  # fmt: skip
    admin.create(f"{good}/resourcequotas", {"metadata": {"name": "quota"}, "spec": {"hard": {
        "limits.cpu": "2", "limits.memory": "1Gi", "requests.cpu": "1", "requests.memory": "512Mi"}}})  # fmt: skip
    admin.create(
        "/apis/networking.k8s.io/v1/namespaces/compat-good/networkpolicies",
        {"metadata": {"name": "deny-all"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}},
    )
    for ns, ok in (("compat-good", True), ("compat-bad", False)):
        core, apps = f"/api/v1/namespaces/{ns}", f"/apis/apps/v1/namespaces/{ns}"
        meta = {"name": f"app-{ns}", "labels": LABELS}
        selector = {"matchLabels": LABELS}
        admin.create(f"{core}/pods", {"metadata": meta, "spec": _pod_spec(ok)})
        admin.create(f"{core}/serviceaccounts", {"metadata": meta, "automountServiceAccountToken": not ok,
            "secrets": [{"name": "token"}], "imagePullSecrets": [{"name": "registry"}]})  # fmt: skip
        for kind in ("daemonsets", "deployments", "replicasets"):
            admin.create(
                f"{apps}/{kind}",
                {"metadata": meta, "spec": {"selector": selector, "template": _template(ok)}},
            )
        job_template = _template(ok)
        job_template["spec"]["restartPolicy"] = "Never"
        admin.create(
            f"/apis/batch/v1/namespaces/{ns}/jobs", {"metadata": meta, "spec": {"template": job_template}}
        )
        admin.create(f"/apis/batch/v1/namespaces/{ns}/cronjobs", {"metadata": meta, "spec": {
            "schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": job_template}}}})  # fmt: skip
        admin.create(f"{apps}/statefulsets", {"metadata": meta, "spec": {
            "selector": selector, "serviceName": meta["name"], "template": _template(ok)}})  # fmt: skip
        admin.create(f"{core}/services", {"metadata": meta, "spec": {
            "selector": LABELS, "ports": [{"port": 80}], **({} if ok else {"clusterIP": "None"})}})  # fmt: skip
        admin.create(f"{core}/configmaps", {"metadata": meta, "data": {"k": "v"}, "immutable": ok,
            "binaryData": {"b": base64.b64encode(b"\x00\x01").decode()}})  # fmt: skip
        admin.create(f"{core}/secrets", {"metadata": meta, "stringData": {"password": "s"}})
        admin.create(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", {"metadata": meta, "spec": {
            "minAvailable": 1 if ok else "50%", "selector": selector}})  # fmt: skip
        admin.create(f"/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers", {"metadata": meta, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"]},
            "minReplicas": 1, "maxReplicas": 3, "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}})  # fmt: skip
        admin.create(f"/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses", {"metadata": meta, "spec": {
            "rules": [{"host": "app.example", "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
                "service": {"name": meta["name"], "port": {"number": 80}}}}]}}]}})  # fmt: skip
        admin.create(f"{core}/persistentvolumeclaims", {"metadata": meta, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})  # fmt: skip
        admin.create(f"/apis/events.k8s.io/v1/namespaces/{ns}/events", {
            "metadata": meta, "eventTime": "2026-11-26T00:00:00.000000Z", "reason": "Scheduled", "note": "compat",
            "type": "Normal", "action": "Binding", "reportingController": "compat", "reportingInstance": "compat-1",
            "regarding": {"kind": "Pod", "namespace": ns, "name": meta["name"]}})  # fmt: skip
    for kind in _kinds("compat"):  # one object of every other kind
        admin.create(_collection(kind.table, "compat-good"), kind.body)
    admin.create("/api/v1/nodes", {"metadata": {"name": "compat-node", "labels": LABELS}, "spec": {
        "podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "taints": [
            {"key": "dedicated", "value": "compat", "effect": "NoSchedule"}]}})  # fmt: skip
    admin.create("/apis/storage.k8s.io/v1/storageclasses", {"metadata": {"name": "compat"},
        "provisioner": "example.com/compat", "parameters": {"type": "fast"}, "allowVolumeExpansion": True,
        "mountOptions": ["ro"], "allowedTopologies": [{"matchLabelExpressions": [
            {"key": "topology.kubernetes.io/zone", "values": ["a"]}]}]})  # fmt: skip
    # A kubelet's kind of event (core/v1: source, first and last timestamps, count, related).
    admin.create("/api/v1/namespaces/compat-good/events", {"metadata": {"name": "compat-core"},
        "involvedObject": {"kind": "Pod", "namespace": "compat-good", "name": "app-compat-good"},
        "reason": "BackOff", "message": "compat", "type": "Warning", "count": 3,
        "source": {"component": "kubelet", "host": "compat-node"},
        "firstTimestamp": "2026-11-26T00:00:00Z", "lastTimestamp": "2026-11-26T00:05:00Z",
        "related": {"kind": "Node", "name": "compat-node"}})  # fmt: skip
    # Being deleted gracefully (a finalizer holds it): deletion_grace_period_seconds is set.
    held = "/api/v1/namespaces/compat-good/configmaps"
    admin.create(held, {"metadata": {"name": "held", "finalizers": ["compat.k8s-watcher.io/hold"]}})
    admin.delete(f"{held}/held")
    admin.create("/apis/discovery.k8s.io/v1/namespaces/compat-good/endpointslices", {
        "metadata": {"name": "compat", "labels": {"kubernetes.io/service-name": "app-compat-good"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.1.2.3"], "conditions": {"ready": True}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]})  # fmt: skip
    admin.create("/apis/coordination.k8s.io/v1/namespaces/compat-good/leases", {"metadata": {"name": "compat"},
        "spec": {"holderIdentity": "compat-1", "leaseDurationSeconds": 15}})  # fmt: skip
    admin.create(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        crd_manifest("compat.k8s-watcher.io", "gadgets"),
    )
    admin.create("/api/v1/persistentvolumes", {"metadata": {"name": "compat-pv"}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/data"}}})  # fmt: skip


# --------------------------------------------------------------------------- the two databases


@dataclass(frozen=True)
class Pair:
    planes: ControlPlanes
    official: str
    ours: str
    work: Path
    policies: Path


@pytest.fixture(scope="module")
def pair(pg_server: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """The seeded test bed synced by both plugins, the views installed on ours."""
    work = tmp_path_factory.mktemp("compat")
    with control_planes(CONTEXTS, workdir=work / "testbed") as planes:
        seed(planes.servers["alpha"].admin())
        assert planes.kubeconfig is not None
        official, ours = new_dsn(pg_server), new_dsn(pg_server)
        spec = {
            "kubeconfig": str(planes.kubeconfig),
            "contexts": CONTEXTS,
            "cache_path": str(work / "cache.db"),
        }
        result = sync(work / "ours", ours, spec)
        assert result.returncode == 0, result.output[-3000:]
        configs = [official_source_config(CONTEXTS), destination_config(official)]
        with environment(KUBECONFIG=str(planes.kubeconfig)):
            result = run_cloudquery(["sync"], workdir=work / "official", configs=configs)
        assert result.returncode == 0, result.output[-3000:]
        installed = k8s_watcher("compat", "install", "--dsn", ours)
        assert installed.returncode == 0, installed.stderr
        with tarfile.open(TARBALL) as tar:
            tar.extractall(work / "src", filter="data", members=[
                m for m in tar if "/plugins/source/k8s/" in m.name and ("/policies/" in m.name or "/views/" in m.name
                                                                      or "/dashboards/" in m.name)])  # fmt: skip
        (root,) = (work / "src").glob("*/*/plugins/source/k8s")
        yield Pair(planes, official, ours, work, root)


def k8s_watcher(*args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(__import__("sys").executable).parent / "k8s-watcher"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, check=False)


def psql(dsn: str, file: Path, *variables: str) -> subprocess.CompletedProcess[str]:
    argv = [str(pg_bin() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *variables, "-d", dsn.split("?")[0]]
    return subprocess.run([*argv, "-f", str(file)], capture_output=True, text=True, timeout=120, check=False)


def columns(dsn: str) -> dict[str, list[tuple[str, str]]]:
    """Table or view -> (column, type) in order, for every official table name."""
    names = [v.name for v in views()]
    out: dict[str, list[tuple[str, str]]] = {}
    with psycopg.connect(dsn) as conn:
        for table, column, type_ in conn.execute(
            "SELECT table_name, column_name, format_type(a.atttypid, a.atttypmod) FROM information_schema.columns c"
            " JOIN pg_attribute a ON a.attrelid = format('%%I.%%I', c.table_schema, c.table_name)::regclass"
            " AND a.attname = c.column_name"
            " WHERE table_schema = 'public' AND table_name = ANY(%s) ORDER BY table_name, ordinal_position",
            (names,),
        ):
            out.setdefault(table, []).append((column, type_))
    return out


def rows(dsn: str, table: str, key: str = "uid") -> dict[tuple[str, str], dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(f"SELECT * FROM {table}")
        names = [d.name for d in cur.description or []]
        return {(r["context"], r[key]): r for r in (dict(zip(names, row, strict=True)) for row in cur)}


# --------------------------------------------------------------------------- tables


def test_every_official_table_has_the_same_columns_and_types(pair: Pair) -> None:
    official, ours = columns(pair.official), columns(pair.ours)
    assert len(official) == 43
    assert ours == official


def test_every_official_table_has_the_same_rows_for_the_same_uids(pair: Pair) -> None:
    differences: list[str] = []
    compared = Counter[str]()
    for view in views():
        table = view.name
        theirs, mine = rows(pair.official, table), rows(pair.ours, table)
        if table == "k8s_core_component_statuses":
            # Served without uids: the official table keeps one row of all contexts' under
            # the empty uid, its primary key; the view has every component of every
            # context (uid '' too). Matched by name.
            assert {uid for _, uid in theirs} == {""} and len(theirs) == 1, theirs
            theirs, mine = rows(pair.official, table, "name"), rows(pair.ours, table, "name")
            components = {"etcd-0", "scheduler", "controller-manager"}
            assert set(mine) == {(ctx, name) for ctx in CONTEXTS for name in components}, set(mine)
            assert set(theirs) <= set(mine)
        else:
            assert set(mine) == set(theirs), f"{table}: uids differ"
        skip = NOT_KEPT.get(table, set())
        for key, row in theirs.items():
            other = mine[key]
            if row["resource_version"] != other["resource_version"]:
                # Written between the two syncs (a kube-apiserver identity Lease, renewed every 10 s).
                assert table == "k8s_coordination_leases", (table, key)
                continue
            compared[table] += 1
            for column, value in row.items():
                if column in skip:
                    assert other[column] is None, (table, column)
                if column.startswith("_cq_") or column in skip:
                    continue
                if other[column] != value:
                    differences.append(f"{table}.{column} {key}: official {value!r} / ours {other[column]!r}")
    print(f"rows compared: {sum(compared.values())} in {len(compared)} tables: {dict(compared)}")
    assert not differences, "\n".join(differences[:40]) + f"\n({len(differences)} in all)"
    assert len(compared) == 43  # every table has rows of both


#: Columns the views left NULL before k8s-watcher's tables kept them: the seed gives
#: each a value, so that the comparison above compares values, not NULLs.
ONCE_NULL = {
    "k8s_core_config_maps": ("data", "binary_data", "immutable", "deletion_grace_period_seconds"),
    "k8s_core_service_accounts": ("secrets", "image_pull_secrets"),
    "k8s_storage_storage_classes": ("parameters", "mount_options", "allow_volume_expansion", "allowed_topologies"),
    "k8s_core_events": ("source", "first_timestamp", "last_timestamp", "count", "action", "related",
                        "reporting_instance"),
}  # fmt: skip


def test_the_columns_once_null_have_values_here(pair: Pair) -> None:
    empty = "('{}', '[]', '', '0001-01-01 00:00:00')"
    with psycopg.connect(pair.ours) as conn:
        for table, names in ONCE_NULL.items():
            for column in names:
                (count,) = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL AND {column}::text NOT IN {empty}"
                ).fetchone() or (0,)
                assert count, (table, column)
        (healthy,) = conn.execute(
            "SELECT count(*) FROM k8s_core_component_statuses WHERE name = 'etcd-0'"
            ' AND conditions @> \'[{"type": "Healthy", "status": "True"}]\''
        ).fetchone() or (0,)
    assert healthy == len(CONTEXTS)


# --------------------------------------------------------------------------- policies and dashboards


@pytest.fixture(scope="module")
def policy_results(pair: Pair) -> dict[str, list[tuple[Any, ...]]]:
    """The official policy.sql run by psql on both databases, with one execution time."""
    out = {}
    for name, dsn in (("official", pair.official), ("ours", pair.ours)):
        ran = psql(dsn, pair.policies / "policies/policy.sql", "-v", f"execution_time={EXECUTION_TIME}")
        assert ran.returncode == 0, ran.stderr
        with psycopg.connect(dsn) as conn:
            out[name] = conn.execute(
                "SELECT check_id, context, namespace, resource_id, resource_name, status FROM k8s_policy_results"
                " ORDER BY 1, 2, 3, 4"
            ).fetchall()
    return out


def test_the_official_policies_give_the_same_results(
    pair: Pair, policy_results: dict[str, list[tuple[Any, ...]]]
) -> None:
    official, ours = policy_results["official"], policy_results["ours"]
    checks = {r[0] for r in official}
    statuses = Counter((r[0], r[5]) for r in official)
    print(f"policy results: {len(official)} rows, {len(checks)} checks, {Counter(r[5] for r in official)}")
    assert checks == policy_check_ids(pair)
    # The test bed has objects that pass and objects that fail each check.
    one_sided = sorted(c for c in checks if not (statuses[(c, "pass")] and statuses[(c, "fail")]))
    print(f"checks without both a pass and a fail: {one_sided}")
    # These two read the LimitRange's "default_request" key (it is "defaultRequest"):
    # they fail on every namespace, on the official plugin's tables too.
    assert one_sided == [
        '"namespace_limit_range_default_cpu_request"',
        '"namespace_limit_range_default_memory_request"',
    ]
    assert Counter(ours) == Counter(official)


def policy_check_ids(pair: Pair) -> set[str]:
    """The check ids policy.sql sets (62 queries, 56 ids: a few ids are used twice)."""
    files = (pair.policies / "policies/nsa_cisa_v1").glob("*.sql")
    return {m for f in files for m in re.findall(r'^\\set check_id (".*")$', f.read_text(), re.M)}


def _dashboard_queries(pair: Pair) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def walk(name: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key in ("rawSql", "query") and isinstance(value, str) and value.strip():
                    found.append((name, value))
                else:
                    walk(name, value)
        elif isinstance(obj, list):
            for item in obj:
                walk(name, item)

    for path in sorted((pair.policies / "dashboards/grafana").glob("*.json")):
        walk(path.name, json.loads(path.read_text()))
    return found


#: Values that differ by nature between two syncs: random row ids and sync times.
_PER_SYNC = {"_cq_id", "_cq_sync_time", "time"}


def test_every_dashboard_query_gives_the_same_result(
    pair: Pair, policy_results: dict[str, list[tuple[Any, ...]]]
) -> None:
    for dsn in (pair.official, pair.ours):
        ran = psql(dsn, pair.policies / "views/resource.sql")
        assert ran.returncode == 0, ran.stderr
    with psycopg.connect(pair.official) as conn:
        tables = [r[0] for r in conn.execute("SELECT DISTINCT _cq_table FROM k8s_resources")]
    variables = {
        "contexts": CONTEXTS, "cq_tables": tables, "framework": ["cis_v1.2.0"], "status": ["pass", "fail"],
    }  # fmt: skip
    queries = _dashboard_queries(pair)
    assert len(queries) == 16  # 10 panels and 6 variables
    with psycopg.connect(pair.official) as official, psycopg.connect(pair.ours) as ours:
        # The one justified difference that reaches k8s_resources: the official plugin keeps
        # one component status of all contexts (they have no uid, its key), the views every
        # one of each context; both are left out, in transactions rolled back.
        official.execute("DELETE FROM k8s_core_component_statuses")
        ours.execute("DELETE FROM k8s_componentstatuses")
        for dashboard, query in queries:
            sql = expand_sql(query, variables)
            results = []
            for conn in (official, ours):
                cur = conn.execute(sql)
                names = [d.name for d in cur.description or []]
                results.append(Counter(
                    tuple(v for n, v in zip(names, row, strict=True) if n not in _PER_SYNC) for row in cur))  # fmt: skip
            assert results[0] and results[1] == results[0], (dashboard, sql)
        official.rollback()
        ours.rollback()


# --------------------------------------------------------------------------- upgrades


def test_an_upgrade_with_a_new_column_breaks_nothing(pair: Pair, tmp_path: Path) -> None:
    """Installed, the project's table gains a column and a view a new column in the middle
    (CREATE OR REPLACE VIEW would refuse it), installed again: the views, the version and
    a user's view on them (the official k8s_resources) are all there."""
    dsn = new_dsn_like(pair.ours)
    install(dsn)
    assert psql(dsn, pair.policies / "views/resource.sql").returncode == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE k8s_pods ADD COLUMN restart_policy text")
        conn.execute("GRANT SELECT ON k8s_core_pods TO PUBLIC")
        before = conn.execute("SELECT count(*) FROM k8s_resources").fetchone()
    upgraded = tmp_path / "sql"
    upgraded.mkdir()
    for view in views():
        select = view.select
        if view.name == "k8s_core_pods":
            select = select.replace("SELECT\n", "SELECT\n  restart_policy AS upgraded_column,\n", 1)
        (upgraded / f"{view.name}.sql").write_text(select)
    first = install(dsn)
    second = install(dsn, sql_dir=upgraded)
    assert second.previous == first.version != second.version
    assert second.dependents == ("public.k8s_resources",)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM k8s_resources").fetchone() == before
        assert conn.execute("SELECT count(upgraded_column) FROM k8s_core_pods").fetchone() == (0,)
        assert conn.execute("SELECT has_table_privilege('public', 'k8s_core_pods', 'SELECT')").fetchone() == (
            True,
        )
        assert conn.execute("SELECT version FROM k8s_watcher_compat").fetchone() == (second.version,)
        conn.execute("SET enable_seqscan = off")  # a few rows: the planner would rather scan
        plan = conn.execute("EXPLAIN SELECT * FROM k8s_core_pods WHERE uid = 'x'").fetchall()
        assert "k8s_pods_compat_uid" in str(plan)  # the official key's lookups use an index


def new_dsn_like(dsn: str, suffix: str = "upgrade") -> str:
    """A copy of ``dsn``'s database (CREATE DATABASE ... TEMPLATE)."""
    name = dsn.split("/")[-1].split("?")[0]
    copy = f"{name}_{suffix}"
    server = dsn.replace(f"/{name}?", "/postgres?")
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {copy} TEMPLATE {name}")
    return dsn.replace(f"/{name}?", f"/{copy}?")


def test_install_refuses_a_schema_holding_the_official_tables(pair: Pair) -> None:
    with pytest.raises(CompatError, match="official plugin's"):
        install(pair.official)
    cli = k8s_watcher("compat", "install", "--dsn", pair.official)
    assert cli.returncode == 1 and "another schema (--schema)" in cli.stderr


def test_the_committed_view_sql_is_what_the_generator_writes(tmp_path: Path) -> None:
    """From the plugin's docs and the k8s.io/api v0.29.1 structs (python -m watcher.compat.generate)."""
    assert generate.generate(tmp_path) == 43
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {v.name + ".sql": v.select for v in views()}


def test_uninstall_clears_the_way_for_a_forced_migration(pair: Pair) -> None:
    """The destination's forced migration is a plain DROP TABLE, which the views block."""
    dsn = new_dsn_like(pair.ours, "forced")
    install(dsn)
    assert psql(dsn, pair.policies / "views/resource.sql").returncode == 0
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.DependentObjectsStillExist):
        conn.execute("DROP TABLE k8s_pods")
    refused = k8s_watcher("compat", "uninstall", "--dsn", dsn)
    assert refused.returncode == 1 and "public.k8s_resources" in refused.stderr
    dropped = k8s_watcher("compat", "uninstall", "--dsn", dsn, "--cascade")
    assert dropped.returncode == 0, dropped.stderr
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE k8s_pods")
        left = ", ".join(
            f"to_regclass('{name}')"
            for name in ("k8s_core_pods", "k8s_watcher_compat", "k8s_nodes_compat_uid")
        )
        assert conn.execute(f"SELECT {left}").fetchone() == (None, None, None)


def test_views_in_a_schema_of_their_own_beside_the_official_tables(pair: Pair) -> None:
    """The official plugin's old tables stay in public; the views go to another schema,
    which a session puts first in its search_path to run the same SQL."""
    dsn = new_dsn_like(pair.ours, "schema")
    uninstall(dsn, cascade=True)  # the pair's install (and k8s_resources, when made)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE k8s_core_pods (uid text PRIMARY KEY)")  # an official table left behind
    with pytest.raises(CompatError):
        install(dsn)
    done = install(dsn, schema="cq")
    assert done.views == 43
    with psycopg.connect(dsn) as conn:
        conn.execute("SET search_path = cq, public")
        (pods,) = conn.execute("SELECT count(*) FROM k8s_core_pods WHERE spec_host_network").fetchone() or (
            0,
        )
    assert pods == 1  # the bad pod of the seed


def test_an_upgrade_a_users_view_does_not_fit_changes_nothing(pair: Pair, tmp_path: Path) -> None:
    """A view of the user's reads a column the new views no longer have: the install
    fails, names it, and leaves the old views, the view and the version as they were."""
    dsn = new_dsn_like(pair.ours, "misfit")
    before = install(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE VIEW restart_policies AS SELECT uid, spec_restart_policy FROM k8s_core_pods")
    for view in views():
        select = re.sub(r"^.* AS spec_restart_policy,\n", "", view.select, flags=re.M)
        (tmp_path / f"{view.name}.sql").write_text(select)
    with pytest.raises(CompatError, match=r"public\.restart_policies"):
        install(dsn, sql_dir=tmp_path)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM restart_policies").fetchone() == (2,)
        assert conn.execute("SELECT version FROM k8s_watcher_compat").fetchone() == (before.version,)
