"""Typed tables per CRD on the real test bed, through the daemon (registry grpc), the real
CLI and destination: a CRD with a nested schema and printer columns gets its table with
the right PostgreSQL types; a property added to the CRD while the daemon runs is a column
of the next sync; a CRD without properties and two CRDs whose table names collide are
logged, and the rest of the sync is complete."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import ControlPlanes, KubeHttp, crd_manifest
from tests.conftest import eventually, namespace, pg_tables, pg_uids, sync, unique

CTX = "prod"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PRINTERS = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _spec_properties(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "replicas": {"type": "integer"},
        "ratio": {"type": "number"},
        "paused": {"type": "boolean"},
        "image": {"type": "string"},
        "template": {"type": "object", "properties": {"port": {"type": "integer"}, "env": {"type": "array",
                     "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}},
        "tags": {"type": "array", "items": {"type": "string"}},
        **(extra or {}),
    }  # fmt: skip


def _typed_schema(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": _spec_properties(extra)},
            "status": {"type": "object", "properties": {"phase": {"type": "string"}, "conditions": {
                "type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
        },
    }  # fmt: skip


def _create_when_established(admin: KubeHttp, path: str, body: dict[str, Any]) -> dict[str, Any]:
    def attempt() -> dict[str, Any] | None:
        try:
            return admin.create(path, body)
        except RuntimeError:
            return None  # the CRD is not established yet

    return eventually(attempt, what=f"create in {path}")


class Bed:
    def __init__(self, planes: ControlPlanes) -> None:
        self.admin = planes.servers[CTX].admin()
        suffix = uuid.uuid4().hex[:6]
        self.plural, self.group = f"gadgets{suffix}", "typed.k8s-watcher.io"
        self.table = f"k8s_typed_k8s_watcher_io_{self.plural}"
        self.loose = f"blobs{suffix}"  # a CRD without properties
        self.clash = f"things{suffix}"  # in two groups whose table names collide
        self.ns = namespace(self.admin, unique("typed"))
        self.crds = [
            crd_manifest(self.group, self.plural, _typed_schema(), PRINTERS),
            crd_manifest(
                self.group, self.loose, {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            ),
            crd_manifest("clash-a.k8s-watcher.io", self.clash, _typed_schema()),
            crd_manifest("clash.a-k8s-watcher.io", self.clash, _typed_schema()),
        ]
        for crd in self.crds:
            self.admin.create(CRDS, crd)
        self.path = f"/apis/{self.group}/v1/namespaces/{self.ns}/{self.plural}"
        self.gadget = _create_when_established(self.admin, self.path, {
            "apiVersion": f"{self.group}/v1", "kind": self.plural.capitalize(), "metadata": {"name": "g1"},
            "spec": {"replicas": 3, "ratio": 0.5, "paused": False, "image": "img:1", "tags": ["a"],
                     "template": {"port": 80, "env": [{"name": "X"}]}},
            # No status subresource: status is written with the object.
            "status": {"phase": "Up", "conditions": [{"type": "Ready", "status": "True"}]},
        })  # fmt: skip


@pytest.fixture(scope="module")
def bed(planes: ControlPlanes) -> Iterator[Bed]:
    made = Bed(planes)
    yield made
    for crd in made.crds:
        made.admin.delete(f"{CRDS}/{crd['metadata']['name']}")


def _columns(dsn: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", (table,)
        ).fetchall()
    return dict(rows)


def test_crd_typed_tables_follow_the_crd_while_the_daemon_runs(
    bed: Bed, planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    daemon = start_daemon(planes.kubeconfig, tmp_path / "cache.db", CTX)
    key = f"{bed.plural}.{bed.group}"
    eventually(
        lambda: any(i["resource"] == key and i["state"] == "watching" for i in daemon.status()["informers"]),
        what="the custom resource's informer",
    )
    grpc = {"registry": "grpc", "path": f"127.0.0.1:{daemon.grpc_port}"}
    first = sync(tmp_path, dsn, {}, **grpc)
    assert first.returncode == 0, first.output[-3000:]

    columns = _columns(dsn, bed.table)
    assert {k: v for k, v in columns.items() if k.startswith(("spec_", "status_", "printer_"))} == {
        "spec_replicas": "bigint", "spec_ratio": "double precision", "spec_paused": "boolean",
        "spec_image": "text", "spec_template": "jsonb", "spec_tags": "jsonb",
        "status_phase": "text", "status_conditions": "jsonb",
        "printer_ready": "text", "printer_age": "timestamp without time zone",
    }  # fmt: skip
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT name, spec_replicas, spec_ratio, spec_paused, spec_template, spec_tags, status_phase, "
            f"printer_ready, printer_age IS NOT NULL FROM {bed.table} WHERE context_name = %s",
            (CTX,),
        ).fetchall()
    template = {"port": 80, "env": [{"name": "X"}]}
    assert row == [("g1", 3, 0.5, False, template, ["a"], "Up", "True", True)]
    assert bed.gadget["metadata"]["uid"] in pg_uids(dsn, "k8s_custom_objects", CTX)  # the generic table too

    # Bad input: logged, and everything else synced.
    log = daemon.log.read_text()
    assert f"custom resource {bed.loose}.{bed.group}: its schema declares no spec or status properties" in log
    assert f"custom resource {bed.clash}.clash.a-k8s-watcher.io: its table name" in log
    tables = pg_tables(dsn)
    assert f"k8s_clash_a_k8s_watcher_io_{bed.clash}" in tables
    assert f"k8s_typed_k8s_watcher_io_{bed.loose}" not in tables

    # A property added to the CRD while the daemon runs is a column of the next sync.
    crd = bed.admin.get(f"{CRDS}/{key}")
    assert crd is not None
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = _typed_schema({"color": {"type": "string"}})
    bed.admin.request("PUT", f"{CRDS}/{key}", crd)
    eventually(
        lambda: _try_patch(bed.admin, f"{bed.path}/g1", {"spec": {"color": "blue"}}),
        what="the new property accepted",
    )
    eventually(lambda: _cached_color(daemon, tmp_path, dsn, bed), timeout=60, what="spec_color synced")


def _try_patch(admin: KubeHttp, path: str, patch: dict[str, Any]) -> bool:
    """The API server prunes an unknown property until the new schema is served: retry
    until the object keeps it."""
    return (admin.patch(path, patch).get("spec") or {}).get("color") == "blue"


def _cached_color(daemon: Any, tmp_path: Path, dsn: str, bed: Bed) -> bool:
    result = sync(tmp_path, dsn, {}, registry="grpc", path=f"127.0.0.1:{daemon.grpc_port}")
    assert result.returncode == 0, result.output[-3000:]
    if "spec_color" not in _columns(dsn, bed.table):
        return False
    with psycopg.connect(dsn) as conn:
        found = conn.execute(f"SELECT spec_color FROM {bed.table} WHERE context_name = %s", (CTX,)).fetchall()
    return found == [("blue",)]
