"""Arrow schemas and row extraction, derived from the resource descriptors.

Columns are extracted once, when an event is written to the cache (``extract_row``),
and stored as one row document per object: a JSON object of the scalar columns, then
each JSON column's text as is (see ``encode_row``). A sync turns many such documents
into one Arrow RecordBatch: scalars through pyarrow's C++ JSON reader, JSON columns
by joining their bytes (``rows_to_batch``).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pajson
from cloudquery.sdk.types import JSONType, UUIDType

from watcher.resources import (
    CUSTOM_OBJECTS_TABLE,
    DISCOVERED_COLUMNS,
    Column,
    ColumnType,
    DerivedTable,
    ResourceDescriptor,
    custom_object_columns,
)

#: Annotation that kubectl apply fills with the whole applied object (for a Secret,
#: its data): never kept, whatever the kind.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

_S: ColumnType = "string"
_J: ColumnType = "json"
_T: ColumnType = "timestamp"
_SL: ColumnType = "string_list"

COMMON_COLUMNS: tuple[Column, ...] = (
    Column("name", _S, lambda o: o["metadata"].get("name")),
    Column("namespace", _S, lambda o: o["metadata"].get("namespace")),
    Column("resource_version", _S, lambda o: o["metadata"].get("resourceVersion")),
    Column("labels", _J, lambda o: o["metadata"].get("labels")),
    Column("annotations", _J, lambda o: o["metadata"].get("annotations")),
    Column("owner_references", _J, lambda o: o["metadata"].get("ownerReferences")),
    Column("finalizers", _SL, lambda o: o["metadata"].get("finalizers")),
    Column("generation", "int64", lambda o: o["metadata"].get("generation")),
    Column("spec", _J, lambda o: o.get("spec")),
    Column("status", _J, lambda o: o.get("status")),
    Column("created_at", _T, lambda o: o["metadata"].get("creationTimestamp")),
    Column("deletion_timestamp", _T, lambda o: o["metadata"].get("deletionTimestamp")),
    Column(
        "deletion_grace_period_seconds", "int64", lambda o: o["metadata"].get("deletionGracePeriodSeconds")
    ),
)

_UTC_US = pa.timestamp("us", tz="UTC")
_STORAGE_TYPES: dict[ColumnType, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "json": pa.string(),  # JSON text; wrapped in the JSON extension type after reading
    "timestamp": _UTC_US,
    "string_list": pa.list_(pa.string()),
    "uuid": pa.string(),  # canonical text; turned into the UUID extension type after reading
}
_OUTPUT_TYPES: dict[ColumnType, pa.DataType] = {**_STORAGE_TYPES, "json": JSONType(), "uuid": UUIDType()}


def columns_of(descriptor: ResourceDescriptor) -> tuple[Column, ...]:
    """All columns of the descriptor's table after ``context_name`` and ``uid``."""
    return COMMON_COLUMNS + descriptor.columns


def sanitize(obj: dict[str, Any], descriptor: ResourceDescriptor) -> dict[str, Any]:
    """Drop what must never be cached: managedFields (noise), last-applied (may hold
    secret data) and, for metadata-only kinds, everything outside ``metadata``."""
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    if descriptor.metadata_only:
        return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta}
    return {**obj, "metadata": meta}


#: Separates the parts of a row document. JSON text never holds a raw control
#: character (they are escaped inside strings), so splitting on it is exact.
_PART_SEP = b"\x1e"


def extract_row(obj: dict[str, Any], descriptor: ResourceDescriptor) -> bytes:
    """The cached row document of one object (``obj`` must already be sanitized)."""
    columns = columns_of(descriptor)
    return encode_row(obj["metadata"]["uid"], {c.name: c.extract(obj) for c in columns}, columns)


def derived_rows(
    obj: dict[str, Any], descriptor: ResourceDescriptor
) -> list[tuple[DerivedTable, str, str, bytes]]:
    """The rows derived from one (sanitized) object: (table, uid, name, row document)."""
    return [
        (
            derived,
            row["uid"],
            row["name"],
            encode_row(row["uid"], {c.name: c.extract(row) for c in derived.columns}, derived.columns),
        )
        for derived in descriptor.derived
        for row in derived.rows(obj)
    ]


