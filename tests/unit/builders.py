"""Objects the unit tests build: Kubernetes objects, informer statuses, and raw reads
of a cache file (SQL on purpose: they check what the writer stored, row by row)."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from watcher import state
from watcher.history import HistoryPolicy
from watcher.resources import BY_KEY
from watcher.state import CacheStore, InformerStatus

PODS, CMS, SECRETS = BY_KEY["pods"], BY_KEY["configmaps"], BY_KEY["secrets"]
#: For tests of the objects' own seq arithmetic: history rows take seqs too (test_history).
NO_HISTORY = HistoryPolicy(enabled=False)


def meta(name: str = "obj", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "ns",
        "uid": str(uuid.uuid4()),
        "resourceVersion": "1",
        "creationTimestamp": "2024-05-01T12:34:56Z",
        **extra,
    }


def running_pod(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta("web", labels={"app": "web"}, finalizers=["x/y"], generation=3),
        "spec": {
            "nodeName": "node-1",
            "initContainers": [{"name": "init", "image": "busybox:1"}],
            "containers": [{"name": "a", "image": "nginx:1.27"}, {"name": "b", "image": "envoy:1"}],
        },
        "status": {
            "phase": "Running",
            "startTime": "2024-05-01T12:35:00Z",
            "containerStatuses": [{"restartCount": 2}, {"restartCount": 3}],
            "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "False"}],
            **status,
        },
    }


def _core_object(kind: str, name: str, uid: str, rv: str, data: dict[str, str]) -> dict[str, Any]:
    """A namespaced core/v1 object with ``data``, as the API server returns it."""
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": rv},
        "data": data,
    }


def configmap(name: str, uid: str, rv: str, **data: str) -> dict[str, Any]:
    return _core_object("ConfigMap", name, uid, rv, data)


def secret(name: str, uid: str, rv: str, **data: str) -> dict[str, Any]:
    """A Secret (``data``: base64 values)."""
    return _core_object("Secret", name, uid, rv, data)


def crd_row(**overrides: Any) -> dict[str, Any]:
    """A cached k8s_custom_resources row, as custom_object_descriptor reads it."""
    row = {
        "group": "example.com",
        "kind": "Widget",
        "plural": "widgets",
        "scope": "Namespaced",
        "served_versions": ["v1alpha1", "v1beta1", "v1"],
        "storage_version": "v1beta1",
    }
    row.update(overrides)
    return row


def informer_status(desc: Any = CMS, state: str = "watching", rv: str | None = None) -> InformerStatus:
    return InformerStatus(
        context="ctx", resource=desc.key, table_name=desc.table, state=state, resource_version=rv
    )


def stored_rows(store: CacheStore) -> dict[str, dict[str, Any]]:
    """Every object's row of ``objects`` by object name (not the history's rows), once the
    writer has caught up: the writer's tests look at its raw rows (tombstones, seqs, list
    generations), which no reader outside the cache needs; everything else is read
    through the reader API below."""
    store.flush()
    con = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return {r["name"]: dict(r) for r in con.execute("SELECT * FROM objects WHERE resource NOT LIKE '~%'")}
    finally:
        con.close()


def checkpoints_of(store: CacheStore, context: str | None = None) -> list[dict[str, Any]]:
    """The checkpoint rows committed so far, through the cache's reader API."""
    store.flush()
    with state.reading(store.location) as conn:
        return state.read_checkpoints(conn, context)


def cache_meta(store: CacheStore, key: str) -> str | None:
    store.flush()
    with state.reading(store.location) as conn:
        return state.read_meta(conn, key)


def purged_seq(store: CacheStore, context: str = "ctx") -> int:
    """Up to where the context's tombstones are purged."""
    store.flush()
    with state.reading(store.location) as conn:
        return state.read_context_logs(conn)[context].purged_seq


def seq_of(store: CacheStore, context: str = "ctx") -> int:
    """The newest change seq of one context, once the writer has caught up."""
    store.flush()
    return store.owned_positions().get(context, 0)


def query_cache(store: CacheStore, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Raw SQL on the writer's SQLite file (see :func:`stored_rows`)."""
    store.flush()
    con = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def named_configmap(name: str, rv: str, **data: str) -> dict[str, Any]:
    """A ConfigMap whose uid follows from its name: the same object at another RV."""
    return configmap(name, str(uuid.uuid5(uuid.NAMESPACE_URL, f"configmap/{name}")), rv, **data)
