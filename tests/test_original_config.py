"""Configs written for the original design: its source spec (``database_url``, ``contexts``,
``resources``), or ``K8S_CONTEXTS`` / ``K8S_RESOURCES`` in the environment, with
``migrate_mode: forced`` on the destination, through the real CLI and destination. Only
the paths differ: the kubeconfig and the cache come from ``KUBECONFIG`` and
``XDG_STATE_HOME``, as on a user's machine."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from testbed.cluster import KUBE_VERSION, ControlPlanes
from tests.conftest import NSS, PODS, pg_tables, pg_uids, sync, truth

RESOURCES = ["clusters", "namespaces", "pods", "deployments", "services", "crds"]
TABLES = {
    "k8s_clusters", "k8s_namespaces", "k8s_pods", "k8s_deployments", "k8s_services", "k8s_custom_resources",
}  # fmt: skip
#: Every column of the original design's k8s_clusters.
ORIGINAL_CLUSTER_COLUMNS = {
    "context_name", "cluster_name", "server", "ca_file", "insecure_skip_verify", "namespace",
    "kubernetes_version", "node_count", "synced_at", "created_at", "updated_at",
}  # fmt: skip
WARNING = "spec.database_url is ignored: the CloudQuery destination writes the data"


@pytest.fixture
def users_machine(planes: ControlPlanes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(planes.kubeconfig))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def _assert_original_tables(dsn: str, planes: ControlPlanes) -> None:
    assert pg_tables(dsn) == TABLES
    for ctx in ("dev", "prod"):
        admin = planes.servers[ctx].admin()
        for desc in (NSS, PODS):
            assert pg_uids(dsn, desc.table, ctx) == set(truth(admin, desc)), f"{ctx} {desc.table}"
    with psycopg.connect(dsn) as conn:
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'k8s_clusters'"
            )
        }
        clusters = conn.execute(
            "SELECT context_name, server, kubernetes_version, node_count, synced_at IS NOT NULL, "
            "created_at <= updated_at FROM k8s_clusters ORDER BY 1"
        ).fetchall()
    assert columns >= ORIGINAL_CLUSTER_COLUMNS
    assert clusters == [
        (ctx, planes.servers[ctx].client_url, KUBE_VERSION, 0, True, True) for ctx in ("dev", "prod")
    ]


@pytest.mark.usefixtures("users_machine")
def test_the_original_spec_syncs_its_resources_and_ignores_database_url(
    planes: ControlPlanes, dsn: str, tmp_path: Path
) -> None:
    spec = {"database_url": dsn, "contexts": ["dev", "prod"], "resources": RESOURCES}
    result = sync(tmp_path, dsn, spec, migrate_mode="forced")
    assert result.returncode == 0, result.output[-3000:]
    assert result.output.count(WARNING) == 1
    _assert_original_tables(dsn, planes)


@pytest.mark.usefixtures("users_machine")
def test_contexts_and_resources_come_from_k8s_contexts_and_k8s_resources(
    planes: ControlPlanes, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K8S_CONTEXTS", "dev,prod")
    monkeypatch.setenv("K8S_RESOURCES", ",".join(RESOURCES))
    result = sync(tmp_path, dsn, {"database_url": dsn}, migrate_mode="forced")
    assert result.returncode == 0, result.output[-3000:]
    _assert_original_tables(dsn, planes)
