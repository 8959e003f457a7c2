"""The catalog of tables: which tables exist, their Arrow schemas, and which resources
feed them. The one place to look when adding or changing a table.

- built-in tables: ``k8s_clusters`` (built per sync from the cache, see ``clusters``),
  one per resource in ``resources.RESOURCES`` plus the tables derived from them, and
  ``k8s_custom_objects``, and the history tables (``k8s_object_changes``,
  ``k8s_object_lifetimes``: ``history``), which only ever gain rows at the destination;
- discovered tables (``k8s_<group>_<plural>``, CRDs and aggregated APIs) are planned
  by ``discovery`` at run time; their schema is the generic one from ``tables``.

It sits below the spec, discovery, the cache and the readers: it imports only the
declarations (``resources``, ``tables``, ``clusters``, ``history``), never a layer that uses it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import pyarrow as pa

from watcher.clusters import CLUSTERS_SCHEMA, CLUSTERS_TABLE
from watcher.history import CHANGES_SCHEMA, CHANGES_TABLE, HISTORY_TABLES, LIFETIMES_SCHEMA, LIFETIMES_TABLE
from watcher.resources import (
    BY_TABLE,
    CRD,
    CUSTOM_OBJECTS_TABLE,
    DERIVED_BY_TABLE,
    NODES,
    RESOURCES,
    ResourceDescriptor,
)
from watcher.tables import custom_objects_schema, derived_schema, descriptor_schema, discovered_schema

__all__ = [
    "ALL_TABLES",
    "CLUSTERS_TABLE",
    "CUSTOM_OBJECTS_TABLE",
    "DEFAULT_TABLES",
    "HISTORY_TABLES",
    "excluded",
    "needed_resources",
    "schema_for",
    "selects",
]

#: Every built-in table, in the order a sync emits them (discovered tables come after).
ALL_TABLES: tuple[str, ...] = (
    CLUSTERS_TABLE,
    *(t for d in RESOURCES for t in (d.table, *(x.table for x in d.derived))),
    CUSTOM_OBJECTS_TABLE,
    *HISTORY_TABLES,
)


def selects(pattern: str, table: str) -> bool:
    """Whether a source's ``tables`` pattern selects ``table``. The history tables are
    synced when asked for: a catch-all pattern (one that also selects k8s_clusters: ``*``,
    ``k8s_*``) leaves them out, so a configuration written before them syncs what it
    did; their names, or ``k8s_object_*``, select them."""
    if not fnmatch.fnmatchcase(table, pattern):
        return False
    return table not in HISTORY_TABLES or not fnmatch.fnmatchcase(CLUSTERS_TABLE, pattern)


#: The built-in tables a catch-all ``tables: ["*"]`` syncs (all but the history's).
DEFAULT_TABLES: tuple[str, ...] = tuple(t for t in ALL_TABLES if selects("*", t))


def schema_for(table: str) -> pa.Schema:
    """The Arrow schema of a table, built-in or discovered."""
    if table == CLUSTERS_TABLE:
        return CLUSTERS_SCHEMA
    if table == CUSTOM_OBJECTS_TABLE:
        return custom_objects_schema()
    if table == CHANGES_TABLE:
        return CHANGES_SCHEMA
    if table == LIFETIMES_TABLE:
        return LIFETIMES_SCHEMA
    if table in DERIVED_BY_TABLE:
        return derived_schema(DERIVED_BY_TABLE[table][1])
    if table in BY_TABLE:
        return descriptor_schema(BY_TABLE[table])
    return discovered_schema(table)


def needed_resources(tables: tuple[str, ...], *, discovery: bool = False) -> list[ResourceDescriptor]:
    """The built-in resources the selected tables are made from (and the CRDs, which
    tell discovered resources from custom ones, with ``discovery``)."""
    needed: list[ResourceDescriptor] = [CRD] if discovery else []
    for table in tables:
        if table == CLUSTERS_TABLE:
            needed += [BY_TABLE["k8s_namespaces"], NODES]
        elif table == CUSTOM_OBJECTS_TABLE:
            needed.append(CRD)
        elif table in HISTORY_TABLES:
            continue  # recorded from whichever resources are watched (the history policy)
        elif table in DERIVED_BY_TABLE:
            needed.append(DERIVED_BY_TABLE[table][0])
        else:
            needed.append(BY_TABLE[table])
    return list(dict.fromkeys(needed))


def excluded(exclude: Iterable[str], *names: str) -> bool:
    """Whether a pattern of ``exclude`` matches one of the names of a kind (its plural,
    its key, its table)."""
    return any(fnmatch.fnmatchcase(n, p) for p in exclude for n in names)
