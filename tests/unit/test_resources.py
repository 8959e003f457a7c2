"""The resource descriptor table, its path helpers, and CRD descriptors (watcher.resources)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.unit.builders import CMS, PODS, SECRETS, crd_row
from watcher.catalog import ALL_TABLES, CLUSTERS_TABLE
from watcher.resources import (
    BY_KEY,
    BY_TABLE,
    CUSTOM_OBJECTS_TABLE,
    RESOURCES,
    condition,
    custom_object_descriptor,
    each,
    first_of,
    flat_each,
    path,
)
from watcher.tables import (
    columns_of,
    decode_row,
    extract_row,
)


def test_path_follows_keys_and_list_indexes_and_keeps_falsy_values() -> None:
    obj = {"a": {"b": [{"c": 1}, {"c": 2}], "zero": 0, "no": False, "empty": ""}}
    assert path("a", "b", 1, "c")(obj) == 2
    assert path("a", "b", 0)(obj) == {"c": 1}
    assert path("a", "zero")(obj) == 0
    assert path("a", "no")(obj) is False
    assert path("a", "empty")(obj) == ""
    assert path()(obj) is obj


@pytest.mark.parametrize(
    "keys",
    [("x",), ("a", "x", "y"), ("a", "b", 5), ("a", "b", 0, "x"), ("a", 0), ("a", "b", "c"), ("a", "s", "t"),
     ("a", "s", 0), ("a", "none", "deeper")],
)  # fmt: skip
def test_path_gives_none_for_anything_missing_or_of_another_type(keys: tuple[Any, ...]) -> None:
    obj = {"a": {"b": [{"c": 1}], "s": "text", "none": None}}
    assert path(*keys)(obj) is None


def test_each_maps_the_items_and_skips_non_mappings_and_none_results() -> None:
    obj = {"items": [{"n": "a"}, {"m": "x"}, "not-a-mapping", None, {"n": "b"}]}
    assert each(path("items"), path("n"))(obj) == ["a", "b"]
    assert each(path("missing"), path("n"))(obj) == []
    assert each(path("items"), lambda i: i.get("n") if i.get("n") == "b" else None)(obj) == ["b"]


def test_condition_is_true_false_or_none_when_the_condition_is_absent() -> None:
    obj = {
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Approved", "status": "False"}]
        }
    }
    assert condition("Ready")(obj) is True
    assert condition("Approved")(obj) is False
    assert condition("Denied")(obj) is None
    assert condition("Ready")({}) is None


def test_flat_each_concatenates_the_lists_found_in_each_item() -> None:
    obj = {"subsets": [{"addresses": [{"ip": "a"}, {"ip": "b"}]}, {}, {"addresses": [{"ip": "c"}, {}]}]}
    assert flat_each(path("subsets"), each(path("addresses"), path("ip")))(obj) == ["a", "b", "c"]
    assert flat_each(path("missing"), each(path("addresses"), path("ip")))(obj) == []


def test_first_of_takes_the_first_value_that_is_present_even_when_falsy() -> None:
    pick = first_of(path("a"), path("b"))
    assert pick({"a": 0, "b": 5}) == 0
    assert pick({"b": 5}) == 5
    assert pick({}) is None


def test_descriptor_keys_and_table_names_are_unique() -> None:
    keys = [d.key for d in RESOURCES]
    tables = [d.table for d in RESOURCES]
    assert len(set(keys)) == len(keys)
    assert len(set(tables)) == len(tables)
    assert all(t.startswith("k8s_") for t in tables)
    assert CUSTOM_OBJECTS_TABLE not in tables and CLUSTERS_TABLE not in tables
    assert len(BY_KEY) == len(BY_TABLE) == len(RESOURCES)
    assert len(set(ALL_TABLES)) == len(ALL_TABLES)


def test_no_descriptor_column_collides_with_another_or_the_key_columns() -> None:
    for desc in RESOURCES:
        names = ["context_name", "uid", *(c.name for c in columns_of(desc))]
        assert len(set(names)) == len(names), desc.table


def test_secrets_and_only_secrets_among_these_are_fetched_metadata_only() -> None:
    assert SECRETS.metadata_only is True
    assert SECRETS.table == "k8s_secrets"
    assert not PODS.metadata_only and not CMS.metadata_only


def test_descriptors_build_core_and_group_collection_paths() -> None:
    assert PODS.key == "pods" and PODS.api_version == "v1"
    assert PODS.collection_path() == "/api/v1/pods"
    deploy = BY_KEY["deployments.apps"]
    assert deploy.api_version == "apps/v1"
    assert deploy.collection_path() == "/apis/apps/v1/deployments"


def test_a_custom_resource_is_read_at_its_storage_version_when_served() -> None:
    desc = custom_object_descriptor(crd_row())
    assert desc is not None
    assert desc.version == "v1beta1"
    assert desc.key == "widgets.example.com"
    assert desc.table == CUSTOM_OBJECTS_TABLE
    assert desc.custom is True and desc.namespaced is True
    assert desc.kind == "Widget"
    assert desc.collection_path() == "/apis/example.com/v1beta1/widgets"
    resource_col = next(c for c in desc.columns if c.name == "resource")
    assert resource_col.extract({}) == "widgets.example.com"


def test_a_custom_resource_falls_back_to_its_first_served_version() -> None:
    desc = custom_object_descriptor(crd_row(served_versions=["v2", "v3"], storage_version="v1"))
    assert desc is not None and desc.version == "v2"
    desc = custom_object_descriptor(crd_row(served_versions=["v2"], storage_version=None))
    assert desc is not None and desc.version == "v2"


@pytest.mark.parametrize("served", [[], None])
def test_a_crd_that_serves_no_version_gives_no_descriptor(served: Any) -> None:
    assert custom_object_descriptor(crd_row(served_versions=served)) is None


def test_a_cluster_scoped_crd_gives_a_cluster_scoped_descriptor() -> None:
    desc = custom_object_descriptor(crd_row(scope="Cluster"))
    assert desc is not None and desc.namespaced is False


def test_a_cached_crd_row_has_the_columns_custom_object_descriptor_reads() -> None:
    """The cached k8s_custom_resources row (extract_row of a CRD) is what
    custom_object_descriptor reads: the two must agree on column names."""
    crd_obj = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com", "uid": str(uuid.uuid4()), "resourceVersion": "1"},
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "plural": "widgets"},
            "scope": "Cluster",
            "versions": [
                {"name": "v1", "served": False, "storage": True},
                {"name": "v2", "served": True, "storage": False},
            ],
        },
    }
    crd = BY_KEY["customresourcedefinitions.apiextensions.k8s.io"]
    row = decode_row(extract_row(crd_obj, crd), columns_of(crd))
    assert row["versions"] == ["v1", "v2"]
    assert row["served_versions"] == ["v2"]
    assert row["storage_version"] == "v1"
    desc = custom_object_descriptor(row)
    assert desc is not None
    assert (desc.group, desc.version, desc.plural, desc.kind, desc.namespaced) == (
        "example.com", "v2", "widgets", "Widget", False,
    )  # fmt: skip
