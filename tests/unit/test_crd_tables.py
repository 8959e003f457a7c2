"""Typed tables per custom resource kind (watcher.crdtables): columns from the CRD's
schema and printer columns, projected from the cached generic rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudquery.sdk.types import JSONType

from tests.unit.builders import crd_row
from watcher.crdtables import coerce, custom_tables, evaluate, jsonpath, snake, typed_columns
from watcher.resources import CUSTOM_OBJECTS_TABLE
from watcher.snapshot import CUSTOM_OBJECT_COLUMNS
from watcher.tables import decode_row, document, rows_to_batch

SCHEMA = {
    "openAPIV3Schema": {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "replicas": {"type": "integer"},
                    "ratio": {"type": "number"},
                    "paused": {"type": "boolean"},
                    "imageName": {"type": "string"},
                    "port": {"x-kubernetes-int-or-string": True},
                    "expiresAt": {"type": "string", "format": "date-time"},
                    "template": {"type": "object", "properties": {"image": {"type": "string"}}},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            },
            "status": {
                "type": "object",
                "properties": {"conditions": {"type": "array"}, "phase": {"type": "string"}},
            },
        },
    }
}
PRINTERS = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Image Name", "type": "string", "jsonPath": ".spec.imageName"},
]


def widget_crd(version: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    v = {
        "name": "v1beta1",
        "served": True,
        "storage": True,
        "schema": SCHEMA,
        "additionalPrinterColumns": PRINTERS,
    }
    return crd_row(spec={"versions": [{**v, **(version or {})}]}, **overrides)


def test_property_and_printer_names_become_snake_case() -> None:
    assert [snake(n) for n in ("readyReplicas", "Image Name", "podCIDR", "x")] == [
        "ready_replicas", "image_name", "pod_cidr", "x",
    ]  # fmt: skip


def test_spec_and_status_properties_are_typed_and_objects_and_arrays_are_json() -> None:
    columns, problems = typed_columns(widget_crd()["spec"]["versions"][0])
    assert [(c.name, c.type) for c in columns] == [
        ("spec_replicas", "int64"), ("spec_ratio", "float64"), ("spec_paused", "bool"),
        ("spec_image_name", "string"), ("spec_port", "string"), ("spec_expires_at", "timestamp"),
        ("spec_template", "json"), ("spec_tags", "json"), ("status_conditions", "json"), ("status_phase", "string"),
        ("printer_ready", "string"), ("printer_age", "timestamp"), ("printer_image_name", "string"),
    ]  # fmt: skip
    assert problems == []


def test_a_schema_without_properties_gives_no_typed_columns_and_says_so() -> None:
    version = {
        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    }
    columns, problems = typed_columns(version)
    assert columns == []
    assert problems == [
        "its schema declares no spec or status properties (not structural?): no typed columns"
    ]


def test_an_unsupported_printer_jsonpath_is_left_out_with_a_reason() -> None:
    version = {
        "schema": SCHEMA,
        "additionalPrinterColumns": [{"name": "X", "type": "string", "jsonPath": ".a..b"}],
    }
    columns, problems = typed_columns(version)
    assert "printer_x" not in {c.name for c in columns}
    assert problems == ["printer column 'X': JSONPath '.a..b' not supported"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (".spec.a.b", [1]),
        (".spec.list[1].n", ["y"]),
        (".spec.list[*].n", ["x", "y"]),
        (".spec['dotted.key']", ["d"]),
        ('.status.conditions[?(@.type=="Ready")].status', ["True"]),
        (".status.conditions[?(@.type=='Synced')].reason", ["Late"]),
        (".spec.missing", []),
        ("{.spec.a.b}", [1]),
    ],
)
def test_the_jsonpath_subset_of_printer_columns(path: str, expected: list[Any]) -> None:
    obj = {
        "spec": {"a": {"b": 1}, "list": [{"n": "x"}, {"n": "y"}], "dotted.key": "d"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Synced", "reason": "Late"}]},
    }
    steps = jsonpath(path)
    assert steps is not None
    assert evaluate(steps, obj) == expected


def test_values_that_do_not_fit_their_column_are_null() -> None:
    assert coerce("3", "int64") is None and coerce(True, "int64") is None and coerce(3, "int64") == 3
    assert coerce(2, "float64") == 2.0 and coerce("x", "bool") is None
    assert coerce(8080, "string") == "8080" and coerce({"a": 1}, "string") is None
    assert coerce("2026-01-02T03:04:05Z", "timestamp") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert coerce("soon", "timestamp") is None
    assert coerce({"a": 1}, "json") == {"a": 1}


def test_a_custom_object_is_projected_into_its_typed_row() -> None:
    tables, problems = custom_tables([widget_crd()], taken={CUSTOM_OBJECTS_TABLE})
    assert problems == {}
    table = tables["k8s_example_com_widgets"]
    uid = str(uuid.uuid4())
    generic = document(
        {
            "uid": uid, "name": "w", "namespace": "ns", "created_at": "2026-01-02T03:04:05Z",
            "spec": {"replicas": "three", "ratio": 1, "imageName": "img:1", "template": {"image": "i"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        },
        CUSTOM_OBJECT_COLUMNS,
    )  # fmt: skip
    row = table.document(uid, decode_row(generic, CUSTOM_OBJECT_COLUMNS))
    batch = rows_to_batch(table.schema(), "ctx", [row])
    values = batch.to_pylist()[0]
    assert values["spec_replicas"] is None  # "three" is no integer
    assert values["spec_ratio"] == 1.0 and values["spec_image_name"] == "img:1"
    assert values["printer_ready"] == "True" and values["printer_image_name"] == "img:1"
    assert values["printer_age"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert isinstance(batch.schema.field("spec_template").type, JSONType)
    assert batch.column("spec_template").storage.to_pylist() == [b'{"image":"i"}']


def test_colliding_table_names_give_the_table_to_one_crd_and_a_reason_to_the_other() -> None:
    one = widget_crd(group="a-b.example.com", plural="things")
    other = widget_crd(group="a.b-example.com", plural="things")
    tables, problems = custom_tables([other, one], taken=set())
    assert [(t, c.resource) for t, c in tables.items()] == [
        ("k8s_a_b_example_com_things", "things.a-b.example.com")
    ]
    assert problems == {
        "things.a.b-example.com": [
            "its table name k8s_a_b_example_com_things is taken (things.a-b.example.com)"
        ]
    }
    _, problems = custom_tables([one], taken={"k8s_a_b_example_com_things"})
    assert problems == {
        "things.a-b.example.com": ["its table name k8s_a_b_example_com_things is taken (built-in)"]
    }


def test_the_same_crd_in_two_contexts_gives_one_table_with_the_union_of_its_columns() -> None:
    newer = {**SCHEMA["openAPIV3Schema"]}
    newer = {"openAPIV3Schema": {**newer, "properties": {**newer["properties"], "spec": {
        "type": "object", "properties": {"replicas": {"type": "integer"}, "added": {"type": "string"}}}}}}  # fmt: skip
    tables, _ = custom_tables([widget_crd(), widget_crd({"schema": newer})], taken=set())
    names = [c.name for c in tables["k8s_example_com_widgets"].typed]
    assert "spec_added" in names and "spec_ratio" in names and names.count("spec_replicas") == 1