def encode_row(uid: Any, values: Mapping[str, Any], columns: Sequence[Column]) -> bytes:
    """``{uid and scalar columns as JSON} RS json-column-1 RS json-column-2 ...``.

    JSON columns are kept out of the JSON object: inside it they would be escaped
    strings, which the read path would have to unescape on every sync (a third of
    the emission time). An empty part is NULL; datetimes are ISO 8601 in UTC (what
    pyarrow's JSON reader parses into timestamps).
    """
    scalars: dict[str, Any] = {"uid": uid}
    parts = [b""]
    for col in columns:
        value = values.get(col.name)
        if col.type == "json":
            parts.append(b"" if value is None else orjson.dumps(value))
        elif isinstance(value, datetime):
            scalars[col.name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        else:
            scalars[col.name] = value
    parts[0] = orjson.dumps(scalars)
    return _PART_SEP.join(parts)


def decode_row(row: bytes, columns: Sequence[Column]) -> dict[str, Any]:
    """A row document back to column values (JSON columns parsed)."""
    head, *parts = row.split(_PART_SEP)
    values: dict[str, Any] = orjson.loads(head)
    for col, part in zip((c for c in columns if c.type == "json"), parts, strict=True):
        values[col.name] = orjson.loads(part) if part else None
    return values


# --------------------------------------------------------------------------- schemas


def _field(name: str, type_: pa.DataType, *, pk: bool = False) -> pa.Field:
    meta = {b"cq:extension:primary_key": b"true", b"cq:extension:unique": b"false"} if pk else {}
    return pa.field(name, type_, nullable=not pk, metadata=meta or None)


def table_schema(table: str, columns: Sequence[Column], description: str = "") -> pa.Schema:
    """The CloudQuery table schema: ``(context_name, uid)`` primary key, then ``columns``."""
    return keyed_schema(table, (("uid", "uuid"),), columns, description)


def keyed_schema(
    table: str,
    key: Sequence[tuple[str, ColumnType]],
    columns: Sequence[Column],
    description: str = "",
    *,
    incremental: bool = False,
) -> pa.Schema:
    """A table keyed by ``context_name`` and ``key``, then ``columns``. ``incremental``
    marks a table whose rows a sync only adds (CloudQuery's incremental tables)."""
    fields = [_field("context_name", pa.string(), pk=True)]
    fields += [_field(name, _OUTPUT_TYPES[type_], pk=True) for name, type_ in key]
    fields += [_field(c.name, _OUTPUT_TYPES[c.type]) for c in columns]
    metadata = {b"cq:table_name": table.encode(), b"cq:table_description": description.encode()}
    if incremental:
        metadata[b"cq:extension:incremental"] = b"true"
    return pa.schema(fields, metadata=metadata)


def descriptor_schema(descriptor: ResourceDescriptor) -> pa.Schema:
    return table_schema(
        descriptor.table, columns_of(descriptor), f"Kubernetes {descriptor.kind} objects ({descriptor.key})"
    )


def derived_schema(derived: DerivedTable) -> pa.Schema:
    return table_schema(derived.table, derived.columns, derived.description)


def discovered_schema(table: str) -> pa.Schema:
    return table_schema(
        table,
        COMMON_COLUMNS + DISCOVERED_COLUMNS,
        "Objects of a resource found in the API server's discovery (generic columns)",
    )


def custom_objects_schema() -> pa.Schema:
    return table_schema(
        CUSTOM_OBJECTS_TABLE,
        COMMON_COLUMNS + custom_object_columns(""),
        "Instances of every CustomResourceDefinition (one row per custom object)",
    )


# --------------------------------------------------------------------------- rows -> Arrow


_HEX = np.zeros(256, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
#: Positions of the 32 hex digits in a canonical 36-character UUID.
UUID_HEX_POSITIONS = np.array([i for i in range(36) if i not in (8, 13, 18, 23)])


def uuid_bytes(uids: pa.Array) -> pa.Array:
    """Canonical UUID strings to the 16-byte UUID extension array, vectorised with
    numpy (pyarrow.compute would import pandas: 60 MB for one string replace)."""
    n = len(uids)
    if n == 0:
        return pa.ExtensionArray.from_storage(UUIDType(), pa.array([], pa.binary(16)))
    if uids.type != pa.string():
        uids = uids.cast(pa.string())
    offsets = np.frombuffer(uids.buffers()[1], dtype=np.int32)[uids.offset : uids.offset + n + 1]
    bitmap = None
    if uids.null_count or not np.all(np.diff(offsets) == 36):
        values = uids.to_pylist()
        raw = b"".join(uuid.UUID(u).bytes if u is not None else bytes(16) for u in values)
        if uids.null_count:
            valid = np.fromiter((u is not None for u in values), np.bool_, n)
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little").tobytes())
    else:
        chars = np.frombuffer(uids.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[0] + 36 * n].reshape(
            n, 36
        )
        nibbles = _HEX[chars[:, UUID_HEX_POSITIONS]]
        raw = ((nibbles[:, 0::2] << 4) | nibbles[:, 1::2]).tobytes()
    storage = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), n, [bitmap, pa.py_buffer(raw)], uids.null_count
    )
    return pa.ExtensionArray.from_storage(UUIDType(), storage)


