"""Row documents (columns extracted at write time) and Arrow record batches (watcher.tables)."""

from __future__ import annotations

import datetime as dt
import random
import uuid
from typing import Any

import orjson
import pyarrow as pa
import pytest
from cloudquery.sdk.types import JSONType, UUIDType

from tests.unit.builders import PODS, crd_row, meta, running_pod
from watcher.resources import (
    RESOURCES,
    Column,
    custom_object_descriptor,
)
from watcher.tables import (
    COMMON_COLUMNS,
    columns_of,
    custom_objects_schema,
    decode_row,
    descriptor_schema,
    document,
    extract_row,
    rows_to_batch,
    sanitize,
    table_schema,
    uuid_bytes,
)

UTC = dt.UTC


def test_a_pod_row_has_every_column_with_json_parts_after_the_scalars() -> None:
    pod = running_pod()
    raw = extract_row(sanitize(pod, PODS), PODS)
    row = decode_row(raw, columns_of(PODS))
    assert row["uid"] == pod["metadata"]["uid"]
    assert row["name"] == "web" and row["namespace"] == "ns"
    assert row["images"] == ["busybox:1", "nginx:1.27", "envoy:1"]
    assert row["restart_count"] == 5
    assert row["phase"] == "Running"
    assert row["node_name"] == "node-1"
    assert row["ready"] is False
    assert row["pod_ip"] is None
    assert row["generation"] == 3
    assert row["finalizers"] == ["x/y"]
    assert row["created_at"] == "2024-05-01T12:34:56Z"
    # JSON columns follow the scalars as plain JSON text, not escaped inside them
    head, *json_parts = raw.split(b"\x1e")
    assert not {"labels", "spec", "status"} & set(orjson.loads(head))
    assert orjson.dumps(pod["spec"]) in json_parts
    assert row["labels"] == {"app": "web"}
    assert row["spec"] == pod["spec"]
    assert row["annotations"] is None and row["owner_references"] is None
    expected = {"uid", *(c.name for c in columns_of(PODS))}
    assert set(row) == expected


def test_a_pod_without_status_has_null_status_columns_and_no_restarts() -> None:
    pod = running_pod()
    del pod["status"]
    row = decode_row(extract_row(pod, PODS), columns_of(PODS))
    assert row["restart_count"] == 0
    assert row["ready"] is None
    assert row["phase"] is None
    assert row["status"] is None


def test_uuid_bytes_converts_uuid_text_of_any_letter_case() -> None:
    rng = random.Random(1234)
    uids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(1000)]
    texts = []
    for i, u in enumerate(uids):
        s = str(u)
        if i % 3 == 1:
            s = s.upper()
        elif i % 3 == 2:
            s = "".join(ch.upper() if rng.random() < 0.5 else ch for ch in s)
        texts.append(s)
    out = uuid_bytes(pa.array(texts, pa.string()))
    assert isinstance(out.type, UUIDType)
    assert len(out) == len(uids)
    assert out.storage.to_pylist() == [uuid.UUID(t).bytes for t in texts]
    assert out.storage.to_pylist() == [u.bytes for u in uids]


def test_uuid_bytes_handles_extreme_values_undashed_text_and_slices() -> None:
    texts = [
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        "0123456789ABCDEF0123456789abcdef",
    ]
    arr = pa.array(texts, pa.string())
    assert uuid_bytes(arr).storage.to_pylist() == [uuid.UUID(t).bytes for t in texts]
    assert uuid_bytes(arr.slice(1, 2)).storage.to_pylist() == [uuid.UUID(t).bytes for t in texts[1:3]]


def test_uuid_bytes_keeps_nulls_null() -> None:
    u = uuid.uuid4()
    out = uuid_bytes(pa.array([str(u), None], pa.string()))
    assert out.storage.to_pylist() == [u.bytes, None]
    assert out.null_count == 1


def test_uuid_bytes_of_nothing_is_an_empty_uuid_array() -> None:
    out = uuid_bytes(pa.array([], pa.string()))
    assert len(out) == 0
    assert isinstance(out.type, UUIDType)
    assert out.storage.type == pa.binary(16)


def test_pod_rows_become_a_batch_of_typed_columns_with_utc_timestamps() -> None:
    pods = [running_pod(), running_pod(startTime=None, phase="Pending")]
    pods[1]["metadata"]["name"] = "other"
    pods[1]["metadata"]["uid"] = str(uuid.uuid4()).upper()
    pods[1]["metadata"]["deletionTimestamp"] = "2024-06-01T00:00:00.5Z"
    rows = [extract_row(sanitize(p, PODS), PODS) for p in pods]
    schema = descriptor_schema(PODS)
    batch = rows_to_batch(schema, "ctx-a", rows)
    assert batch.schema.equals(schema, check_metadata=True)
    assert batch.num_rows == 2
    assert batch.column("context_name").to_pylist() == ["ctx-a", "ctx-a"]
    assert batch.column("uid").storage.to_pylist() == [uuid.UUID(p["metadata"]["uid"]).bytes for p in pods]
    assert batch.column("name").to_pylist() == ["web", "other"]
    assert batch.column("created_at").to_pylist() == [dt.datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)] * 2
    assert batch.column("start_time").to_pylist() == [dt.datetime(2024, 5, 1, 12, 35, tzinfo=UTC), None]
    assert batch.column("deletion_timestamp").to_pylist() == [
        None, dt.datetime(2024, 6, 1, 0, 0, 0, 500000, tzinfo=UTC),
    ]  # fmt: skip
    created = batch.column("created_at").to_pylist()[0]
    assert created.utcoffset() == dt.timedelta(0)
    labels = batch.column("labels")
    assert isinstance(labels.type, JSONType)
    assert labels.storage.to_pylist() == [b'{"app":"web"}'] * 2
    assert batch.column("annotations").storage.to_pylist() == [None, None]
    assert orjson.loads(batch.column("spec").storage[0].as_py()) == pods[0]["spec"]
    assert batch.column("images").to_pylist() == [["busybox:1", "nginx:1.27", "envoy:1"]] * 2
    assert batch.column("finalizers").to_pylist() == [["x/y"], ["x/y"]]
    assert batch.column("restart_count").to_pylist() == [5, 5]
    assert batch.column("phase").to_pylist() == ["Running", "Pending"]
    assert batch.column("ready").to_pylist() == [False, False]
    assert batch.column("generation").to_pylist() == [3, 3]


