"""Streaming into PostgreSQL: a ``follow`` sync through the real CLI 6.21.1 and the real
PostgreSQL destination, under churn in two contexts, stopped once with SIGTERM and
restarted; PostgreSQL ends equal to the API servers object by object."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import ControlPlanes
from testbed.cq import destination_config, source_config, start_cloudquery
from tests.conftest import CMS, assert_pg_equals_api, eventually, namespace, truth, unique

CONTEXTS = ["dev", "prod"]
TABLES = ["k8s_clusters", "k8s_namespaces", "k8s_pods", "k8s_configmaps", "k8s_secrets"]


def follow_configs(grpc_address: str, dsn: str) -> list[dict[str, Any]]:
    source = source_config(
        {"follow": True}, registry="grpc", path=grpc_address, tables=TABLES, with_state_backend=True
    )
    return [source, destination_config(dsn, write_mode="overwrite", spec={"batch_timeout": "1s"})]


def pg_versions(dsn: str, table: str, context: str) -> dict[str, str]:
    """uid -> resourceVersion of the rows in PostgreSQL (empty before the table exists)."""
    with psycopg.connect(dsn) as conn:
        try:
            rows = conn.execute(
                f"SELECT uid::text, resource_version FROM {table} WHERE context_name = %s", (context,)
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return {}
    return {u: v for u, v in rows}


def churn(planes: ControlPlanes, stop: threading.Event, counts: dict[str, int]) -> None:
    """Creates, updates and deletes of ConfigMaps, Secrets and Pods in both contexts."""
    rng = random.Random(7)
    admins = {ctx: planes.servers[ctx].admin() for ctx in CONTEXTS}
    spaces = {ctx: namespace(admins[ctx], unique("stream")) for ctx in CONTEXTS}
    live: dict[str, list[tuple[str, str]]] = {ctx: [] for ctx in CONTEXTS}
    n = 0
    while not stop.is_set():
        ctx = CONTEXTS[n % 2]
        admin, ns = admins[ctx], spaces[ctx]
        op = rng.random()
        if op < 0.45 or len(live[ctx]) < 5:
            kind = rng.choice(["configmaps", "secrets", "pods"])
            name = f"o{n}"
            body: dict[str, Any] = {"metadata": {"name": name}}
            if kind == "pods":
                body["spec"] = {"containers": [{"name": "c", "image": "busybox"}]}
            else:
                body["data" if kind == "configmaps" else "stringData"] = {"k": str(n)}
            admin.create(f"/api/v1/namespaces/{ns}/{kind}", body)
            live[ctx].append((kind, name))
            counts["create"] += 1
        elif op < 0.8:
            kind, name = rng.choice(live[ctx])
            admin.patch(f"/api/v1/namespaces/{ns}/{kind}/{name}", {"metadata": {"labels": {"n": str(n)}}})
            counts["update"] += 1
        else:
            kind, name = live[ctx].pop(rng.randrange(len(live[ctx])))
            admin.delete(f"/api/v1/namespaces/{ns}/{kind}/{name}?gracePeriodSeconds=0")
            counts["delete"] += 1
        n += 1
        time.sleep(0.02)


@pytest.mark.slow
def test_follow_streams_through_sigterm(
    planes: ControlPlanes, dsn: str, start_daemon: Any, tmp_path: Path
) -> None:
    daemon = start_daemon(planes.kubeconfig, tmp_path / "cache.db", ",".join(CONTEXTS))
    configs = follow_configs(daemon.grpc_address, dsn)
    counts = {"create": 0, "update": 0, "delete": 0}
    stop = threading.Event()
    writer = threading.Thread(target=churn, args=(planes, stop, counts))
    cli = start_cloudquery(["sync"], workdir=tmp_path / "cq1", configs=configs)
    writer.start()
    try:
        # A change reaches PostgreSQL while the first sync is still running.
        admin = planes.servers["dev"].admin()
        ns = namespace(admin, unique("probe"))
        probe = admin.create(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "probe"}})
        uid = probe["metadata"]["uid"]
        eventually(lambda: uid in pg_versions(dsn, "k8s_configmaps", "dev"), timeout=60, what="probe row")
        assert cli.poll() is None, "a follow sync does not end"
        time.sleep(12)
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(30) != 0  # CLI 6.21.1 ends a cancelled sync with an error status
        time.sleep(2)  # churn goes on while no stream runs
        cli = start_cloudquery(["sync"], workdir=tmp_path / "cq2", configs=configs)
        time.sleep(14)
    finally:
        stop.set()
        writer.join(60)
    assert counts["create"] > 50 and counts["update"] > 30 and counts["delete"] > 20, counts

    def equal() -> bool:
        try:
            assert_pg_equals_api(dsn, planes, CONTEXTS)
        except AssertionError:
            return False
        return all(
            pg_versions(dsn, CMS.table, ctx) == truth(planes.servers[ctx].admin(), CMS) for ctx in CONTEXTS
        )

    try:
        eventually(equal, timeout=30, interval=0.5, what="PostgreSQL equal to the API servers")
        assert cli.poll() is None
    finally:
        cli.send_signal(signal.SIGTERM)
        try:
            cli.wait(30)
        except subprocess.TimeoutExpired:
            cli.kill()
    assert_pg_equals_api(dsn, planes, CONTEXTS)
    # The restarted sync resumed from the cursor the first one committed: a delta, not
    # a full snapshot; the cursor row is in the state table.
    sent = [line for line in daemon.log.read_text().splitlines() if "sync sent" in line]
    assert len(sent) == 2 and "full snapshot" in sent[0] and "changes since" in sent[1], sent
    with psycopg.connect(dsn) as conn:
        cursor = conn.execute("SELECT value FROM cq_state_k8s WHERE key = 'k8s-watcher|cursor'").fetchone()
    assert cursor is not None and ":" in cursor[0]
    assert daemon.metric("k8s_watcher_stream_seq") > 0
