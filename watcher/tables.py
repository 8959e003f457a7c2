"""Arrow schemas and row extraction, derived from the resource descriptors.

Columns are extracted once, when an event is written to the cache (``extract_row``),
and stored as one JSON document per object. A sync turns many such documents into
one Arrow RecordBatch with pyarrow's C++ JSON reader (``rows_to_batch``): no Python
code runs per row on the read path.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pajson
from cloudquery.sdk.types import JSONType, UUIDType

from watcher.resources import (
    CUSTOM_OBJECTS_TABLE,
    Column,
    ColumnType,
    ResourceDescriptor,
    custom_object_columns,
)

#: Annotation that kubectl apply fills with the whole applied object (for a Secret,
#: its data): never kept, whatever the kind.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

_S, _J, _T, _SL = "string", "json", "timestamp", "string_list"

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
)

_UTC_US = pa.timestamp("us", tz="UTC")
_STORAGE_TYPES: dict[ColumnType, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
    "json": pa.string(),  # JSON text; wrapped in the JSON extension type after reading
    "timestamp": _UTC_US,
    "string_list": pa.list_(pa.string()),
    "int64_list": pa.list_(pa.int64()),
}
_OUTPUT_TYPES: dict[ColumnType, pa.DataType] = {**_STORAGE_TYPES, "json": JSONType()}


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


def extract_row(obj: dict[str, Any], descriptor: ResourceDescriptor) -> bytes:
    """The cached JSON document of one object: every column of its table, JSON columns
    as JSON text. ``obj`` must already be sanitized."""
    row: dict[str, Any] = {"uid": obj["metadata"]["uid"]}
    for col in columns_of(descriptor):
        value = col.extract(obj)
        if col.type == "json":
            value = None if value is None else orjson.dumps(value).decode()
        row[col.name] = value
    return orjson.dumps(row)


# --------------------------------------------------------------------------- schemas


def _field(name: str, type_: pa.DataType, *, pk: bool = False, not_null: bool = False) -> pa.Field:
    meta = {b"cq:extension:primary_key": b"true", b"cq:extension:unique": b"false"} if pk else {}
    return pa.field(name, type_, nullable=not (pk or not_null), metadata=meta or None)


def table_schema(table: str, columns: Sequence[Column], description: str = "") -> pa.Schema:
    """The CloudQuery table schema: ``(context_name, uid)`` primary key, then ``columns``."""
    fields = [_field("context_name", pa.string(), pk=True), _field("uid", UUIDType(), pk=True)]
    fields += [_field(c.name, _OUTPUT_TYPES[c.type]) for c in columns]
    return pa.schema(
        fields,
        metadata={b"cq:table_name": table.encode(), b"cq:table_description": description.encode()},
    )


def descriptor_schema(descriptor: ResourceDescriptor) -> pa.Schema:
    return table_schema(
        descriptor.table, columns_of(descriptor), f"Kubernetes {descriptor.kind} objects ({descriptor.key})"
    )


def custom_objects_schema() -> pa.Schema:
    return table_schema(
        CUSTOM_OBJECTS_TABLE,
        COMMON_COLUMNS + custom_object_columns(""),
        "Instances of every CustomResourceDefinition (one row per custom object)",
    )


# --------------------------------------------------------------------------- rows -> Arrow


def uuid_bytes(uids: pa.Array) -> pa.Array:
    """Canonical UUID strings to the 16-byte UUID extension array, vectorised."""
    if len(uids) == 0:
        return pa.ExtensionArray.from_storage(UUIDType(), pa.array([], pa.binary(16)))
    hexed = np.frombuffer(
        pa.compute.replace_substring(uids, "-", "").cast(pa.large_string()).buffers()[2],
        dtype=np.uint8,
    )
    hexed = hexed[: len(uids) * 32].reshape(len(uids), 32)
    lut = np.zeros(256, dtype=np.uint8)
    lut[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
    lut[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)
    nibbles = lut[hexed]
    raw = (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]
    storage = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), len(uids), [None, pa.py_buffer(raw.tobytes())]
    )
    return pa.ExtensionArray.from_storage(UUIDType(), storage)


def rows_to_batch(schema: pa.Schema, context: str, rows: Sequence[bytes]) -> pa.RecordBatch:
    """Build one RecordBatch of ``schema`` from cached row documents of one context."""
    storage_fields = [
        pa.field(f.name, pa.string() if isinstance(f.type, (JSONType, UUIDType)) else f.type)
        for f in schema
        if f.name != "context_name"
    ]
    storage_schema = pa.schema(storage_fields)
    if rows:
        table = pajson.read_json(
            io.BytesIO(b"\n".join(rows)),
            read_options=pajson.ReadOptions(block_size=1 << 26),
            parse_options=pajson.ParseOptions(
                explicit_schema=storage_schema, unexpected_field_behavior="ignore"
            ),
        ).combine_chunks()
    else:
        table = storage_schema.empty_table()
    arrays: list[pa.Array] = [pa.array([context] * len(rows), pa.string())] if rows else [pa.array([], pa.string())]
    for f in schema:
        if f.name == "context_name":
            continue
        col = table.column(f.name)
        arr = col.chunk(0) if col.num_chunks == 1 else pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], col.type)
        if isinstance(f.type, UUIDType):
            arr = uuid_bytes(arr)
        elif isinstance(f.type, JSONType):
            arr = pa.ExtensionArray.from_storage(JSONType(), arr.cast(pa.binary()))
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def python_rows_to_batch(schema: pa.Schema, rows: Iterable[Mapping[str, Any]]) -> pa.RecordBatch:
    """A small batch from Python dicts (cluster rows): JSON values are dumped here."""
    rows = list(rows)
    arrays = []
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if isinstance(f.type, UUIDType):
            arrays.append(uuid_bytes(pa.array(values, pa.string())))
        elif isinstance(f.type, JSONType):
            dumped = [None if v is None else orjson.dumps(v) for v in values]
            arrays.append(pa.ExtensionArray.from_storage(JSONType(), pa.array(dumped, pa.binary())))
        else:
            arrays.append(pa.array(values, f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