def test_no_rows_make_an_empty_batch_of_the_schema() -> None:
    schema = descriptor_schema(PODS)
    batch = rows_to_batch(schema, "ctx", [])
    assert batch.num_rows == 0
    assert batch.schema.equals(schema, check_metadata=True)


def test_a_custom_object_row_fills_the_custom_objects_table() -> None:
    desc = custom_object_descriptor(crd_row())
    assert desc is not None
    obj = {
        "apiVersion": "example.com/v1beta1",
        "kind": "Widget",
        "metadata": meta("w1"),
        "spec": {"size": 3},
    }
    schema = custom_objects_schema()
    batch = rows_to_batch(schema, "c", [extract_row(sanitize(obj, desc), desc)])
    assert batch.schema.equals(schema, check_metadata=True)
    assert batch.to_pylist()[0] | {"uid": None, "created_at": None} == {
        **{c.name: None for c in COMMON_COLUMNS},
        "context_name": "c",
        "uid": None,
        "name": "w1",
        "namespace": "ns",
        "resource_version": "1",
        "spec": b'{"size":3}',
        "resource": "widgets.example.com",
        "group": "example.com",
        "version": "v1beta1",
        "kind": "Widget",
    }


def test_documents_of_every_column_type_become_a_batch() -> None:
    cols = (
        Column("name", "string", lambda o: None),
        Column("count", "int64", lambda o: None),
        Column("flag", "bool", lambda o: None),
        Column("info", "json", lambda o: None),
        Column("tags", "string_list", lambda o: None),
        Column("at", "timestamp", lambda o: None),
    )
    schema = table_schema("k8s_test", cols, "test")
    u1, u2 = uuid.uuid4(), uuid.uuid4()
    when = dt.datetime(2026, 11, 26, 5, 6, 7, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    docs = [
        document(
            {
                "uid": str(u1),
                "name": "x",
                "count": 7,
                "flag": True,
                "info": {"k": [1, 2]},
                "tags": ["t1"],
                "at": when,
            },
            cols,
        ),
        document({"uid": str(u2)}, cols),
    ]
    batch = rows_to_batch(schema, "ctx", docs)
    assert batch.schema.equals(schema, check_metadata=True)
    assert batch.column("context_name").to_pylist() == ["ctx", "ctx"]
    assert batch.column("uid").storage.to_pylist() == [u1.bytes, u2.bytes]
    assert batch.column("name").to_pylist() == ["x", None]
    assert batch.column("count").to_pylist() == [7, None]
    assert batch.column("flag").to_pylist() == [True, None]
    assert isinstance(batch.column("info").type, JSONType)
    assert batch.column("info").storage.to_pylist() == [b'{"k":[1,2]}', None]
    assert batch.column("tags").to_pylist() == [["t1"], None]
    assert batch.column("at").to_pylist()[0] == when  # same instant, stored in UTC
    assert schema.field("uid").nullable is False
    assert schema.field("uid").metadata[b"cq:extension:primary_key"] == b"true"


@pytest.mark.parametrize("desc", RESOURCES, ids=lambda d: d.key)
def test_row_documents_of_every_table_read_back_into_their_columns(desc: Any) -> None:
    """The JSON parts of a row document are matched to the schema's JSON columns by
    position: every table must agree on that order, or values land in wrong columns."""
    obj = {
        "apiVersion": "v1", "kind": desc.kind,
        "metadata": {"name": "n", "namespace": "ns", "uid": str(uuid.uuid4()), "resourceVersion": "7",
                     "labels": {"a": "1"}, "annotations": {"b": "2"}},
        "spec": {"s": 1}, "status": {"t": 2},
    }  # fmt: skip
    row = extract_row(sanitize(obj, desc), desc)
    batch = rows_to_batch(descriptor_schema(desc), "ctx", [row])
    expected = decode_row(row, columns_of(desc))
    for field in batch.schema:
        if isinstance(field.type, JSONType):
            value = batch.column(field.name).storage.to_pylist()[0]
            assert (None if value is None else orjson.loads(value)) == expected[field.name], field.name
    assert batch.column("labels").storage.to_pylist() == [b'{"a":"1"}']
