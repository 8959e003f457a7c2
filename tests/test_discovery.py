"""Discovery-driven inventory on the real test bed: every resource the API server serves
with list and watch is synced, the ones without a table of their own into generic
tables; component statuses, which can be listed but not watched, are polled; what may
not be listed is logged and the rest of the sync is complete; the spec excludes kinds.
Through the fallback relist (registry local) and through the daemon (registry grpc)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import ControlPlanes
from testbed.postgres import Postgres
from tests.conftest import NSS, eventually, namespace, new_dsn, pg_tables, pg_uids, sync, truth, unique

CONTEXTS = ["prod", "prod-viewer"]  # the viewer may not list secrets


@dataclass(frozen=True)
class Synced:
    dsn: str
    output: str
    revision: dict[str, Any]


def _controller_revision(planes: ControlPlanes) -> dict[str, Any]:
    admin = planes.servers["prod"].admin()
    ns = namespace(admin, unique("discovery"))
    body = {"metadata": {"name": "rev"}, "revision": 3, "data": {"note": "discovered"}}
    return admin.create(f"/apis/apps/v1/namespaces/{ns}/controllerrevisions", body)


@pytest.fixture(scope="module")
def synced(
    planes: ControlPlanes, pg_server: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Synced]:
    """A ControllerRevision (no table of its own), then one sync of the default spec
    with events excluded, in the admin's and the viewer's context."""
    revision = _controller_revision(planes)
    tmp = tmp_path_factory.mktemp("discovery")
    dsn = new_dsn(pg_server)
    spec = {
        "kubeconfig": str(planes.kubeconfig),
        "contexts": CONTEXTS,
        "cache_path": str(tmp / "cache.db"),
        "exclude": ["events"],
    }
    result = sync(tmp, dsn, spec)
    assert result.returncode == 0, result.output[-3000:]
    yield Synced(dsn, result.output, revision)


def test_a_served_resource_without_a_table_of_its_own_is_synced_into_a_generic_table(synced: Synced) -> None:
    meta = synced.revision["metadata"]
    with psycopg.connect(synced.dsn) as conn:
        rows = conn.execute(
            "SELECT context_name, name, namespace, fields FROM k8s_apps_controllerrevisions WHERE uid = %s "
            "ORDER BY 1",
            (meta["uid"],),
        ).fetchall()
        cidrs = conn.execute(
            "SELECT name FROM k8s_networking_servicecidrs WHERE context_name = 'prod'"
        ).fetchall()
    fields = {"revision": 3, "data": {"note": "discovered"}}
    assert rows == [(ctx, "rev", meta["namespace"], fields) for ctx in CONTEXTS]
    assert cidrs == [("kubernetes",)]  # the API server's own ServiceCIDR


def test_component_statuses_are_listed_what_may_not_be_listed_is_logged_and_the_rest_synced(
    synced: Synced, planes: ControlPlanes
) -> None:
    assert "componentstatuses can be listed but not watched" not in synced.output
    assert "prod-viewer: relist failed for secrets: HTTP 403" in synced.output
    tables = pg_tables(synced.dsn)
    assert "k8s_core_componentstatuses" not in tables  # its own table, not a generic one
    assert _component_statuses(synced.dsn) == {(ctx, "etcd-0", "True") for ctx in CONTEXTS}
    admin = planes.servers["prod"].admin()
    for ctx in CONTEXTS:
        assert pg_uids(synced.dsn, NSS.table, ctx) == set(truth(admin, NSS)), ctx
    with psycopg.connect(synced.dsn) as conn:
        states = dict(conn.execute("SELECT context_name, informer_states FROM k8s_clusters").fetchall())
    assert states["prod-viewer"]["secrets"] == "forbidden" and states["prod"]["secrets"] == "listed"
    assert states["prod-viewer"]["controllerrevisions.apps"] == "listed"


def test_excluded_kinds_are_neither_synced_nor_inventoried_under_another_group(synced: Synced) -> None:
    tables = pg_tables(synced.dsn)
    assert "k8s_events" not in tables and "k8s_core_events" not in tables
    assert {"k8s_pods", "k8s_pod_containers", "k8s_limitranges"} <= tables


def test_the_daemon_watches_discovered_resources_and_a_sync_through_it_sends_them(
    planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    revision = _controller_revision(planes)
    daemon = start_daemon(planes.kubeconfig, tmp_path / "cache.db", "prod")
    eventually(
        lambda: any(
            i["resource"] == "controllerrevisions.apps" and i["state"] == "watching"
            for i in daemon.status()["informers"]
        ),
        what="an informer for controllerrevisions.apps",
    )
    spec = {"exclude": ["ipaddresses"]}
    result = sync(tmp_path, dsn, spec, registry="grpc", path=f"127.0.0.1:{daemon.grpc_port}")
    assert result.returncode == 0, result.output[-3000:]
    assert revision["metadata"]["uid"] in pg_uids(dsn, "k8s_apps_controllerrevisions", "prod")
    tables = pg_tables(dsn)
    assert "k8s_networking_ipaddresses" not in tables and "k8s_networking_servicecidrs" in tables
    # Component statuses: polled by an informer like any other (watching between polls).
    statuses = {i["resource"]: i for i in daemon.status()["informers"] if i["context"] == "prod"}
    assert (
        statuses["componentstatuses"]["state"] == "watching" and statuses["componentstatuses"]["lists"] == 1
    )
    assert _component_statuses(dsn) == {("prod", "etcd-0", "True")}


def _component_statuses(dsn: str) -> set[tuple[str, str, str]]:
    """(context, component, Healthy) of etcd, the one component the test bed runs."""
    with psycopg.connect(dsn) as conn:
        return set(
            conn.execute(
                "SELECT context_name, name, conditions->0->>'status' FROM k8s_componentstatuses"
                " WHERE name LIKE 'etcd-%'"
            ).fetchall()
        )
