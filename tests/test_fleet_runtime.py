"""The fleet runtime on real API servers: every watch of a context is a stream on one
HTTP/2 connection (5 contexts x 150+ kinds on at most 10 connections, and a handful of
threads), a server that refuses HTTP/2 still syncs over HTTP/1.1, and 1,000 CRDs on one
server sync every typed table's rows (slow)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from testbed.cluster import ControlPlanes, control_planes
from testbed.fleet import FleetCrd, create_crds, create_objects, fleet_crds, fleet_kubeconfig
from testbed.sockets import tcp_connections, thread_count
from tests.conftest import eventually, namespace, sync
from watcher import state

NS = "fleet"


def _port(planes: ControlPlanes) -> int:
    (server,) = planes.servers.values()
    return int(urlsplit(server.url).port or 443)


def _fleet(planes: ControlPlanes, crds: list[FleetCrd], per_crd: int) -> ControlPlanes:
    (server,) = planes.servers.values()
    admin = server.admin()
    create_crds(admin, crds)
    namespace(admin, NS)
    create_objects(admin, crds, NS, per_crd=per_crd)
    return planes


@pytest.fixture(scope="module")
def fleet_h2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlanes, list[FleetCrd]]]:
    """One API server with 90 CRDs (with the ~65 built-in kinds: over 150 per context)."""
    crds = fleet_crds(90, prefix="hq")
    with control_planes(["fleet"], workdir=tmp_path_factory.mktemp("fleet")) as planes:
        yield _fleet(planes, crds, per_crd=1), crds


def _watching(cache: Path) -> dict[str, int]:
    with state.reading(cache) as conn:
        rows = state.read_checkpoints(conn)
    counts: dict[str, int] = {}
    for r in rows:
        if state.informer_state(r["state"]).synced:
            counts[r["context"]] = counts.get(r["context"], 0) + 1
    return counts


def _live(cache: Path, context: str, resource: str) -> dict[str, str]:
    with state.reading(cache) as conn:
        return state.live_versions(conn, context, resource)


def _typed_rows(dsn: str, crds: list[FleetCrd]) -> dict[str, dict[str, int]]:
    """table -> context -> rows, in PostgreSQL."""
    found: dict[str, dict[str, int]] = {}
    with psycopg.connect(dsn) as conn:
        for crd in crds:
            rows = conn.execute(
                f"SELECT context_name, count(*) FROM {crd.table} GROUP BY context_name"
            ).fetchall()
            found[crd.table] = {ctx: n for ctx, n in rows}
    return found


def test_five_contexts_of_over_150_kinds_watch_over_at_most_ten_http2_connections(
    fleet_h2: tuple[ControlPlanes, list[FleetCrd]], tmp_path: Path, start_daemon: Any, dsn: str
) -> None:
    planes, crds = fleet_h2
    kubeconfig = tmp_path / "kubeconfig"
    contexts = fleet_kubeconfig(planes, kubeconfig, 5)
    daemon = start_daemon(kubeconfig, tmp_path / "cache.db", timeout=180)

    # The daemon says synced from its informers' states; their last checkpoints may still
    # be in the writer's queue (a loaded machine: 20 of a context's 153 were, once).
    def all_watching() -> dict[str, int] | None:
        found = _watching(daemon.cache)
        return found if set(found) == set(contexts) and min(found.values()) >= 150 else None

    watching = eventually(all_watching, what="150 informers of every context watching in the cache")
    connections = tcp_connections(daemon.proc.pid, _port(planes))
    threads = thread_count(daemon.proc.pid)
    print(f"{sum(watching.values())} watches over {connections} connections, {threads} threads")
    assert 1 <= connections <= 10
    assert threads <= 64
    log = daemon.log.read_text()
    assert " over h2 " in log, "the daemon did not log an HTTP/2 connection"
    result = sync(tmp_path, dsn, {}, registry="grpc", path=daemon.grpc_address)
    assert result.returncode == 0, result.output[-3000:]
    assert _typed_rows(dsn, crds) == {c.table: dict.fromkeys(contexts, 1) for c in crds}


def test_a_server_that_refuses_http2_is_watched_and_synced_over_http11(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, start_daemon: Any, dsn: str
) -> None:
    crds = fleet_crds(5, prefix="hone")
    # --disable-http2-serving: ALPN offers http/1.1 only (as GODEBUG=http2server=0 does).
    with control_planes(
        ["old"], workdir=tmp_path_factory.mktemp("http1"), apiserver_args=("--disable-http2-serving",)
    ) as planes:
        _fleet(planes, crds, per_crd=2)
        kubeconfig = tmp_path / "kubeconfig"
        contexts = fleet_kubeconfig(planes, kubeconfig, 2)
        daemon = start_daemon(kubeconfig, tmp_path / "cache.db", timeout=180)
        log = daemon.log.read_text()
        assert " over HTTP/1.1" in log and " over h2 " not in log
        result = sync(tmp_path, dsn, {}, registry="grpc", path=daemon.grpc_address)
        assert result.returncode == 0, result.output[-3000:]
        assert _typed_rows(dsn, crds) == {c.table: dict.fromkeys(contexts, 2) for c in crds}
        # A change reaches the cache over a watch on HTTP/1.1 too (the watches take turns on
        # the bounded connections: it may wait for its turn).
        admin = planes.servers["old"].admin()
        admin.delete(f"{crds[0].collection(NS)}/g0")
        key = f"{crds[0].plural}.{crds[0].group}"
        eventually(lambda: all(len(_live(daemon.cache, c, key)) == 1 for c in contexts), timeout=120)
        result = sync(tmp_path, dsn, {}, registry="grpc", path=daemon.grpc_address)
        assert result.returncode == 0, result.output[-3000:]
        assert _typed_rows(dsn, crds[:1]) == {crds[0].table: dict.fromkeys(contexts, 1)}


@pytest.mark.slow
def test_a_thousand_crds_sync_every_typed_table(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, start_daemon: Any, dsn: str
) -> None:
    crds = fleet_crds(1000, prefix="k")
    with control_planes(["big"], workdir=tmp_path_factory.mktemp("crds")) as planes:
        _fleet(planes, crds, per_crd=3)
        kubeconfig = tmp_path / "kubeconfig"
        contexts = fleet_kubeconfig(planes, kubeconfig, 1)
        daemon = start_daemon(kubeconfig, tmp_path / "cache.db", timeout=600)
        assert _watching(daemon.cache)[contexts[0]] >= 1000
        result = sync(tmp_path, dsn, {}, registry="grpc", path=daemon.grpc_address)
        assert result.returncode == 0, result.output[-3000:]
        assert _typed_rows(dsn, crds) == {c.table: {contexts[0]: 3} for c in crds}
