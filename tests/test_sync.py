"""End to end: the real CloudQuery CLI runs the plugin (registry local and grpc) into a
real PostgreSQL server through the real CloudQuery PostgreSQL destination, against the
real API servers."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import KUBE_VERSION, ControlPlanes
from testbed.cq import CqResult, run_cloudquery, source_config
from tests.conftest import (
    PODS,
    assert_pg_equals_api,
    cached,
    configmap,
    eventually,
    kubeconfig_with,
    namespace,
    pg_tables,
    sync,
    unique,
    unreachable_cluster,
)
from watcher import state
from watcher.cursor import parse_cursor


def synced_resources(result: CqResult) -> int:
    """Rows the CLI says it received from the source (its sync summary)."""
    match = re.search(r'"resources":(\d+)', result.output)
    assert match, result.output[-2000:]
    return int(match.group(1))


def watcher_requests(planes: ControlPlanes, since: float, verbs: set[str]) -> list[str]:
    out = []
    for server in planes.servers.values():
        for e in server.audit_events():
            if not e.get("userAgent", "").startswith("k8s-watcher/"):
                continue
            received = datetime.fromisoformat(
                e["requestReceivedTimestamp"].replace("Z", "+00:00")
            ).timestamp()
            if received >= since and e["verb"] in verbs:
                out.append(f"{server.name} {e['verb']} {e['requestURI']}")
    return out


def _populate(planes: ControlPlanes, contexts: list[str]) -> str:
    ns = unique("sync")
    for ctx in contexts:
        admin = planes.servers[ctx].admin()
        namespace(admin, ns)
        for i in range(3):
            admin.create(
                f"/api/v1/namespaces/{ns}/pods",
                {"metadata": {"name": f"p{i}"}, "spec": {"containers": [{"name": "c", "image": f"img:{i}"}]}},
            )
            configmap(admin, ns, f"cm{i}", k=str(i))
        admin.create(
            f"/api/v1/namespaces/{ns}/secrets",
            {"metadata": {"name": "s"}, "stringData": {"password": "hunter2-canary"}},
        )
    return ns


# --------------------------------------------------------------------------- tests


def test_local_registry_relists_without_cache_and_delivers_everything(
    planes: ControlPlanes, dsn: str, tmp_path: Path
) -> None:
    ns = _populate(planes, ["dev", "prod"])
    cache = tmp_path / "no-daemon" / "cache.db"
    assert not cache.exists()
    spec = {"kubeconfig": str(planes.kubeconfig), "contexts": ["dev", "prod"], "cache_path": str(cache)}
    result = sync(tmp_path, dsn, spec)
    assert result.returncode == 0, result.output[-3000:]
    assert "relisting" in result.output  # the fallback said what it did
    assert_pg_equals_api(dsn, planes, ["dev", "prod"])
    with psycopg.connect(dsn) as conn:
        clusters = conn.execute(
            "SELECT context_name, kubernetes_version, server FROM k8s_clusters ORDER BY 1"
        ).fetchall()
        joined = conn.execute(
            "SELECT c.context_name, c.kubernetes_version, n.name, p.name FROM k8s_clusters c "
            "JOIN k8s_namespaces n ON c.context_name = n.context_name "
            "JOIN k8s_pods p ON n.name = p.namespace AND c.context_name = p.context_name "
            "WHERE n.name = %s ORDER BY 1, 4",
            (ns,),
        ).fetchall()
        images = conn.execute(
            "SELECT images, phase FROM k8s_pods WHERE namespace = %s AND name = 'p1' AND context_name = 'dev'",
            (ns,),
        ).fetchone()
        secret = conn.execute(
            "SELECT spec, status, name FROM k8s_secrets WHERE namespace = %s AND context_name = 'dev'", (ns,)
        ).fetchone()
    assert [c[:2] for c in clusters] == [("dev", KUBE_VERSION), ("prod", KUBE_VERSION)]
    assert [c[2] for c in clusters] == [planes.servers["dev"].client_url, planes.servers["prod"].client_url]
    assert joined == [(ctx, KUBE_VERSION, ns, f"p{i}") for ctx in ("dev", "prod") for i in range(3)]
    assert images == (["img:1"], "Pending")
    assert secret == (None, None, "s")  # metadata only


def test_grpc_daemon_warm_sync_updates_deletes_restart(
    planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    ns = _populate(planes, ["dev", "prod"])
    cache = tmp_path / "daemon" / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "dev,prod")
    eventually(lambda: len(cached_pod_uids(cache, ns)) == 6, what="pods cached")
    spec: dict[str, Any] = {}  # the daemon supplies kubeconfig, contexts and cache
    time.sleep(1)  # let start-up requests (e.g. /version) fall before the counting window
    began = time.time()
    first = sync(tmp_path, dsn, spec, registry="grpc", path=f"127.0.0.1:{daemon.grpc_port}")
    assert first.returncode == 0, first.output[-3000:]
    assert watcher_requests(planes, began, {"list", "get"}) == []  # warm: not one request
    assert_pg_equals_api(dsn, planes, ["dev", "prod"])

    # Updates and deletes, then a second snapshot sync (default write mode).
    for ctx in ("dev", "prod"):
        admin = planes.servers[ctx].admin()
        admin.delete(f"/api/v1/namespaces/{ns}/pods/p0")
        admin.delete(f"/api/v1/namespaces/{ns}/configmaps/cm1")
        admin.patch(f"/api/v1/namespaces/{ns}/configmaps/cm2", {"data": {"k": "new"}})
        configmap(admin, ns, "cm-new")
    eventually(lambda: len(cached_pod_uids(cache, ns)) == 4, what="deletes cached")
    time.sleep(0.5)
    second = sync(tmp_path, dsn, spec, registry="grpc", path=f"127.0.0.1:{daemon.grpc_port}")
    assert second.returncode == 0, second.output[-3000:]
    assert_pg_equals_api(dsn, planes, ["dev", "prod"])
    with psycopg.connect(dsn) as conn:
        data = conn.execute(
            "SELECT resource_version FROM k8s_configmaps WHERE namespace = %s AND name = 'cm2' AND context_name = 'dev'",
            (ns,),
        ).fetchone()
    assert (
        data is not None
        and data[0]
        == planes.servers["dev"]
        .admin()
        .get(f"/api/v1/namespaces/{ns}/configmaps/cm2")["metadata"]["resourceVersion"]
    )

    code, health = daemon.http("/healthz")
    assert code == 200 and "watching=" in health
    code, metrics = daemon.http("/metrics")
    assert code == 200
    assert 'k8s_watcher_informer_state{context="dev",resource="pods",state="watching"} 1.0' in metrics
    assert re.search(r'k8s_watcher_cache_rows\{table="k8s_pods"\} \d+', metrics)
    assert re.search(r"^k8s_watcher_history_backlog \d+", metrics, re.M)
    assert re.search(r"^k8s_watcher_history_lag_seconds [\d.e+-]+$", metrics, re.M)
    assert "k8s_watcher_sync_duration_seconds_count 2.0" in metrics

    # SIGTERM: clean exit; a restart resumes from the stored RVs without listing.
    assert daemon.terminate() == 0
    assert "stopped cleanly" in daemon.log.read_text()
    restarted_at = time.time()
    configmap(planes.servers["dev"].admin(), ns, "while-down")
    again = start_daemon(planes.kubeconfig, cache, "dev,prod")
    informers = again.status()["informers"]
    assert informers and all(i["lists"] == 0 and i["state"] == "watching" for i in informers), informers
    assert [
        r
        for r in watcher_requests(planes, restarted_at, {"list", "watch"})
        if " list " in r or "sendInitialEvents" in r
    ] == []
    eventually(
        lambda: "while-down" in {n for n in cached_names(cache, "configmaps", "dev", ns)},
        what="resumed watch",
    )


def cached_pod_uids(cache: Path, ns: str) -> list[str]:
    return [uid for ctx in ("dev", "prod") for uid in cached(cache, ctx, PODS, ns)]


def cached_meta(cache: Path, key: str) -> str | None:
    with state.reading(cache) as conn:
        return state.read_meta(conn, key)


def pg_row_count(dsn: str, tables: list[str]) -> int:
    with psycopg.connect(dsn) as conn:
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)  # type: ignore[index]


def cached_names(cache: Path, resource: str, context: str, ns: str | None) -> list[str]:
    with state.reading(cache) as conn:
        return state.live_names(conn, context, resource, ns)


def incremental_source(daemon: Any, write_mode: str = "overwrite") -> dict[str, Any]:
    """The daemon's plugin (registry grpc) with CloudQuery's state backend: where the
    incremental cursor lives."""
    return {
        "registry": "grpc",
        "path": f"127.0.0.1:{daemon.grpc_port}",
        "with_state_backend": True,
        "write_mode": write_mode,
    }


def test_incremental_mode_emits_only_changes_and_propagates_deletes(
    planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    ns = _populate(planes, ["dev", "prod"])
    cache = tmp_path / "inc" / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "dev,prod")
    source = incremental_source(daemon)
    # Leases are renewed by the API servers every few seconds: leave them out so that
    # "nothing changed" is true and the counts below are exact.
    spec = {
        "incremental": True,
        "tables": ["k8s_clusters", "k8s_namespaces", "k8s_pods", "k8s_configmaps", "k8s_secrets"],
    }
    full = sync(tmp_path, dsn, spec, **source)
    assert full.returncode == 0, full.output[-3000:]
    assert_pg_equals_api(dsn, planes, ["dev", "prod"])
    # The first incremental sync is a full snapshot: every row, then the cursor.
    assert synced_resources(full) == pg_row_count(dsn, spec["tables"]) + 1

    # No change at all: only the two k8s_clusters rows (always whole) travel, and the
    # cursor, as a row of the state table after them.
    idle = sync(tmp_path, dsn, spec, **source)
    assert idle.returncode == 0, idle.output[-3000:]
    assert synced_resources(idle) == 2 + 1

    admin = planes.servers["dev"].admin()
    configmap(admin, ns, "inc-a")
    configmap(admin, ns, "inc-b")
    admin.patch(f"/api/v1/namespaces/{ns}/configmaps/cm0", {"data": {"k": "v2"}})
    admin.delete(f"/api/v1/namespaces/{ns}/configmaps/cm1")
    admin.delete(f"/api/v1/namespaces/{ns}/pods/p2")
    planes.servers["prod"].admin().delete(f"/api/v1/namespaces/{ns}/secrets/s")
    eventually(
        lambda: (
            "inc-b" in cached_names(cache, "configmaps", "dev", ns) and len(cached_pod_uids(cache, ns)) == 5
        )
    )
    time.sleep(0.5)
    delta = sync(tmp_path, dsn, spec, **source)
    assert delta.returncode == 0, delta.output[-3000:]
    assert synced_resources(delta) == 2 + 3 + 1  # clusters + inc-a, inc-b, cm0 + the cursor
    # The deletions reached PostgreSQL too: delete-record messages, run by the destination.
    assert_pg_equals_api(dsn, planes, ["dev", "prod"])
    # The cursor lives in the destination's state backend table:
    # <cache id>/<lineage>:{context: seq}.
    with psycopg.connect(dsn) as conn:
        cursor = conn.execute("SELECT value FROM cq_state_k8s WHERE key = 'k8s-watcher|cursor'").fetchone()
    stored = parse_cursor((cursor or ("",))[0])
    assert stored is not None and stored.sent is not None
    assert stored.cache_id == cached_meta(cache, "cache_id")
    assert sorted(stored.sent) == ["dev", "prod"] and min(stored.sent.values()) > 0

    # A lost cursor (state table dropped) falls back to a full snapshot, still exact.
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM cq_state_k8s")
    planes.servers["prod"].admin().delete(f"/api/v1/namespaces/{ns}/configmaps/cm0")
    eventually(lambda: "cm0" not in [n for n in cached_names(cache, "configmaps", "prod", ns)])
    again = sync(tmp_path, dsn, spec, **source)
    assert again.returncode == 0
    assert synced_resources(again) == pg_row_count(dsn, spec["tables"]) + 1
    assert_pg_equals_api(dsn, planes, ["dev", "prod"])


@dataclass
class IncrementalSetup:
    """A namespace with one configmap in "dev", a daemon on it, and the source config
    and spec of incremental syncs of its configmaps into ``write_mode``."""

    admin: Any
    ns: str
    cache: Path
    source: dict[str, Any]
    spec: dict[str, Any]


def _incremental_setup(
    planes: ControlPlanes, tmp_path: Path, start_daemon: Any, name: str, configmap_name: str, write_mode: str
) -> IncrementalSetup:
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique(name))
    configmap(admin, ns, configmap_name)
    cache = tmp_path / name / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "dev")
    source = incremental_source(daemon, write_mode)
    spec = {"incremental": True, "tables": ["k8s_clusters", "k8s_configmaps"]}
    return IncrementalSetup(admin, ns, cache, source, spec)


def pg_configmap_names(dsn: str, ns: str) -> list[str]:
    """The configmaps of ``ns`` in PostgreSQL, sorted, a name as often as it has rows."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT name FROM k8s_configmaps WHERE namespace = %s", (ns,)).fetchall()
    return sorted(r[0] for r in rows)


