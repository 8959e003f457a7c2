"""k8s_pod_containers end to end: pods with init and regular containers on the real test
bed, synced by the real CLI and destination; one plain SQL query says which images run
where and which run privileged; a deleted pod's containers leave PostgreSQL through an
incremental sync's delete-record messages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import ControlPlanes
from testbed.postgres import Postgres
from tests.conftest import namespace, new_dsn, sync, unique

CTX = "prod"
#: Which images run where, and which run privileged: the query the table exists for.
IMAGES_WHERE_AND_PRIVILEGED = """
SELECT c.namespace, c.pod_name, p.node_name, c.name, c.container_type, c.image,
       coalesce(c.privileged, false) AS privileged
FROM k8s_pod_containers c
JOIN k8s_pods p ON p.context_name = c.context_name AND p.uid = c.pod_uid
WHERE c.context_name = %s AND c.namespace = %s
ORDER BY c.pod_name, c.container_type, c.name
"""


@dataclass(frozen=True)
class Synced:
    dsn: str
    ns: str
    tmp: Path
    spec: dict[str, Any]


def _source(**extra: Any) -> dict[str, Any]:
    return {"with_state_backend": True, "write_mode": "overwrite", **extra}


@pytest.fixture(scope="module")
def synced(
    planes: ControlPlanes, pg_server: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Synced]:
    """Two pods (one with an init container, a privileged one and a sidecar, with their
    statuses; one plain), then one incremental sync of the pod tables."""
    admin = planes.servers[CTX].admin()
    ns = namespace(admin, unique("containers"))
    pods = f"/api/v1/namespaces/{ns}/pods"
    admin.create(pods, {"metadata": {"name": "app"}, "spec": {
        "nodeName": "node-a",
        "initContainers": [{"name": "setup", "image": "busybox:1.36"}],
        "containers": [
            {"name": "main", "image": "registry.example/app:2", "securityContext": {"privileged": True},
             "ports": [{"containerPort": 8080}], "resources": {"requests": {"cpu": "50m"}}},
            {"name": "sidecar", "image": "envoy:1.30", "securityContext": {"readOnlyRootFilesystem": True}},
        ],
    }})  # fmt: skip
    admin.patch(f"{pods}/app/status", {"status": {
        "initContainerStatuses": [{"name": "setup", "image": "busybox:1.36", "imageID": "busybox@sha256:aa",
                                   "ready": False, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}],
        "containerStatuses": [
            {"name": "main", "image": "registry.example/app:2", "imageID": "", "ready": True, "restartCount": 3,
             "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}},
            {"name": "sidecar", "image": "envoy:1.30", "imageID": "", "ready": False, "restartCount": 7,
             "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
        ],
    }})  # fmt: skip
    admin.create(pods, {"metadata": {"name": "plain"}, "spec": {
        "nodeName": "node-b", "containers": [{"name": "web", "image": "nginx:1.27"}]}})  # fmt: skip
    tmp = tmp_path_factory.mktemp("containers")
    dsn = new_dsn(pg_server)
    spec = {
        "kubeconfig": str(planes.kubeconfig),
        "contexts": [CTX],
        "cache_path": str(tmp / "cache.db"),
        "tables": ["k8s_pods", "k8s_pod_containers"],
        "incremental": True,
        "max_staleness": "1ms",  # every sync relists: no daemon keeps this cache warm
    }
    result = sync(tmp, dsn, spec, **_source())
    assert result.returncode == 0, result.output[-3000:]
    yield Synced(dsn, ns, tmp, spec)


def _query(dsn: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def test_which_images_run_where_and_which_run_privileged_is_one_plain_query(synced: Synced) -> None:
    assert _query(synced.dsn, IMAGES_WHERE_AND_PRIVILEGED, CTX, synced.ns) == [
        (synced.ns, "app", "node-a", "setup", "init", "busybox:1.36", False),
        (synced.ns, "app", "node-a", "main", "regular", "registry.example/app:2", True),
        (synced.ns, "app", "node-a", "sidecar", "regular", "envoy:1.30", False),
        (synced.ns, "plain", "node-b", "web", "regular", "nginx:1.27", False),
    ]


def test_each_container_row_carries_its_status_resources_and_security_settings(synced: Synced) -> None:
    rows = _query(
        synced.dsn,
        "SELECT name, ready, restart_count, state, state_reason, image_id, requests_cpu, ports, "
        "read_only_root_filesystem FROM k8s_pod_containers WHERE context_name = %s AND pod_name = 'app' "
        "AND namespace = %s ORDER BY name",
        CTX,
        synced.ns,
    )
    assert rows == [
        ("main", True, 3, "running", None, "", "50m", [{"containerPort": 8080, "protocol": "TCP"}], None),
        ("setup", False, 0, "terminated", "Completed", "busybox@sha256:aa", None, None, None),
        ("sidecar", False, 7, "waiting", "CrashLoopBackOff", "", None, None, True),
    ]


def test_a_deleted_pod_s_containers_leave_postgresql_with_the_next_incremental_sync(
    synced: Synced, planes: ControlPlanes
) -> None:
    planes.servers[CTX].admin().delete(f"/api/v1/namespaces/{synced.ns}/pods/plain?gracePeriodSeconds=0")
    result = sync(synced.tmp, synced.dsn, synced.spec, **_source())
    assert result.returncode == 0, result.output[-3000:]
    # A delta, not a full snapshot: the pod and its one container, as delete-record messages.
    assert re.search(r"and 2 deletions from 2 tables, 1 contexts \(changes since \S+@\d+\)", result.output)
    names = _query(
        synced.dsn,
        "SELECT pod_name, name FROM k8s_pod_containers WHERE context_name = %s AND namespace = %s ORDER BY 1, 2",
        CTX,
        synced.ns,
    )
    assert names == [("app", "main"), ("app", "setup"), ("app", "sidecar")]
