"""Typed tables per custom resource kind, beside the generic ``k8s_custom_objects``.

A CRD's table has the common columns, then one column per top-level property of
``spec`` and of ``status`` in the OpenAPI v3 schema of the version k8s-watcher watches
(its storage version when served): ``spec_<property>`` and ``status_<property>`` in
snake case, scalars typed, objects and arrays as JSON; then one per printer column
(``additionalPrinterColumns``), ``printer_<name>``, from its JSONPath.

Nothing is cached for them: a sync projects the cached custom objects through the
current CRD (:meth:`CustomTable.document`), so a CRD created, changed or deleted changes
the tables the next sync offers, and a value that does not fit its column's type (an
object written before the schema changed) is NULL rather than an error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa

from watcher.discovery import discovered_table
from watcher.resources import Column, ColumnType, custom_object_descriptor
from watcher.tables import COMMON_COLUMNS, document, table_schema

log = logging.getLogger(__name__)

#: OpenAPI v3 scalar types -> column types (anything else is JSON).
_OPENAPI_TYPES: dict[str, ColumnType] = {
    "integer": "int64",
    "number": "float64",
    "boolean": "bool",
    "string": "string",
}
#: additionalPrinterColumns types -> column types.
_PRINTER_TYPES: dict[str, ColumnType] = {**_OPENAPI_TYPES, "date": "timestamp"}


def snake(name: str) -> str:
    """``readyReplicas`` -> ``ready_replicas``; ``Last Seen`` -> ``last_seen``."""
    name = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _property_type(schema: Mapping[str, Any]) -> ColumnType:
    if schema.get("x-kubernetes-int-or-string"):
        return "string"
    type_ = _OPENAPI_TYPES.get(str(schema.get("type")), "json")
    if type_ == "string" and schema.get("format") == "date-time":
        return "timestamp"
    return type_


def coerce(value: Any, type_: ColumnType) -> Any:
    """``value`` as a column of ``type_`` holds it, or None when it does not fit."""
    if value is None or type_ == "json":
        return value
    if type_ == "int64":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if type_ == "float64":
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if type_ == "bool":
        return value if isinstance(value, bool) else None
    if type_ == "timestamp":
        try:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, bool):  # before int: bool is an int
        return str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)
    return None


# --------------------------------------------------------------------------- JSONPath

_STEP = re.compile(
    r"\.(?P<key>[A-Za-z0-9_\-]+)"
    r"|\[(?P<index>\d+)\]"
    r"|\[(?P<all>\*)\]"
    r"|\['(?P<quoted>[^']+)'\]"
    r"|\[\?\(@\.(?P<field>[A-Za-z0-9_\-.]+)\s*==\s*(?:\"(?P<dq>[^\"]*)\"|'(?P<sq>[^']*)'|(?P<num>-?\d+))\)\]"
)


def jsonpath(expression: str) -> list[dict[str, str | None]] | None:
    """The steps of the JSONPath subset printer columns use (``.a.b``, ``[0]``, ``[*]``,
    ``['a.b']``, ``[?(@.type=="Ready")]``), or None for anything else."""
    text = expression.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    steps, pos = [], 0
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None:
            return None
        steps.append(match.groupdict())
        pos = match.end()
    return steps or None


def evaluate(steps: list[dict[str, str | None]], obj: Any) -> list[Any]:
    """Every value the path reaches in ``obj``."""
    current = [obj]
    for step in steps:
        found: list[Any] = []
        for value in current:
            if step["key"] is not None or step["quoted"] is not None:
                key = step["key"] if step["key"] is not None else step["quoted"]
                if isinstance(value, Mapping) and key in value:
                    found.append(value[key])
            elif step["index"] is not None:
                if isinstance(value, list) and int(step["index"]) < len(value):
                    found.append(value[int(step["index"])])
            elif step["all"] is not None:
                found.extend(
                    value if isinstance(value, list) else value.values() if isinstance(value, Mapping) else ()
                )
            else:
                wanted = next(v for v in (step["dq"], step["sq"], step["num"]) if v is not None)
                for item in value if isinstance(value, list) else ():
                    got = evaluate(jsonpath("." + str(step["field"])) or [], item)
                    if got and str(got[0]) == wanted:
                        found.append(item)
        current = [v for v in found if v is not None]
    return current


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class TypedColumn:
    """A column of a CRD's table: where its value comes from and its type."""

    name: str
    type: ColumnType
    #: ("spec" | "status", property) or ("printer", JSONPath steps)
    source: tuple[str, Any]