def test_incremental_cursor_does_not_pass_rows_the_destination_failed_to_write(
    planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    """The cursor travels as the stream's last row: a destination that cannot write a
    batch fails the sync without moving the cursor, and the next sync sends it again.
    (Written by the state client instead, it committed at once, ahead of the rows.)"""
    setup = _incremental_setup(planes, tmp_path, start_daemon, "cursor", "before", "overwrite")
    admin, ns, spec, source = setup.admin, setup.ns, setup.spec, setup.source
    first = sync(tmp_path, dsn, spec, **source)
    assert first.returncode == 0, first.output[-3000:]
    assert pg_configmap_names(dsn, ns) == ["before"]
    # The destination's insert fails for one row: its whole batch is rolled back.
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.name LIKE 'refused-%' THEN RAISE EXCEPTION 'refused by the test'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON k8s_configmaps "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    configmap(admin, ns, "refused-1")
    configmap(admin, ns, "after-1")
    eventually(lambda: {"refused-1", "after-1"} <= set(cached_names(setup.cache, "configmaps", "dev", ns)))
    failed = sync(tmp_path, dsn, spec, **source)
    assert failed.returncode != 0, failed.output[-3000:]
    assert "refused by the test" in failed.output, failed.output[-3000:]
    assert pg_configmap_names(dsn, ns) == ["before"]

    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TRIGGER refuse ON k8s_configmaps")
    again = sync(tmp_path, dsn, spec, **source)
    assert again.returncode == 0, again.output[-3000:]
    assert pg_configmap_names(dsn, ns) == ["after-1", "before", "refused-1"]


def test_an_incremental_sync_that_overlaps_the_one_before_does_not_bring_back_a_deleted_row(
    planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    """Two incremental syncs of one destination at once (a cron job that overran), both
    from cursor c0. The older one's rows (the victim alive) can be committed after the
    newer one deleted the victim, and the newer one's cursor after them: the row is
    back, and no later sync deletes it. Triggers in the destination make that order
    happen: the first DELETE statement (the older sync's) and the first INSERT
    statement into k8s_clusters (the newer sync's, which runs while the older one
    sleeps) each sleep. With the gate, the newer sync waits for the older one's cursor,
    then sends the victim's deletion after it."""
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique("overlap"))
    configmap(admin, ns, "victim")
    configmap(admin, ns, "doomed")
    cache = tmp_path / "overlap" / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "dev")
    source = incremental_source(daemon)
    spec = {"incremental": True, "tables": ["k8s_clusters", "k8s_configmaps"]}
    first = sync(tmp_path / "first", dsn, spec, **source)
    assert first.returncode == 0, first.output[-3000:]
    with psycopg.connect(dsn) as conn:
        for name, seconds, event, table in (
            ("delete", 5, "DELETE", "k8s_configmaps"),
            ("insert", 8, "INSERT", "k8s_clusters"),
        ):
            # A sequence is outside transactions: only the first statement ever sleeps.
            conn.execute(f"CREATE SEQUENCE first_{name}")
            conn.execute(
                f"CREATE FUNCTION hold_{name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF nextval('first_{name}') = 1 THEN PERFORM pg_sleep({seconds}); END IF; RETURN NULL; END $$"
            )
            conn.execute(
                f"CREATE TRIGGER hold_{name} BEFORE {event} ON {table} FOR EACH STATEMENT EXECUTE FUNCTION hold_{name}()"
            )
    admin.patch(f"/api/v1/namespaces/{ns}/configmaps/victim", {"data": {"k": "v2"}})
    admin.delete(f"/api/v1/namespaces/{ns}/configmaps/doomed")
    eventually(lambda: cached_names(cache, "configmaps", "dev", ns) == ["victim"])
    time.sleep(0.5)

    results: dict[str, CqResult] = {}
    older = threading.Thread(target=lambda: results.update(a=sync(tmp_path / "a", dsn, spec, **source)))
    older.start()
    eventually(lambda: _sleeping_in(dsn), timeout=60)  # its snapshot (the victim alive) is in flight
    admin.delete(f"/api/v1/namespaces/{ns}/configmaps/victim")
    eventually(lambda: "victim" not in cached_names(cache, "configmaps", "dev", ns))
    newer = sync(tmp_path / "b", dsn, spec, **source)
    older.join(120)
    assert results["a"].returncode == 0, results["a"].output[-3000:]
    assert newer.returncode == 0, newer.output[-3000:]
    assert pg_configmap_names(dsn, ns) == []
    # And a later sync has nothing left to mend: still equal to the API.
    assert sync(tmp_path / "c", dsn, spec, **source).returncode == 0
    assert pg_configmap_names(dsn, ns) == []
    logged = daemon.log.read_text()
    assert "waiting for the cursor of the sync before this one" in logged
    assert "has not reached the destination" not in logged  # it came, and was waited for


