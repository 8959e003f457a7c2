"""The cache reader: every query against the cache's tables outside the writer.
Status, the snapshot reader (syncs), the daemon's metrics, the tests and the
benchmarks read the cache through these functions, on a connection of their own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError

from watcher.cache import backend
from watcher.cache.backend import CacheLocation, CacheUnusable
from watcher.cache.schema import (
    checkpoints,
    clusters,
    context_seqs,
    format_problem,
    meta,
    objects,
    retired_contexts,
    unusable_reason,
)
from watcher.resources import CRD, NODES
from watcher.tables import columns_of, decode_row


def open_reader(where: CacheLocation | Path | str) -> Engine:
    """A read-only engine on the cache (a daemon may be writing it meanwhile)."""
    location = CacheLocation.of(where)
    if not location.is_sqlite:
        engine = backend.postgres_engine(location)
        backend.check_reachable(location, engine)
        with engine.connect() as conn:
            try:
                problem = format_problem(read_meta(conn, "schema_version"))
            except DBAPIError:
                problem = "no cache tables (no daemon has written it yet)"
        if problem:
            engine.dispose()
            raise CacheUnusable(f"cache database {location}: {problem}")
        return engine
    path = location.path
    if not path.exists():
        raise CacheUnusable(f"cache file {path} does not exist")
    reason = unusable_reason(path, thorough=False)
    if reason:
        raise CacheUnusable(f"cache file {path}: {reason}")
    return backend.sqlite_engine(path, readonly=True)


def read_checkpoints(conn: Any, context: str | None = None) -> list[dict[str, Any]]:
    query = select(checkpoints).order_by(checkpoints.c.context, checkpoints.c.resource)
    if context is not None:
        query = query.where(checkpoints.c.context == context)
    return [dict(r._mapping) for r in conn.execute(query)]


@contextmanager
def reading(where: CacheLocation | Path | str) -> Iterator[Any]:
    """One read-only connection to the cache (status, tests, bench)."""
    engine = open_reader(where)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def stored_resource_versions(conn: Any, context: str) -> dict[str, str]:
    """resource -> the resourceVersion its informer checkpointed (listed resources only)."""
    rows = conn.execute(
        select(checkpoints.c.resource, checkpoints.c.resource_version).where(checkpoints.c.context == context)
    ).all()
    return {str(r): str(v) for r, v in rows if v}


def live_versions(conn: Any, context: str, resource: str, namespace: str | None = None) -> dict[str, str]:
    """uid -> resourceVersion of the live (not deleted) cached objects of one resource
    (in one namespace, if given): what a consistent LIST of the API server must equal."""
    query = select(objects.c.uid, objects.c.resource_version).where(
        (objects.c.context == context) & (objects.c.resource == resource) & (objects.c.deleted == False)  # noqa: E712
    )
    if namespace is not None:
        query = query.where(objects.c.namespace == namespace)
    return {str(u): str(v) for u, v in conn.execute(query)}


def live_names(conn: Any, context: str, resource: str, namespace: str | None = None) -> list[str]:
    """Names of the live cached objects of one resource (in one namespace, if given)."""
    query = select(objects.c.name).where(
        (objects.c.context == context) & (objects.c.resource == resource) & (objects.c.deleted == False)  # noqa: E712
    )
    if namespace is not None:
        query = query.where(objects.c.namespace == namespace)
    return [str(n) for (n,) in conn.execute(query)]


def read_clusters(conn: Any) -> list[dict[str, Any]]:
    """What the cache knows about each context (kubeconfig entry, server version, last error)."""
    return [dict(r._mapping) for r in conn.execute(select(clusters).order_by(clusters.c.context))]


def read_retired_contexts(conn: Any) -> list[dict[str, Any]]:
    """Contexts removed from the kubeconfig whose tombstones are still kept."""
    query = select(retired_contexts).order_by(retired_contexts.c.context)
    return [dict(r._mapping) for r in conn.execute(query)]


def read_meta(conn: Any, key: str) -> str | None:
    return cast(str | None, conn.execute(select(meta.c.value).where(meta.c.key == key)).scalar_one_or_none())


@dataclass(frozen=True)
class ContextLog:
    """One context's change sequence as a reader sees it."""

    seq: int
    purged_seq: int
    owner: str | None


def read_context_logs(conn: Any) -> dict[str, ContextLog]:
    """context -> its change sequence: newest seq, purge point, owner."""
    rows = conn.execute(
        select(context_seqs.c.context, context_seqs.c.seq, context_seqs.c.purged_seq, context_seqs.c.owner)
    )
    return {str(c): ContextLog(int(s), int(p or 0), o) for c, s, p, o in rows}


