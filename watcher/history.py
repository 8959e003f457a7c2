"""Object history, the pure part: what one change of an object is, which kinds keep a
history, and the two history tables.

A change is computed for each new version of an object the cache writer stored (and
logged: :mod:`watcher.cache.history` derives the changes from the log, and keeps the
books): the *history document* of the new
version (the object as cached: no managedFields, no last-applied annotation, a
metadata-only kind's metadata only, and no resourceVersion, which has a column of its
own) is compared with the last recorded one, giving an RFC 6902 JSON patch and the paths
it touches; the object's ``managedFields`` entries that are new or moved since then name
*who* made the change (kubectl, helm, a controller, a user's tool) and how (Apply,
Update). A change that touches only ``/status`` is not recorded unless the policy asks
for status updates: the next recorded change's patch then starts from the last recorded
version, so the patches of an object always chain.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from watcher.resources import Column, ResourceDescriptor, path
from watcher.tables import keyed_schema

ChangeType = Literal["observed", "added", "modified", "deleted", "gap"]

CHANGES_TABLE = "k8s_object_changes"
LIFETIMES_TABLE = "k8s_object_lifetimes"
#: Append-only tables: a sync never deletes their rows at the destination (no
#: delete-record, and marked incremental so the CLI leaves them out of delete-stale).
HISTORY_TABLES = (CHANGES_TABLE, LIFETIMES_TABLE)
#: The cache keeps history rows as rows of its objects table under these resource keys
#: (a "~" never starts a Kubernetes resource name), so a sync reads, pages and follows
#: them exactly as it does objects.
CHANGES_KEY = "~history/changes"
LIFETIMES_KEY = "~history/lifetimes"
HISTORY_KEYS = (CHANGES_KEY, LIFETIMES_KEY)

#: Kinds without history unless the policy names them: churn few query (the nodes'
#: heartbeats, endpoints following every pod, events that are history already).
DEFAULT_OFF = (
    "events",
    "events.events.k8s.io",
    "leases.coordination.k8s.io",
    "endpoints",
    "endpointslices.*",
)

DAY = 86_400.0


@dataclass(frozen=True)
class HistoryPolicy:
    """Which kinds keep a history, and for how long."""

    enabled: bool = True
    #: Patterns (a table name, resource key, plural or kind; ``*`` globs) of kinds without history.
    off: tuple[str, ...] = DEFAULT_OFF
    #: Patterns of kinds with history even if ``off`` names them.
    on: tuple[str, ...] = ()
    #: Record changes that touch only ``/status`` (a pod's phase, a node's conditions).
    status_updates: bool = False
    #: Changes older than this are purged (and lifetimes of objects deleted before it).
    retention_seconds: float = DAY
    #: Beyond this many bytes of change rows, the oldest are purged first.
    max_bytes: int = 1 << 30
    #: Versions logged but not yet derived into change rows, at most, before the writer
    #: derives them between its writes however busy it is (``watcher.cache.writer``).
    backlog_max: int = 200_000

    def records(self, desc: ResourceDescriptor) -> bool:
        if not self.enabled:
            return False
        names = (desc.table, desc.key, desc.plural, desc.kind)
        if _matches(self.on, names):
            return True
        return not _matches(self.off, names)

    def keeps(self, paths: Sequence[str]) -> bool:
        """Whether a change touching ``paths`` is recorded (status-only ones may not be)."""
        return bool(paths) and (self.status_updates or not all(_under_status(p) for p in paths))


def same_but_status(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether two documents are the same JSON outside ``status``: then their patch would
    touch ``/status`` at most, so a policy without status updates need not compute it (a
    pod's status moves far more often than the rest of it). Compared as JSON text: ``1``
    and ``true`` differ, as in a patch; keys in another order merely take the patch."""
    return _dumps_but_status(old) == _dumps_but_status(new)


def _dumps_but_status(doc: Mapping[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in doc.items() if k != "status"})