def _sleeping_in(dsn: str) -> bool:
    """Whether a session of this database is inside the test's trigger (pg_sleep)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
        ).fetchone()
    return bool(row and row[0])


def test_incremental_syncs_into_an_append_destination_with_the_cursor_in_the_backend(
    planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    """write_mode append strips primary keys, so its syncs cannot carry the state table
    (the destination refuses to migrate it): the default cursor fails there with the
    destination's own message, and ``cursor: backend`` writes it through the state client."""
    setup = _incremental_setup(planes, tmp_path, start_daemon, "append", "a", "append")
    spec, source = setup.spec, setup.source
    on_stream = sync(tmp_path, dsn, spec, **source)
    assert on_stream.returncode != 0
    assert "cq_state_k8s" in on_stream.output and "Primary key constraint removed" in on_stream.output

    spec["cursor"] = "backend"
    first = sync(tmp_path, dsn, spec, **source)
    assert first.returncode == 0, first.output[-3000:]
    configmap(setup.admin, setup.ns, "b")
    eventually(lambda: "b" in cached_names(setup.cache, "configmaps", "dev", setup.ns))
    second = sync(tmp_path, dsn, spec, **source)
    assert second.returncode == 0, second.output[-3000:]
    assert synced_resources(second) == 1 + 1  # the cluster's row and b: the cursor moved
    assert pg_configmap_names(dsn, setup.ns) == ["a", "b"]  # appended once each


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"colour": "blue"}, "unknown field(s) in spec: colour"),
        ({"contexts": ["nope"]}, "context(s) nope not found in kubeconfig"),
        ({"max_staleness": "soon"}, "max_staleness: 'soon' is not a duration"),
        ({"contexts": []}, "contexts: must not be empty"),
        ({"tables": ["k8s_nothing"]}, "tables: 'k8s_nothing' matches no table"),
        ({"kubeconfig": "/nonexistent/kubeconfig"}, "kubeconfig /nonexistent/kubeconfig does not exist"),
    ],
)
def test_bad_spec_fails_with_a_message_naming_it(
    planes: ControlPlanes, dsn: str, tmp_path: Path, spec: dict[str, Any], expected: str
) -> None:
    full = {"kubeconfig": str(planes.kubeconfig), "cache_path": str(tmp_path / "c.db"), **spec}
    result = sync(tmp_path, dsn, full)
    assert result.returncode != 0
    assert expected in result.output, result.output[-2000:]
    assert not any(t.startswith("k8s_") for t in pg_tables(dsn))  # nothing written


