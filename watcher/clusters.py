"""``k8s_clusters``: one row per kubeconfig context, in one place (name, columns, row).

Unlike the other tables it is not cached per object: a sync builds each context's row
from what the cache knows about it (the kubeconfig's cluster entry and server version,
the informers' checkpoints, the kube-system namespace, the nodes).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from watcher.informerstate import UNSERVED, informer_state
from watcher.resources import Column
from watcher.tables import document, rows_to_batch, table_schema

CLUSTERS_TABLE = "k8s_clusters"

#: The kube-system namespace's uid is the de facto cluster identity (what cluster-api,
#: Datadog and others use); clusters that lack it get a stable uuid5 of their server.
_CLUSTER_ID_NS = uuid.UUID("6f1f7a52-58a3-4c1e-9b1c-0f4a2f3c9d11")

CLUSTER_COLUMNS: tuple[Column, ...] = tuple(
    Column(name, type_, lambda _o: None)  # type: ignore[arg-type]
    for name, type_ in (
        ("cluster_name", "string"),
        ("server", "string"),
        ("ca_file", "string"),
        ("insecure_skip_verify", "bool"),
        ("namespace", "string"),
        ("kubernetes_version", "string"),
        ("node_count", "int64"),
        ("synced_at", "timestamp"),
        ("created_at", "timestamp"),
        ("updated_at", "timestamp"),
        ("informer_states", "json"),
        ("informers_total", "int64"),
        ("informers_watching", "int64"),
        ("last_event_at", "timestamp"),
        ("last_list_at", "timestamp"),
        ("cache_staleness_seconds", "int64"),
        ("last_error", "string"),
    )
)

CLUSTERS_SCHEMA = table_schema(
    CLUSTERS_TABLE, CLUSTER_COLUMNS, "One row per kubeconfig context, with cache freshness"
)


@dataclass(frozen=True)
class ClusterFacts:
    """What the cache knows about one context, as a sync reads it."""

    context: str
    #: The ``clusters`` row: kubeconfig entry, server version, last error, times.
    info: Mapping[str, Any]
    #: The informers' checkpoint rows (state, last event/list, updated_at).
    checkpoints: Sequence[Mapping[str, Any]]
    kube_system_uid: str | None
    node_count: int
    daemon_heartbeat: float


def _ts(value: float | None) -> Any:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def cluster_batch(facts: ClusterFacts, now: float) -> pa.RecordBatch:
    """The context's ``k8s_clusters`` row as a one-row record batch."""
    info = facts.info
    cps = [c for c in facts.checkpoints if c["state"] != UNSERVED]
    last_event = max((c["last_event_at"] or 0 for c in cps), default=0) or None
    last_list = max((c["last_list_at"] or 0 for c in cps), default=0) or None
    newest = max([c["updated_at"] for c in cps] + [facts.daemon_heartbeat], default=0)
    server = info.get("server") or ""
    row = {
        "uid": facts.kube_system_uid or str(uuid.uuid5(_CLUSTER_ID_NS, f"{facts.context}|{server}")),
        "cluster_name": info.get("cluster_name"),
        "server": server or None,
        "ca_file": info.get("ca_file"),
        "insecure_skip_verify": info.get("insecure_skip_verify"),
        "namespace": info.get("namespace"),
        "kubernetes_version": info.get("kubernetes_version"),
        "node_count": facts.node_count,
        "synced_at": _ts(now),
        "created_at": _ts(info.get("created_at")),
        "updated_at": _ts(info.get("updated_at")),
        "informer_states": {c["resource"]: c["state"] for c in cps},
        "informers_total": len(cps),
        "informers_watching": sum(1 for c in cps if informer_state(c["state"]).synced),
        "last_event_at": _ts(last_event),
        "last_list_at": _ts(last_list),
        "cache_staleness_seconds": int(now - newest) if newest else None,
        "last_error": info.get("last_error"),
    }
    return rows_to_batch(CLUSTERS_SCHEMA, facts.context, [document(row, CLUSTER_COLUMNS)])
