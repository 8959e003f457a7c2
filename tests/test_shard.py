"""``cloudquery sync --shard i/n`` through the real CLI and destination: n sharded runs
write exactly what one unsharded run writes, in the default write mode too
(overwrite-delete-stale), sync after sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import ControlPlanes
from testbed.cq import CqResult, destination_config, run_cloudquery, source_config
from testbed.postgres import Postgres
from tests.conftest import configmap, eventually, namespace, new_dsn, unique
from tests.test_sync import synced_resources
from watcher import state


def _rows(dsn: str) -> dict[str, set[tuple[str, str]]]:
    """(context_name, uid) of every row of every k8s_ table."""
    out: dict[str, set[tuple[str, str]]] = {}
    with psycopg.connect(dsn) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'k8s\\_%'"
            )
        ]
        for table in tables:
            out[table] = {
                (str(c), str(u)) for c, u in conn.execute(f"SELECT context_name, uid::text FROM {table}")
            }
    return out


TABLES = ["k8s_clusters", "k8s_namespaces", "k8s_configmaps", "k8s_pods", "k8s_secrets"]


def _sync(tmp: Path, dsn: str, address: str, *shard: str, incremental: bool = False) -> CqResult:
    if incremental:  # delete-record messages and a cursor per shard; no delete-stale
        source = source_config(
            {"tables": TABLES, "incremental": True}, registry="grpc", path=address, with_state_backend=True
        )
        configs = [source, destination_config(dsn, write_mode="overwrite")]
    else:
        configs = [source_config({"tables": TABLES}, registry="grpc", path=address), destination_config(dsn)]
    workdir = tmp / "-".join(["cq", dsn[-10:], *shard]).replace("/", "of")
    result = run_cloudquery(["sync", *shard], workdir=workdir, configs=configs)
    assert result.returncode == 0, result.output[-3000:]
    return result


@pytest.mark.parametrize("incremental", [False, True], ids=["snapshot: whole tables", "incremental: pairs"])
def test_two_shards_together_write_exactly_what_one_unsharded_sync_writes(
    planes: ControlPlanes, pg_server: Postgres, tmp_path: Path, start_daemon: Any, incremental: bool
) -> None:
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique("shard"))
    for i in range(3):
        configmap(admin, ns, f"cm{i}")
    cache = tmp_path / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "dev,prod")
    whole, sharded = new_dsn(pg_server), new_dsn(pg_server)
    for round_ in range(2):
        if round_:  # the second round: a deletion and a new object since the first
            admin.delete(f"/api/v1/namespaces/{ns}/configmaps/cm0")
            configmap(admin, ns, "cm-new")
            eventually(
                lambda: {"cm-new"} <= set(_names(cache, ns)) and "cm0" not in _names(cache, ns),
                what="cache caught up",
            )
        one = _sync(tmp_path, whole, daemon.grpc_address, incremental=incremental)
        first = _sync(tmp_path, sharded, daemon.grpc_address, "--shard", "1/2", incremental=incremental)
        second = _sync(tmp_path, sharded, daemon.grpc_address, "--shard", "2/2", incremental=incremental)
        # Every row once: the shards' rows add up to the unsharded sync's (an
        # incremental sync's last row is its cursor, in the state table: one a shard) ...
        cursors = 1 if incremental else 0
        assert synced_resources(first) + synced_resources(second) == synced_resources(one) + cursors
        if not round_:  # (a delta may fall in one shard alone)
            assert 0 < synced_resources(first) < synced_resources(one)
        log = daemon.log.read_text()
        assert "shard 1/2: " in log
        assert ("sharded by pair" if incremental else "sharded by whole table") in log
        # ... and PostgreSQL holds the same rows (delete-stale of one shard left the
        # other shard's tables alone).
        assert _rows(sharded) == _rows(whole)
    with psycopg.connect(sharded) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM k8s_configmaps WHERE namespace = %s", (ns,))}
    assert names == {"cm1", "cm2", "cm-new"}


def _names(cache: Path, ns: str) -> list[str]:
    with state.reading(cache) as conn:
        return state.live_names(conn, "dev", "configmaps", ns)