def test_test_connection_reports_unreachable_context(planes: ControlPlanes, tmp_path: Path) -> None:
    spec = {"kubeconfig": str(planes.kubeconfig), "contexts": ["dev", "prod"]}
    ok = run_cloudquery(["test-connection"], workdir=tmp_path / "ok", configs=[source_config(spec)])
    assert ok.returncode == 0, ok.output[-2000:]
    kubeconfig = kubeconfig_with(
        planes, tmp_path / "kubeconfig", {"gone": (unreachable_cluster(), {"token": "x"})}
    )
    bad = run_cloudquery(
        ["test-connection"],
        workdir=tmp_path / "bad",
        configs=[source_config({"kubeconfig": str(kubeconfig), "contexts": ["dev", "gone"]})],
    )
    assert bad.returncode != 0
    assert "gone: connection error" in bad.output, bad.output[-2000:]


def test_one_unreachable_context_does_not_spoil_the_sync(
    planes: ControlPlanes, dsn: str, tmp_path: Path
) -> None:
    kubeconfig = kubeconfig_with(
        planes, tmp_path / "kubeconfig", {"gone": (unreachable_cluster(), {"token": "x"})}
    )
    spec = {"kubeconfig": str(kubeconfig), "contexts": ["prod", "gone"], "cache_path": str(tmp_path / "c.db")}
    result = sync(tmp_path, dsn, spec)
    assert result.returncode == 0, result.output[-3000:]
    assert "context gone could not be synced" in result.output
    assert_pg_equals_api(dsn, planes, ["prod"])
    with psycopg.connect(dsn) as conn:
        rows = dict(conn.execute("SELECT context_name, last_error FROM k8s_clusters").fetchall())
    assert rows["prod"] is None and "connection error" in (rows["gone"] or "")