@dataclass(frozen=True)
class CustomTable:
    """The typed table of one custom resource (all contexts that have its CRD)."""

    table: str
    resource: str  # the cache's resource key: <plural>.<group>
    kind: str
    typed: tuple[TypedColumn, ...]

    @property
    def columns(self) -> tuple[Column, ...]:
        return COMMON_COLUMNS + tuple(Column(c.name, c.type, _no_extract) for c in self.typed)

    def schema(self) -> pa.Schema:
        return table_schema(
            self.table,
            self.columns,
            f"{self.kind} custom objects ({self.resource}), typed from its CRD's schema",
        )

    def document(self, uid: str, values: Mapping[str, Any]) -> bytes:
        """The row document of one custom object, from its cached generic column values."""
        obj = {
            "metadata": {
                "name": values.get("name"),
                "namespace": values.get("namespace"),
                "uid": uid,
                "resourceVersion": values.get("resource_version"),
                "generation": values.get("generation"),
                "labels": values.get("labels"),
                "annotations": values.get("annotations"),
                "creationTimestamp": values.get("created_at"),
                "deletionTimestamp": values.get("deletion_timestamp"),
            },
            "spec": values.get("spec"),
            "status": values.get("status"),
        }
        row = {**values, "uid": uid}
        for col in self.typed:
            origin, where = col.source
            if origin == "printer":
                found = evaluate(where, obj)
                raw = found[0] if len(found) == 1 else (",".join(map(str, found)) if found else None)
            else:
                part = obj[origin]
                raw = part.get(where) if isinstance(part, Mapping) else None
            row[col.name] = coerce(raw, col.type)
        return document(row, self.columns)


def _no_extract(_obj: Mapping[str, Any]) -> Any:  # typed columns are projected, not extracted
    return None


def typed_columns(version: Mapping[str, Any]) -> tuple[list[TypedColumn], list[str]]:
    """The typed columns of one CRD version, and what could not be made a column."""
    columns: list[TypedColumn] = []
    problems: list[str] = []
    taken = {c.name for c in COMMON_COLUMNS} | {"context_name", "uid"}
    schema = (version.get("schema") or {}).get("openAPIV3Schema") or {}
    for part in ("spec", "status"):
        properties = ((schema.get("properties") or {}).get(part) or {}).get("properties") or {}
        for prop, prop_schema in properties.items():
            columns.append(TypedColumn(f"{part}_{snake(prop)}", _property_type(prop_schema), (part, prop)))
    for printer in version.get("additionalPrinterColumns") or []:
        steps = jsonpath(str(printer.get("jsonPath") or ""))
        if steps is None:
            problems.append(
                f"printer column {printer.get('name')!r}: JSONPath {printer.get('jsonPath')!r} not supported"
            )
            continue
        type_ = _PRINTER_TYPES.get(str(printer.get("type")), "string")
        columns.append(TypedColumn(f"printer_{snake(str(printer.get('name')))}", type_, ("printer", steps)))
    unique: list[TypedColumn] = []
    for col in columns:
        if col.name in taken:
            problems.append(f"column {col.name} appears twice; the second is left out")
            continue
        taken.add(col.name)
        unique.append(col)
    if not any(c.source[0] in ("spec", "status") for c in unique):
        problems.append(
            "its schema declares no spec or status properties (not structural?): no typed columns"
        )
    return unique, problems


def custom_tables(
    crds: Iterable[Mapping[str, Any]], taken: Iterable[str]
) -> tuple[dict[str, CustomTable], dict[str, list[str]]]:
    """The typed table of every CRD (cached ``k8s_custom_resources`` rows, of any number
    of contexts), and the problems found per resource. The same CRD in several contexts
    gives one table with the union of its columns (the first type of a name wins). A
    table name already ``taken``, or another CRD's, is a problem: that CRD gets none."""
    taken = set(taken)
    tables: dict[str, CustomTable] = {}
    owner: dict[str, str] = {}
    problems: dict[str, list[str]] = {}
    for crd in sorted(crds, key=lambda c: (str(c.get("plural")), str(c.get("group")))):
        desc = custom_object_descriptor(crd)
        if desc is None:
            continue
        key, table = desc.key, discovered_table(desc.group, desc.plural)
        if owner.get(table, key) != key or (table in taken and table not in owner):
            problems.setdefault(key, []).append(
                f"its table name {table} is taken ({owner.get(table) or 'built-in'})"
            )
            continue
        owner[table] = key
        version: dict[str, Any] = next(
            (v for v in (crd.get("spec") or {}).get("versions") or [] if v.get("name") == desc.version), {}
        )
        columns, found = typed_columns(version)
        known = problems.setdefault(key, [])
        known.extend(p for p in found if p not in known)
        previous = tables.get(table)
        if previous is not None:
            names = {c.name for c in previous.typed}
            columns = [*previous.typed, *(c for c in columns if c.name not in names)]
        if columns:
            tables[table] = CustomTable(table, key, desc.kind, tuple(columns))
    return tables, {k: v for k, v in problems.items() if v}