def _repeated(value: str, n: int) -> pa.Array:
    """``value`` n times as a string array, built from buffers (no pandas probe)."""
    data = value.encode()
    offsets = (np.arange(n + 1, dtype=np.int32) * len(data)).tobytes()
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data * n)])


def _strings(values: Sequence[str]) -> pa.Array:
    """Strings as a string array, built from buffers (no pandas probe)."""
    return _joined([v.encode() for v in values]).cast(pa.string())


def _joined(parts: list[bytes]) -> pa.Array:
    """Byte strings as one binary array built from buffers; an empty one is NULL."""
    n = len(parts)
    lengths = np.fromiter(map(len, parts), np.int32, n)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    valid = lengths > 0
    nulls = n - int(np.count_nonzero(valid))
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little").tobytes()) if nulls else None
    return pa.Array.from_buffers(
        pa.binary(), n, [bitmap, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(parts))], nulls
    )


def rows_to_batch(schema: pa.Schema, context: str | Sequence[str], rows: Sequence[bytes]) -> pa.RecordBatch:
    """Build one RecordBatch of ``schema`` from row documents of one context (or of
    several: ``context`` then names each row's).

    Every array is built by pyarrow's JSON reader or from buffers: converting Python
    objects (``pa.array``) makes pyarrow import pandas, 45 MB the daemon can spare.
    """
    if not rows:
        return pa.RecordBatch.from_arrays([pa.nulls(0, f.type) for f in schema], schema=schema)
    json_fields = [f.name for f in schema if isinstance(f.type, JSONType)]
    split = [r.split(_PART_SEP) for r in rows]
    storage_schema = pa.schema(
        [
            pa.field(f.name, pa.string() if isinstance(f.type, UUIDType) else f.type)
            for f in schema
            if f.name != "context_name" and not isinstance(f.type, JSONType)
        ]
    )
    table = pajson.read_json(
        io.BytesIO(b"\n".join([parts[0] for parts in split])),
        # 1 MB blocks: pyarrow parses blocks on all cores.
        read_options=pajson.ReadOptions(block_size=1 << 20),
        parse_options=pajson.ParseOptions(explicit_schema=storage_schema, unexpected_field_behavior="ignore"),
    ).combine_chunks()
    json_arrays = {name: _joined([parts[i] for parts in split]) for i, name in enumerate(json_fields, 1)}
    del split
    arrays: list[pa.Array] = [
        _repeated(context, len(rows)) if isinstance(context, str) else _strings(context)
    ]
    for f in schema:
        if f.name == "context_name":
            continue
        if isinstance(f.type, JSONType):
            arrays.append(pa.ExtensionArray.from_storage(JSONType(), json_arrays[f.name]))
            continue
        arr = table.column(f.name).chunk(0)
        arrays.append(uuid_bytes(arr) if isinstance(f.type, UUIDType) else arr)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def document(values: Mapping[str, Any], columns: Sequence[Column]) -> bytes:
    """A row document (as cached) from Python values (``values["uid"]`` included)."""
    return encode_row(values.get("uid"), values, columns)
