"""What the real CloudQuery PostgreSQL destination (v8.16.0) does with this plugin's
output: the column types it creates, migrations in safe and forced mode, the three
write modes, and faults at the destination (a wrong connection string, PostgreSQL
stopped in the middle of a sync)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import ControlPlanes, free_port
from testbed.cq import CqResult
from testbed.postgres import postgres_server
from tests.conftest import (
    CMS,
    assert_pg_equals_api,
    cache_matches,
    configmap,
    eventually,
    namespace,
    sync,
    unique,
)


def _spec(planes: ControlPlanes, cache: Path, **extra: Any) -> dict[str, Any]:
    return {"kubeconfig": str(planes.kubeconfig), "contexts": ["dev"], "cache_path": str(cache), **extra}


def _columns(dsn: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT column_name, CASE WHEN data_type = 'ARRAY' THEN udt_name ELSE data_type END "
            "FROM information_schema.columns WHERE table_name = %s",
            (table,),
        ).fetchall()
    return dict(rows)


def _primary_key(dsn: str, table: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY a.attname",
            (table,),
        ).fetchall()
    return [r[0] for r in rows]


def test_destination_creates_typed_columns_and_its_own_bookkeeping_columns(
    planes: ControlPlanes, dsn: str, tmp_path: Path
) -> None:
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique("types"))
    admin.create(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "metadata": {"name": "p", "finalizers": ["x/y"]},
            "spec": {"containers": [{"name": "c", "image": "i:1"}]},
        },
    )
    spec = _spec(planes, tmp_path / "c.db", tables=["k8s_clusters", "k8s_pods"])
    result = sync(tmp_path, dsn, spec)
    assert result.returncode == 0, result.output[-3000:]
    pods = _columns(dsn, "k8s_pods")
    expected_pods = {
        "context_name": "text",
        "uid": "uuid",
        "name": "text",
        "labels": "jsonb",
        "spec": "jsonb",
        "status": "jsonb",
        "finalizers": "_text",  # text[]
        "images": "_text",
        "generation": "bigint",
        "restart_count": "bigint",
        "ready": "boolean",
        "created_at": "timestamp without time zone",
        "start_time": "timestamp without time zone",
        "_cq_sync_time": "timestamp without time zone",
        "_cq_source_name": "text",
    }
    assert {k: pods.get(k) for k in expected_pods} == expected_pods
    clusters = _columns(dsn, "k8s_clusters")
    expected_clusters = {
        "context_name": "text",
        "uid": "uuid",
        "kubernetes_version": "text",
        "node_count": "bigint",
        "insecure_skip_verify": "boolean",
        "informer_states": "jsonb",
        "synced_at": "timestamp without time zone",
        "_cq_sync_time": "timestamp without time zone",
        "_cq_source_name": "text",
    }
    assert {k: clusters.get(k) for k in expected_clusters} == expected_clusters
    assert _primary_key(dsn, "k8s_pods") == ["context_name", "uid"]
    with psycopg.connect(dsn) as conn:
        pod = conn.execute(
            "SELECT finalizers, images, labels, created_at IS NOT NULL, _cq_source_name, _cq_sync_time IS NOT NULL "
            "FROM k8s_pods WHERE namespace = %s",
            (ns,),
        ).fetchall()
    assert pod == [(["x/y"], ["i:1"], None, True, "k8s", True)]


def test_safe_migration_adds_a_missing_column_and_forced_migration_repairs_a_changed_type(
    planes: ControlPlanes, dsn: str, tmp_path: Path
) -> None:
    ns = namespace(planes.servers["dev"].admin(), unique("migrate"))
    spec = _spec(planes, tmp_path / "c.db", tables=["k8s_namespaces"], max_staleness="1ms")
    assert sync(tmp_path, dsn, spec).returncode == 0
    # The table as an older k8s-watcher created it: without the typed "phase" column.
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE k8s_namespaces DROP COLUMN phase")
    added = sync(tmp_path, dsn, spec)
    assert added.returncode == 0, added.output[-3000:]
    with psycopg.connect(dsn) as conn:
        phase = conn.execute("SELECT phase FROM k8s_namespaces WHERE name = %s", (ns,)).fetchone()
    assert phase == ("Active",)

    # A column whose type changed cannot be migrated safely: the sync says so ...
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE k8s_namespaces ALTER COLUMN phase TYPE integer USING NULL")
    refused = sync(tmp_path, dsn, spec)
    assert refused.returncode != 0
    assert "migrate_mode: forced" in refused.output, refused.output[-3000:]
    # ... and migrate_mode: forced recreates the table with the plugin's schema.
    forced = sync(tmp_path, dsn, spec, migrate_mode="forced")
    assert forced.returncode == 0, forced.output[-3000:]
    assert _columns(dsn, "k8s_namespaces")["phase"] == "text"
    with psycopg.connect(dsn) as conn:
        phase = conn.execute("SELECT phase FROM k8s_namespaces WHERE name = %s", (ns,)).fetchone()
    assert phase == ("Active",)


def _configmap_rows(dsn: str, ns: str) -> list[tuple[str, Any]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT name, _cq_sync_time FROM k8s_configmaps WHERE namespace = %s ORDER BY 1, 2", (ns,)
        ).fetchall()


def test_overwrite_delete_stale_removes_rows_of_deleted_objects(
    planes: ControlPlanes, dsn: str, tmp_path: Path
) -> None:
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique("stale"))
    for name in ("keep", "gone"):
        configmap(admin, ns, name)
    # No daemon: a tiny max_staleness makes every sync relist into the cache first.
    spec = _spec(planes, tmp_path / "c.db", tables=["k8s_configmaps"], max_staleness="1ms")
    assert sync(tmp_path, dsn, spec).returncode == 0
    assert [n for n, _ in _configmap_rows(dsn, ns)] == ["gone", "keep"]
    admin.delete(f"/api/v1/namespaces/{ns}/configmaps/gone")
    second = sync(tmp_path, dsn, spec)
    assert second.returncode == 0, second.output[-3000:]
    assert [n for n, _ in _configmap_rows(dsn, ns)] == ["keep"]


def test_append_mode_keeps_every_sync_s_rows(planes: ControlPlanes, dsn: str, tmp_path: Path) -> None:
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique("append"))
    configmap(admin, ns, "a")
    spec = _spec(planes, tmp_path / "c.db", tables=["k8s_configmaps"])
    for _ in range(2):
        result = sync(tmp_path, dsn, spec, write_mode="append")
        assert result.returncode == 0, result.output[-3000:]
    rows = _configmap_rows(dsn, ns)
    assert [n for n, _ in rows] == ["a", "a"]
    assert rows[0][1] < rows[1][1]  # one row per sync, told apart by _cq_sync_time


def test_wrong_connection_string_fails_the_sync_with_the_destination_s_message(
    planes: ControlPlanes, tmp_path: Path
) -> None:
    dead = f"postgresql://nobody@127.0.0.1:{free_port()}/nowhere?sslmode=disable&connect_timeout=3"
    cache = tmp_path / "c.db"
    result = sync(tmp_path, dead, _spec(planes, cache, tables=["k8s_namespaces"]))
    assert result.returncode != 0
    assert "connect" in result.output and "refused" in result.output, result.output[-3000:]


def _wait_for_blocked_writer(dsn: str) -> None:
    def blocked() -> bool:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE %s",
                ("%k8s_configmaps%",),
            ).fetchone()
        return bool(row and row[0])

    eventually(blocked, timeout=60, what="the destination's write to wait on the lock")


@pytest.mark.slow
def test_postgresql_stopped_mid_sync_fails_that_sync_and_the_next_one_is_complete(
    planes: ControlPlanes, tmp_path: Path, start_daemon: Any
) -> None:
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique("pgdown"))
    for i in range(5):
        configmap(admin, ns, f"cm{i}")
    cache = tmp_path / "daemon" / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "dev")
    source: dict[str, Any] = {"registry": "grpc", "path": f"127.0.0.1:{daemon.grpc_port}"}
    with postgres_server() as pg:
        assert sync(tmp_path, pg.dsn, {}, **source).returncode == 0
        configmap(admin, ns, "after-first")
        eventually(lambda: cache_matches(cache, "dev", admin, CMS), what="cache caught up")
        # Hold a lock that the destination's next write to k8s_configmaps waits on: the
        # sync is then provably in its middle when PostgreSQL goes away.
        locker = psycopg.connect(pg.dsn)
        locker.execute("LOCK TABLE k8s_configmaps IN ACCESS EXCLUSIVE MODE")
        outcome: list[CqResult] = []
        runner = threading.Thread(target=lambda: outcome.append(sync(tmp_path, pg.dsn, {}, **source)))
        runner.start()
        _wait_for_blocked_writer(pg.dsn)
        pg.stop()
        runner.join(300)
        locker.close()
        assert outcome and outcome[0].returncode != 0
        # The CLI exits with the destination's own error (pgx lost its connection).
        assert "exiting with error" in outcome[0].output
        assert "failed to execute batch" in outcome[0].output, outcome[0].output[-3000:]

        # The daemon and its cache did not notice: still healthy and exact.
        assert daemon.proc.poll() is None
        assert daemon.http("/healthz")[0] == 200
        assert cache_matches(cache, "dev", admin, CMS)

        pg.start()
        configmap(admin, ns, "while-pg-was-down")
        eventually(lambda: cache_matches(cache, "dev", admin, CMS), what="cache caught up")
        time.sleep(0.5)
        again = sync(tmp_path, pg.dsn, {}, **source)
        assert again.returncode == 0, again.output[-3000:]
        assert_pg_equals_api(pg.dsn, planes, ["dev"])
        with psycopg.connect(pg.dsn) as conn:
            names = {
                r[0] for r in conn.execute("SELECT name FROM k8s_configmaps WHERE namespace = %s", (ns,))
            }
        assert names == {f"cm{i}" for i in range(5)} | {"after-first", "while-pg-was-down"}