def _matches(patterns: Iterable[str], names: Iterable[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(n.lower(), p) for p in patterns for n in names
    )


def _under_status(pointer: str) -> bool:
    return pointer == "/status" or pointer.startswith("/status/")


@dataclass(frozen=True, slots=True)
class HistoryKind:
    """What a change row names of its object's kind: kept with the logged versions, whose
    changes are derived later, without the informer's descriptor."""

    key: str
    kind: str
    api_version: str

    @classmethod
    def of(cls, desc: ResourceDescriptor) -> HistoryKind:
        return cls(desc.key, desc.kind, desc.api_version)


def history_doc(clean: Mapping[str, Any], desc: HistoryKind) -> dict[str, Any]:
    """The recorded document of a sanitized object (see the module doc)."""
    meta = {k: v for k, v in (clean.get("metadata") or {}).items() if k != "resourceVersion"}
    # A metadata-only watch returns PartialObjectMetadata: name the object's own kind.
    return {**clean, "apiVersion": desc.api_version, "kind": desc.kind, "metadata": meta}


# --------------------------------------------------------------------------- patches


def json_patch(old: Any, new: Any) -> list[dict[str, Any]]:
    """An RFC 6902 patch turning ``old`` into ``new``: ``add``, ``remove`` and ``replace``
    operations, lists compared index by index (no moves: a patch a reader can follow)."""
    ops: list[dict[str, Any]] = []
    _diff(old, new, "", ops)
    return ops


def _diff(old: Any, new: Any, at: str, ops: list[dict[str, Any]]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key, value in old.items():
            where = f"{at}/{_escape(key)}"
            if key not in new:
                ops.append({"op": "remove", "path": where})
            else:
                _diff(value, new[key], where, ops)
        ops.extend(
            {"op": "add", "path": f"{at}/{_escape(k)}", "value": v} for k, v in new.items() if k not in old
        )
    elif isinstance(old, list) and isinstance(new, list):
        common = min(len(old), len(new))
        for i in range(common):
            _diff(old[i], new[i], f"{at}/{i}", ops)
        # Highest index first: each removal leaves the indices before it valid.
        ops.extend({"op": "remove", "path": f"{at}/{i}"} for i in range(len(old) - 1, common - 1, -1))
        ops.extend({"op": "add", "path": f"{at}/{i}", "value": new[i]} for i in range(common, len(new)))
    elif type(old) is not type(new) or old != new:  # True == 1 in Python; not in JSON
        ops.append({"op": "replace", "path": at, "value": new})


def _escape(key: str) -> str:
    """A JSON pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


# --------------------------------------------------------------------------- managers

#: A managedFields entry as a head keeps it: manager, operation, subresource, time, a
#: fingerprint of its fieldsV1 (which fields it owns) and how many fields that is.
ManagerEntry = tuple[str, str, str, str, str, int]


def _fields(fields: Any) -> tuple[str, int]:
    """A fieldsV1's fingerprint and how many fields it names, from one serialization:
    every field is a key whose value is an object (``"f:image":{}``), so its count is
    the count of ``":{`` outside strings (inside one, the quote is escaped: ``\\":{``).
    (A key ending in a backslash would be miscounted; field paths have none.)"""
    raw = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    count = raw.count(b'":{') - raw.count(b'\\":{') if isinstance(fields, Mapping) else 0
    return hashlib.blake2b(raw, digest_size=8).hexdigest(), count


def managers_of(obj: Mapping[str, Any]) -> list[ManagerEntry]:
    """The field managers of a raw object (before ``sanitize`` drops managedFields)."""
    return manager_entries((obj.get("metadata") or {}).get("managedFields") or [])


def manager_entries(entries: Sequence[Any]) -> list[ManagerEntry]:
    """The field managers of an object's ``managedFields`` entries."""
    return [
        (
            str(e.get("manager") or ""),
            str(e.get("operation") or ""),
            str(e.get("subresource") or ""),
            str(e.get("time") or ""),
            *_fields(e.get("fieldsV1")),
        )
        for e in entries
        if isinstance(e, Mapping)
    ]


def changed_managers(before: Sequence[ManagerEntry], after: Sequence[ManagerEntry]) -> list[dict[str, str]]:
    """The managers that made this change since ``before``: an entry that is new, whose
    time moved, or whose fields changed without shrinking (the API server stamps the
    time with a second's precision: two changes in one second keep it). An entry that
    only lost fields is not an author: another manager took them over (a forced apply)."""
    known = {e[:3]: e[3:] for e in before}
    authors = []
    for m, op, sub, t, fp, size in after:
        old = known.get((m, op, sub))
        if old is None or old[0] != t or (old[1] != fp and size >= old[2]):
            authors.append({"manager": m, "operation": op, "subresource": sub, "time": t})
    return authors


# --------------------------------------------------------------------------- tables


def _value(name: str) -> Any:
    return path(name)


def _columns(*spec: tuple[str, Any]) -> tuple[Column, ...]:
    return tuple(Column(name, kind, _value(name)) for name, kind in spec)


#: ``k8s_object_changes`` after its key (context_name, change_seq).
CHANGE_COLUMNS = _columns(
    ("uid", "uuid"),
    ("change_type", "string"),
    ("observed_at", "timestamp"),
    ("kind", "string"),
    ("api_version", "string"),
    ("resource", "string"),
    ("namespace", "string"),
    ("name", "string"),
    ("resource_version", "string"),
    ("previous_resource_version", "string"),
    ("managers", "json"),
    ("paths", "string_list"),
    ("patch", "json"),
    ("object", "json"),
)

#: ``k8s_object_lifetimes`` after its key (context_name, uid).
LIFETIME_COLUMNS = _columns(
    ("kind", "string"),
    ("api_version", "string"),
    ("resource", "string"),
    ("namespace", "string"),
    ("name", "string"),
    ("created_at", "timestamp"),
    ("first_seen_at", "timestamp"),
    ("first_seen_as", "string"),
    ("deleted", "bool"),
    ("deleted_at", "timestamp"),
    ("lived_seconds", "float64"),
    ("first_change_seq", "int64"),
    ("last_change_seq", "int64"),
)

CHANGES_SCHEMA = keyed_schema(
    CHANGES_TABLE,
    (("change_seq", "int64"),),
    CHANGE_COLUMNS,
    "One row per recorded change of an object: what changed (a JSON patch from the previous "
    "recorded version), who changed it (field managers) and the object after it; 'gap' rows "
    "mark where a relist may have hidden versions",
    incremental=True,
)
LIFETIMES_SCHEMA = keyed_schema(
    LIFETIMES_TABLE,
    (("uid", "uuid"),),
    LIFETIME_COLUMNS,
    "One row per object with a history: when it was first seen and when it was deleted "
    "(objects that lived for seconds between two syncs included)",
    incremental=True,
)