def read_positions(conn: Any) -> dict[str, int]:
    """context -> newest seq (one small read: what a follow sync polls)."""
    return {str(c): int(s) for c, s in conn.execute(select(context_seqs.c.context, context_seqs.c.seq))}


def count_rows(conn: Any) -> dict[str, int]:
    """Live (not deleted) cached objects per table."""
    rows = conn.execute(
        text("SELECT table_name, count(*) FROM objects WHERE NOT deleted GROUP BY table_name")
    ).all()
    return {str(t): int(n) for t, n in rows}


# -- what a sync reads (watcher.snapshot), inside its one read transaction -------------


def live_crds(conn: Any, contexts: Sequence[str]) -> list[dict[str, Any]]:
    """The cached CustomResourceDefinitions of these contexts, as decoded rows."""
    query = select(objects.c.row).where(
        (objects.c.resource == CRD.key) & objects.c.context.in_(contexts) & (objects.c.deleted == False)  # noqa: E712
    )
    return [decode_row(row, columns_of(CRD)) for (row,) in conn.execute(query)]


def _rows_of(table: str, resource: str | None) -> Any:
    """Which cached rows a table is made of: its own, or (``resource``, a CRD's typed
    table) the custom objects of one resource."""
    return objects.c.resource == resource if resource is not None else objects.c.table_name == table


def live_row_cursor(
    conn: Any,
    table: str,
    contexts: str | Sequence[str],
    *,
    resource: str | None = None,
    since_seq: int | None = None,
    with_uid: bool = False,
) -> Any:
    """A DB-API cursor (for ``fetchmany``) over the live rows of ``table`` in one context
    (a str) or several (then each row ends with its context), changed after
    ``since_seq`` if given. Rows are ``(row document[, uid][, context])``."""
    one = isinstance(contexts, str)
    where = objects.c.context == contexts if one else objects.c.context.in_(contexts)
    if since_seq is not None:
        where &= objects.c.seq > since_seq
    # The uid only for a typed table's projection: the hot path reads row documents alone.
    columns = [objects.c.row, objects.c.uid] if with_uid else [objects.c.row]
    if not one:
        columns.append(objects.c.context)
    query = select(*columns).where(_rows_of(table, resource) & where & (objects.c.deleted == False))  # noqa: E712
    # No ORDER BY: any order is a snapshot, and sorting row blobs costs more than reading them.
    return backend.stream_rows(conn, query)


def deleted_uids(
    conn: Any, table: str, context: str, *, since_seq: int, resource: str | None = None
) -> list[str]:
    """uids of the objects of a table deleted after ``since_seq`` (tombstones)."""
    result = conn.execute(
        select(objects.c.uid).where(
            _rows_of(table, resource)
            & (objects.c.context == context)
            & (objects.c.deleted == True)  # noqa: E712
            & (objects.c.seq > since_seq)
        )
    )
    return [str(u) for (u,) in result]


def changed_since(conn: Any, context: str, seq: int) -> list[tuple[str, str]]:
    """(table, resource) of every write or deletion in a context after ``seq``: one range
    read of the context's seq index."""
    result = conn.execute(
        select(objects.c.table_name, objects.c.resource)
        .where((objects.c.context == context) & (objects.c.seq > seq))
        .distinct()
    )
    return [(str(table), str(resource)) for table, resource in result]


@dataclass(frozen=True)
class ClusterView:
    """What the cache holds about one context for its ``k8s_clusters`` row."""

    #: The ``clusters`` row (kubeconfig entry, server version, last error), {} if none.
    info: dict[str, Any]
    kube_system_uid: str | None
    node_count: int


def read_cluster_view(conn: Any, context: str) -> ClusterView:
    live = objects.c.deleted == False  # noqa: E712
    kube_system = conn.execute(
        select(objects.c.uid).where(
            (objects.c.context == context)
            & (objects.c.resource == "namespaces")
            & (objects.c.name == "kube-system")
            & live
        )
    ).scalar_one_or_none()
    nodes = conn.execute(
        select(func.count())
        .select_from(objects)
        .where((objects.c.context == context) & (objects.c.resource == NODES.key) & live)
    ).scalar_one()
    info = conn.execute(select(clusters).where(clusters.c.context == context)).mappings().first()
    return ClusterView(info=dict(info) if info else {}, kube_system_uid=kube_system, node_count=int(nodes))
