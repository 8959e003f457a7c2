"""Fast unit tests of pure functions: no network, no subprocess, no API server."""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
import stat
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import yaml
from cloudquery.sdk.types import JSONType, UUIDType

from watcher import informers
from watcher.informers import Backoff, ResourceInformer, StreamingListUnsupported, WatchExpired
from watcher.kube import ApiError, KubeconfigError, context_names, read_kubeconfig, resolve_contexts
from watcher.resources import (
    BY_KEY,
    BY_TABLE,
    CUSTOM_OBJECTS_TABLE,
    RESOURCES,
    Column,
    custom_object_descriptor,
    each,
    path,
)
from watcher.spec import ALL_TABLES, CLUSTERS_TABLE, Spec, SpecError, parse_duration
from watcher.state import SCHEMA_VERSION, CacheStore, CacheUnusable, InformerStatus, open_reader
from watcher.tables import (
    COMMON_COLUMNS,
    LAST_APPLIED,
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

PODS, CMS, SECRETS = BY_KEY["pods"], BY_KEY["configmaps"], BY_KEY["secrets"]
UTC = dt.UTC


# =========================================================================== spec


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Deterministic defaults: KUBECONFIG and XDG_STATE_HOME point into tmp_path."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kc.yaml"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path


@pytest.mark.parametrize("raw", [None, b"", "", b"null", "null", {}, b"{}"])
def test_spec_empty_gives_defaults(clean_env: Path, raw: Any) -> None:
    spec = Spec.parse(raw)
    assert spec.contexts == ("*",)
    assert spec.tables == ALL_TABLES
    assert spec.tables[0] == CLUSTERS_TABLE and spec.tables[-1] == CUSTOM_OBJECTS_TABLE
    assert spec.kubeconfig == clean_env / "kc.yaml"
    assert spec.cache_path == clean_env / "state" / "k8s-watcher" / "cache.db"
    assert spec.incremental is False
    assert spec.max_staleness == 600.0
    assert spec.concurrency == 4
    assert spec.batch_max_rows == 20_000


def test_spec_parses_json_bytes_and_expands_home(clean_env: Path) -> None:
    raw = orjson.dumps(
        {
            "contexts": ["dev", "prod"],
            "tables": ["k8s_pods"],
            "kubeconfig": "~/kc",
            "cache_path": "/var/tmp/c.db",
            "incremental": True,
            "max_staleness": "90s",
            "concurrency": 8,
            "batch_max_rows": 100,
        }
    )
    spec = Spec.parse(raw)
    assert spec.contexts == ("dev", "prod")
    assert spec.tables == ("k8s_pods",)
    assert spec.kubeconfig == Path.home() / "kc"
    assert spec.cache_path == Path("/var/tmp/c.db")
    assert spec.incremental is True
    assert spec.max_staleness == 90.0
    assert spec.concurrency == 8
    assert spec.batch_max_rows == 100
    # str input goes through the same path as bytes
    assert Spec.parse(raw.decode()) == spec


def test_spec_defaults_are_overridden_by_the_spec(clean_env: Path) -> None:
    spec = Spec.parse({"concurrency": 2}, defaults={"concurrency": 9, "incremental": True})
    assert spec.concurrency == 2
    assert spec.incremental is True


def test_spec_tables_glob_expansion_in_order_without_duplicates(clean_env: Path) -> None:
    spec = Spec.parse({"tables": ["k8s_pod*", "k8s_pods", "k8s_clusters"]})
    assert spec.tables == ("k8s_pods", "k8s_poddisruptionbudgets", "k8s_clusters")
    rbac = Spec.parse({"tables": ["k8s_*role*"]}).tables
    assert set(rbac) == {"k8s_roles", "k8s_rolebindings", "k8s_clusterroles", "k8s_clusterrolebindings"}
    assert Spec.parse({"tables": ["*"]}).tables == ALL_TABLES


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"bogus": 1}', "unknown field(s) in spec: bogus"),
        (b'{"contexts": []}', "contexts: must not be empty"),
        (b'{"tables": []}', "tables: must not be empty"),
        (b'{"max_staleness": "soon"}', "max_staleness: 'soon' is not a duration"),
        (b'{"max_staleness": 0}', "max_staleness: must be a positive, finite duration"),
        (b'{"max_staleness": "-5m"}', "max_staleness: '-5m' is not a duration"),
        (b'{"max_staleness": true}', "max_staleness"),
        (b'{"tables": ["k8s_nope"]}', "tables: 'k8s_nope' matches no table"),
        (b'{"concurrency": 0}', "concurrency"),
        (b'{"concurrency": 65}', "concurrency"),
        (b"[1, 2]", "spec must be a mapping of fields, got list"),
        (b'"just a string"', "spec must be a mapping of fields, got str"),
        (b"{not json", "spec is not valid JSON"),
    ],
)
def test_spec_errors_name_the_field(clean_env: Path, raw: bytes, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        Spec.parse(raw)
    assert expected in str(info.value)


def test_spec_unknown_table_error_lists_known_tables(clean_env: Path) -> None:
    with pytest.raises(SpecError, match=r"known: .*k8s_pods"):
        Spec.parse({"tables": ["k8s_pods", "nope_*"]})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90", 90.0), (90, 90.0), (1.5, 1.5), ("90s", 90.0), ("10m", 600.0), ("1h", 3600.0),
     ("500ms", 0.5), (" 2 m ", 120.0), ("1.5m", 90.0)],
)  # fmt: skip
def test_parse_duration_accepts(value: Any, seconds: float) -> None:
    assert parse_duration(value, field_name="f") == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", 0, -1, True, False, "0s", "", "10 days", "-1s", 0.0])
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(SpecError, match=r"^f: "):
        parse_duration(value, field_name="f")


def test_parse_duration_rejects_nan() -> None:
    """NaN is not a duration: every comparison with it is False, so a NaN staleness
    would silently mean "never stale" and "daemon never alive"."""
    with pytest.raises(SpecError):
        parse_duration(float("nan"), field_name="max_staleness")
    # json.loads accepts the NaN literal, so a spec can carry one
    with pytest.raises(SpecError, match="max_staleness"):
        Spec.parse(b'{"max_staleness": NaN}')


# =========================================================================== resources


def test_path_follows_dicts_and_lists() -> None:
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
def test_path_missing_gives_none(keys: tuple[Any, ...]) -> None:
    obj = {"a": {"b": [{"c": 1}], "s": "text", "none": None}}
    assert path(*keys)(obj) is None


def test_each_maps_and_skips() -> None:
    obj = {"items": [{"n": "a"}, {"m": "x"}, "not-a-mapping", None, {"n": "b"}]}
    assert each(path("items"), path("n"))(obj) == ["a", "b"]
    assert each(path("missing"), path("n"))(obj) == []
    assert each(path("items"), lambda i: i.get("n") if i.get("n") == "b" else None)(obj) == ["b"]


def test_descriptor_keys_and_tables_are_unique() -> None:
    keys = [d.key for d in RESOURCES]
    tables = [d.table for d in RESOURCES]
    assert len(set(keys)) == len(keys)
    assert len(set(tables)) == len(tables)
    assert all(t.startswith("k8s_") for t in tables)
    assert CUSTOM_OBJECTS_TABLE not in tables and CLUSTERS_TABLE not in tables
    assert len(BY_KEY) == len(BY_TABLE) == len(RESOURCES)
    assert len(set(ALL_TABLES)) == len(ALL_TABLES)


def test_descriptor_columns_do_not_collide() -> None:
    for desc in RESOURCES:
        names = ["context_name", "uid", *(c.name for c in columns_of(desc))]
        assert len(set(names)) == len(names), desc.table


def test_secrets_are_metadata_only() -> None:
    assert SECRETS.metadata_only is True
    assert SECRETS.table == "k8s_secrets"
    assert not PODS.metadata_only and not CMS.metadata_only


def test_descriptor_paths() -> None:
    assert PODS.key == "pods" and PODS.api_version == "v1"
    assert PODS.collection_path() == "/api/v1/pods"
    deploy = BY_KEY["deployments.apps"]
    assert deploy.api_version == "apps/v1"
    assert deploy.collection_path() == "/apis/apps/v1/deployments"


def _crd_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "group": "example.com",
        "kind": "Widget",
        "plural": "widgets",
        "scope": "Namespaced",
        "served_versions": ["v1alpha1", "v1beta1", "v1"],
        "storage_version": "v1beta1",
    }
    row.update(overrides)
    return row


def test_custom_object_descriptor_prefers_served_storage_version() -> None:
    desc = custom_object_descriptor(_crd_row())
    assert desc is not None
    assert desc.version == "v1beta1"
    assert desc.key == "widgets.example.com"
    assert desc.table == CUSTOM_OBJECTS_TABLE
    assert desc.custom is True and desc.namespaced is True
    assert desc.kind == "Widget"
    assert desc.collection_path() == "/apis/example.com/v1beta1/widgets"
    resource_col = next(c for c in desc.columns if c.name == "resource")
    assert resource_col.extract({}) == "widgets.example.com"


def test_custom_object_descriptor_falls_back_to_first_served() -> None:
    desc = custom_object_descriptor(_crd_row(served_versions=["v2", "v3"], storage_version="v1"))
    assert desc is not None and desc.version == "v2"
    desc = custom_object_descriptor(_crd_row(served_versions=["v2"], storage_version=None))
    assert desc is not None and desc.version == "v2"


@pytest.mark.parametrize("served", [[], None])
def test_custom_object_descriptor_none_when_nothing_served(served: Any) -> None:
    assert custom_object_descriptor(_crd_row(served_versions=served)) is None


def test_custom_object_descriptor_cluster_scope() -> None:
    desc = custom_object_descriptor(_crd_row(scope="Cluster"))
    assert desc is not None and desc.namespaced is False


def test_crd_descriptor_columns_feed_custom_object_descriptor() -> None:
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


# =========================================================================== tables


def _meta(name: str = "obj", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "ns",
        "uid": str(uuid.uuid4()),
        "resourceVersion": "1",
        "creationTimestamp": "2024-05-01T12:34:56Z",
        **extra,
    }


def test_sanitize_drops_managed_fields_and_last_applied_only() -> None:
    obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(
            managedFields=[{"manager": "kubectl"}],
            annotations={LAST_APPLIED: '{"data":{"password":"x"}}', "team": "infra"},
        ),
        "data": {"k": "v"},
    }
    clean = sanitize(obj, CMS)
    assert "managedFields" not in clean["metadata"]
    assert clean["metadata"]["annotations"] == {"team": "infra"}
    assert clean["data"] == {"k": "v"}
    assert clean["metadata"]["name"] == "obj"
    # the input is not modified
    assert "managedFields" in obj["metadata"]
    assert LAST_APPLIED in obj["metadata"]["annotations"]


def test_sanitize_keeps_annotations_without_last_applied() -> None:
    obj = {"metadata": _meta(annotations={"a": "1"})}
    assert sanitize(obj, CMS)["metadata"]["annotations"] == {"a": "1"}


def test_sanitize_metadata_only_drops_secret_body() -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _meta(annotations={LAST_APPLIED: '{"stringData":{"pw":"hunter2"}}'}, managedFields=[{}]),
        "data": {"pw": "aHVudGVyMg=="},
        "stringData": {"pw": "hunter2"},
    }
    clean = sanitize(secret, SECRETS)
    assert set(clean) == {"apiVersion", "kind", "metadata"}
    assert clean["apiVersion"] == "v1" and clean["kind"] == "Secret"
    assert "managedFields" not in clean["metadata"]
    assert LAST_APPLIED not in (clean["metadata"].get("annotations") or {})
    row = extract_row(clean, SECRETS)
    assert b"hunter2" not in row and b"aHVudGVyMg==" not in row


def _pod(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta("web", labels={"app": "web"}, finalizers=["x/y"], generation=3),
        "spec": {
            "nodeName": "node-1",
            "initContainers": [{"name": "init", "image": "busybox:1"}],
            "containers": [{"name": "a", "image": "nginx:1.27"}, {"name": "b", "image": "envoy:1"}],
        },
        "status": {
            "phase": "Running",
            "startTime": "2024-05-01T12:35:00Z",
            "containerStatuses": [{"restartCount": 2}, {"restartCount": 3}],
            "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "False"}],
            **status,
        },
    }


def test_extract_row_pod_columns() -> None:
    pod = _pod()
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


def test_extract_row_pod_without_status() -> None:
    pod = _pod()
    del pod["status"]
    row = decode_row(extract_row(pod, PODS), columns_of(PODS))
    assert row["restart_count"] == 0
    assert row["ready"] is None
    assert row["phase"] is None
    assert row["status"] is None


def test_uuid_bytes_round_trips_random_uuids() -> None:
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


def test_uuid_bytes_edge_values_and_slices() -> None:
    texts = [
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        "0123456789ABCDEF0123456789abcdef",
    ]
    arr = pa.array(texts, pa.string())
    assert uuid_bytes(arr).storage.to_pylist() == [uuid.UUID(t).bytes for t in texts]
    assert uuid_bytes(arr.slice(1, 2)).storage.to_pylist() == [uuid.UUID(t).bytes for t in texts[1:3]]


def test_uuid_bytes_empty() -> None:
    out = uuid_bytes(pa.array([], pa.string()))
    assert len(out) == 0
    assert isinstance(out.type, UUIDType)
    assert out.storage.type == pa.binary(16)


def test_rows_to_batch_pods() -> None:
    pods = [_pod(), _pod(startTime=None, phase="Pending")]
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


def test_rows_to_batch_empty() -> None:
    schema = descriptor_schema(PODS)
    batch = rows_to_batch(schema, "ctx", [])
    assert batch.num_rows == 0
    assert batch.schema.equals(schema, check_metadata=True)


def test_rows_to_batch_custom_objects() -> None:
    desc = custom_object_descriptor(_crd_row())
    assert desc is not None
    obj = {
        "apiVersion": "example.com/v1beta1",
        "kind": "Widget",
        "metadata": _meta("w1"),
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


def test_document_then_rows_to_batch() -> None:
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


# =========================================================================== informers


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(informers, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_backoff_first_delay_in_range() -> None:
    for _ in range(200):
        delay = Backoff().next_delay()
        assert 0.8 <= delay <= 1.6


def _delays(clock: FakeClock, n: int) -> list[float]:
    """``n`` delays of one Backoff, a second apart (failures in quick succession)."""
    backoff = Backoff()
    delays = []
    for _ in range(n):
        clock.now += 1
        delays.append(backoff.next_delay())
    return delays


def test_backoff_grows_by_doubling_up_to_cap(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setattr(informers.random, "random", lambda: 0.0)
    delays = _delays(clock, 9)
    assert delays == pytest.approx([0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0])


def test_backoff_with_jitter_grows_to_cap(clock: FakeClock) -> None:
    for _ in range(50):
        delays = _delays(clock, 12)
        # the un-jittered delay doubles from 0.8; jitter adds up to 100 %
        for i, delay in enumerate(delays[:6]):
            base = 0.8 * 2**i
            assert base <= delay <= 2 * base, (i, delays)
        assert delays[6:] == [30.0] * 6


def test_backoff_never_above_cap_with_maximal_jitter(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    monkeypatch.setattr(informers.random, "random", lambda: 0.999)
    delays = _delays(clock, 10)
    assert all(d <= 30.0 for d in delays), delays


def test_backoff_resets_after_quiet_period(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setattr(informers.random, "random", lambda: 0.0)
    backoff = Backoff(reset_after=120.0)
    for _ in range(5):
        clock.now += 1
        backoff.next_delay()
    clock.now += 119
    assert backoff.next_delay() == pytest.approx(25.6)  # still within the window: keeps growing
    clock.now += 121
    assert backoff.next_delay() == pytest.approx(0.8)
    clock.now += 1
    assert backoff.next_delay() == pytest.approx(1.6)


def test_backoff_reset_after_zero_always_initial() -> None:
    backoff = Backoff(reset_after=0.0, jitter=0.0)
    delays = []
    for _ in range(5):
        delays.append(backoff.next_delay())
        # make sure the monotonic clock moves on between failures
        start = informers.time.monotonic()
        while informers.time.monotonic() == start:
            pass
    assert delays == [0.8] * 5


@pytest.mark.parametrize("streaming", [True, False])
def test_watch_error_410_is_expired(streaming: bool) -> None:
    exc = ResourceInformer._watch_error(
        {"code": 410, "reason": "Expired", "message": "too old"}, streaming_list=streaming
    )
    assert isinstance(exc, WatchExpired)
    assert "too old" in str(exc)


@pytest.mark.parametrize("code", [400, 422])
def test_watch_error_streaming_list_unsupported(code: int) -> None:
    exc = ResourceInformer._watch_error({"code": code, "message": "no"}, streaming_list=True)
    assert isinstance(exc, StreamingListUnsupported)
    plain = ResourceInformer._watch_error({"code": code, "message": "no"}, streaming_list=False)
    assert type(plain) is ApiError
    assert plain.status == code


@pytest.mark.parametrize(("code", "streaming"), [(500, True), (500, False), (403, True), (429, False)])
def test_watch_error_other_codes_are_api_errors(code: int, streaming: bool) -> None:
    exc = ResourceInformer._watch_error(
        {"code": code, "reason": "SomeReason", "message": "boom"}, streaming_list=streaming
    )
    assert type(exc) is ApiError
    assert exc.status == code
    assert exc.reason == "SomeReason"
    assert exc.message == "boom"


def test_watch_error_without_code() -> None:
    exc = ResourceInformer._watch_error({"kind": "Status"}, streaming_list=False)
    assert type(exc) is ApiError
    assert exc.status == 0
    assert exc.reason == "watch error"


# =========================================================================== kube


def _kubeconfig(tmp_path: Path, names: list[str]) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}} for n in names],
        "current-context": names[0] if names else "",
    }
    p = tmp_path / "config"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_read_kubeconfig_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(KubeconfigError, match="does not exist") as info:
        read_kubeconfig(missing)
    assert str(missing) in str(info.value)


def test_read_kubeconfig_unreadable(tmp_path: Path) -> None:
    directory = tmp_path / "a-dir"
    directory.mkdir()
    with pytest.raises(KubeconfigError, match="cannot be read"):
        read_kubeconfig(directory)


def test_read_kubeconfig_malformed_yaml(tmp_path: Path) -> None:
    p = tmp_path / "bad"
    p.write_text("contexts: [unclosed\n  - : :")
    with pytest.raises(KubeconfigError, match="not valid YAML"):
        read_kubeconfig(p)


@pytest.mark.parametrize("text", ["- a\n- b\n", "", "just a string\n", "contexts: {a: 1}\n"])
def test_read_kubeconfig_not_a_mapping(tmp_path: Path, text: str) -> None:
    p = tmp_path / "bad"
    p.write_text(text)
    with pytest.raises(KubeconfigError, match="malformed"):
        read_kubeconfig(p)


def test_context_names_in_file_order(tmp_path: Path) -> None:
    p = _kubeconfig(tmp_path, ["zeta", "alpha", "mid"])
    assert read_kubeconfig(p)["kind"] == "Config"
    assert context_names(p) == ["zeta", "alpha", "mid"]


def test_context_names_skips_nameless_entries(tmp_path: Path) -> None:
    p = tmp_path / "config"
    p.write_text(yaml.safe_dump({"contexts": [{"name": "a"}, {"context": {}}, "junk", {"name": "b"}]}))
    assert context_names(p) == ["a", "b"]
    p.write_text("kind: Config\n")
    assert context_names(p) == []


def test_resolve_contexts(tmp_path: Path) -> None:
    p = _kubeconfig(tmp_path, ["dev", "prod", "stage"])
    assert resolve_contexts(p, ["*"]) == ["dev", "prod", "stage"]
    assert resolve_contexts(p, ["prod"]) == ["prod"]
    assert resolve_contexts(p, ["stage", "dev"]) == ["stage", "dev"]


def test_resolve_contexts_unknown_names_available(tmp_path: Path) -> None:
    p = _kubeconfig(tmp_path, ["dev", "prod"])
    with pytest.raises(KubeconfigError) as info:
        resolve_contexts(p, ["dev", "qa", "uat"])
    msg = str(info.value)
    assert "qa, uat" in msg
    assert "available: dev, prod" in msg
    assert str(p) in msg


def test_resolve_contexts_none_available(tmp_path: Path) -> None:
    p = tmp_path / "config"
    p.write_text("contexts: []\n")
    assert resolve_contexts(p, ["*"]) == []
    with pytest.raises(KubeconfigError, match=r"available: none"):
        resolve_contexts(p, ["dev"])


# =========================================================================== state


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    s = CacheStore(tmp_path / "cache.db", batch_wait=0.0)
    yield s
    s.close()


def _status(desc: Any = CMS, state: str = "watching", rv: str | None = None) -> InformerStatus:
    return InformerStatus(
        context="ctx", resource=desc.key, table_name=desc.table, state=state, resource_version=rv
    )


def _cm(name: str, uid: str, rv: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": rv},
        "data": data,
    }


def _rows(store: CacheStore) -> dict[str, dict[str, Any]]:
    store.flush()
    con = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return {r["name"]: dict(r) for r in con.execute("SELECT * FROM objects")}
    finally:
        con.close()


def _query(store: CacheStore, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    store.flush()
    con = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def test_cache_file_is_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        s = CacheStore(tmp_path / "sub" / "cache.db")
    finally:
        os.umask(old)
    try:
        s.relist_page("ctx", CMS, [_cm("a", str(uuid.uuid4()), "1")], s.begin_relist())
        s.flush()
        assert stat.S_IMODE((tmp_path / "sub" / "cache.db").stat().st_mode) == 0o600
        for side in ("cache.db-wal", "cache.db-shm"):
            p = tmp_path / "sub" / side  # WAL mode: both exist while the store is open
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, side
    finally:
        s.close()


def test_relist_tombstones_missing_and_keeps_unchanged_seq(store: CacheStore) -> None:
    ua, ub, uc = (str(uuid.uuid4()) for _ in range(3))
    gen = store.begin_relist()
    store.relist_page("ctx", CMS, [_cm("a", ua, "10"), _cm("b", ub, "11")], gen)
    store.relist_page("ctx", CMS, [_cm("c", uc, "12")], gen)
    store.end_relist("ctx", CMS, gen, _status(state="listing", rv="12"))
    first = _rows(store)
    assert {n: r["deleted"] for n, r in first.items()} == {"a": 0, "b": 0, "c": 0}
    assert len({r["seq"] for r in first.values()}) == 3

    # second list: a unchanged, b gone, c modified, d new
    ud = str(uuid.uuid4())
    gen2 = store.begin_relist()
    assert gen2 != gen
    store.relist_page("ctx", CMS, [_cm("a", ua, "10"), _cm("c", uc, "20", k="v"), _cm("d", ud, "21")], gen2)
    store.end_relist("ctx", CMS, gen2, _status(state="watching", rv="21"))
    second = _rows(store)
    assert second["a"]["deleted"] == 0 and second["a"]["seq"] == first["a"]["seq"]
    assert second["b"]["deleted"] == 1 and second["b"]["seq"] > max(r["seq"] for r in first.values())
    assert second["c"]["deleted"] == 0 and second["c"]["seq"] > first["c"]["seq"]
    assert second["c"]["resource_version"] == "20"
    assert decode_row(second["c"]["row"], columns_of(CMS))["data_keys"] == ["k"]
    assert second["d"]["deleted"] == 0
    assert store.seq == max(r["seq"] for r in second.values())
    assert _query(store, "SELECT state, resource_version FROM checkpoints WHERE context='ctx' AND resource=?",
                  CMS.key) == [("watching", "21")]  # fmt: skip


def test_relist_is_scoped_to_context_and_resource(store: CacheStore) -> None:
    cm_other_ctx, pod_uid = str(uuid.uuid4()), str(uuid.uuid4())
    store.relist_page("other", CMS, [_cm("other-cm", cm_other_ctx, "1")], store.begin_relist())
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": pod_uid, "resourceVersion": "1"}}
    store.relist_page("ctx", PODS, [pod], store.begin_relist())
    gen = store.begin_relist()
    store.end_relist("ctx", CMS, gen, _status())  # an empty list of configmaps in ctx
    rows = _rows(store)
    assert rows["other-cm"]["deleted"] == 0
    assert rows["p"]["deleted"] == 0


def test_apply_events(store: CacheStore) -> None:
    ux, uy, uz = (str(uuid.uuid4()) for _ in range(3))
    store.apply_events(
        "ctx",
        CMS,
        [
            ("ADDED", _cm("x", ux, "1")),
            ("ADDED", _cm("y", uy, "2")),
            ("BOOKMARK", {"metadata": {"resourceVersion": "3"}}),
        ],
        _status(rv="3"),
    )
    before = _rows(store)
    assert set(before) == {"x", "y"}
    store.apply_events(
        "ctx",
        CMS,
        [
            ("MODIFIED", _cm("x", ux, "4", k="v")),
            ("DELETED", _cm("y", uy, "5")),
            ("DELETED", _cm("ghost", str(uuid.uuid4()), "6")),
            ("ADDED", _cm("z", uz, "7")),
            ("DELETED", _cm("z", uz, "8")),
        ],
        _status(rv="8"),
    )
    after = _rows(store)
    assert set(after) == {"x", "y", "z"}  # the ghost never existed: no row
    assert after["x"]["deleted"] == 0 and after["x"]["resource_version"] == "4"
    assert decode_row(after["x"]["row"], columns_of(CMS))["data_keys"] == ["k"]
    assert after["x"]["seq"] > before["x"]["seq"]
    assert after["y"]["deleted"] == 1 and after["y"]["resource_version"] == "5"
    assert after["y"]["seq"] > after["x"]["seq"]
    assert after["z"]["deleted"] == 1 and after["z"]["resource_version"] == "8"
    assert after["z"]["seq"] > after["y"]["seq"]
    assert _query(store, "SELECT resource_version FROM checkpoints") == [("8",)]

    # a tombstoned object that comes back (even with the same RV) is live with a new seq
    store.apply_events("ctx", CMS, [("ADDED", _cm("y", uy, "5"))], _status(rv="9"))
    back = _rows(store)["y"]
    assert back["deleted"] == 0 and back["seq"] > after["z"]["seq"]

    # an event repeating the stored RV keeps the seq
    store.apply_events("ctx", CMS, [("MODIFIED", _cm("x", ux, "4", k="v"))], _status(rv="9"))
    assert _rows(store)["x"]["seq"] == after["x"]["seq"]


def test_apply_events_sanitizes(store: CacheStore) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "ns", "uid": str(uuid.uuid4()), "resourceVersion": "1",
                     "annotations": {LAST_APPLIED: "hunter2", "keep": "me"}},
        "data": {"pw": "aHVudGVyMg=="},
    }  # fmt: skip
    store.apply_events("ctx", SECRETS, [("ADDED", secret)], _status(SECRETS))
    row = _rows(store)["s"]["row"]
    assert b"hunter2" not in row and b"aHVudGVyMg==" not in row
    assert decode_row(row, columns_of(SECRETS))["annotations"] == {"keep": "me"}


def test_purge_tombstones(store: CacheStore) -> None:
    uids = [str(uuid.uuid4()) for _ in range(4)]
    store.apply_events("ctx", CMS, [("ADDED", _cm(f"o{i}", u, "1")) for i, u in enumerate(uids)], _status())
    store.apply_events(
        "ctx", CMS, [("DELETED", _cm("o0", uids[0], "2")), ("DELETED", _cm("o1", uids[1], "3"))], _status()
    )
    rows = _rows(store)
    cut = rows["o0"]["seq"]
    assert rows["o1"]["seq"] > cut
    assert store.purge_tombstones(cut) == 1
    rows = _rows(store)
    assert set(rows) == {"o1", "o2", "o3"}
    assert rows["o1"]["deleted"] == 1
    assert _query(store, "SELECT value FROM meta WHERE key='purged_seq'") == [(str(cut),)]
    assert store.purge_tombstones(store.seq) == 1
    assert set(_rows(store)) == {"o2", "o3"}
    assert _query(store, "SELECT value FROM meta WHERE key='purged_seq'") == [(str(store.seq),)]


def test_corrupt_cache_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    s = CacheStore(path)
    try:
        aside = list(tmp_path.glob("cache.db.unusable-*"))
        assert len(aside) == 1
        assert aside[0].read_bytes() == garbage
        s.relist_page("ctx", CMS, [_cm("a", str(uuid.uuid4()), "1")], s.begin_relist())
        assert set(_rows(s)) == {"a"}
        assert _query(s, "SELECT value FROM meta WHERE key='schema_version'") == [(SCHEMA_VERSION,)]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        s.close()


def test_cache_of_another_format_is_moved_aside_not_misread(tmp_path: Path) -> None:
    """A cache written by a version with another row format is rebuilt (relist), and
    a reader refuses it with the reason, instead of decoding its rows wrongly."""
    path = tmp_path / "cache.db"
    s = CacheStore(path)
    s.apply_events("ctx", CMS, [("ADDED", _cm("old", str(uuid.uuid4()), "1"))], _status())
    s.flush()
    s.close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(CacheUnusable, match=f"cache format 1, this version reads format {SCHEMA_VERSION}"):
        open_reader(path)
    s2 = CacheStore(path)
    try:
        assert len(list(tmp_path.glob("cache.db.unusable-*"))) == 1
        assert set(_rows(s2)) == set()
        assert _query(s2, "SELECT value FROM meta WHERE key='schema_version'") == [(SCHEMA_VERSION,)]
    finally:
        s2.close()


def test_reopen_keeps_seq_and_cache_id(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    s = CacheStore(path)
    s.apply_events("ctx", CMS, [("ADDED", _cm("a", str(uuid.uuid4()), "1"))], _status())
    s.flush()
    seq = s.seq
    (cache_id,) = _query(s, "SELECT value FROM meta WHERE key='cache_id'")[0]
    s.close()
    s2 = CacheStore(path)
    try:
        assert s2.seq == seq
        assert _query(s2, "SELECT value FROM meta WHERE key='cache_id'") == [(cache_id,)]
        assert not list(tmp_path.glob("*.unusable-*"))
    finally:
        s2.close()


def test_a_write_that_keeps_failing_is_counted_not_silently_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import watcher.state as state_module

    monkeypatch.setattr(state_module.time, "sleep", lambda _s: None)  # no retry delays in a unit test
    store = CacheStore(tmp_path / "cache.db")
    try:
        attempts: list[int] = []

        def failing(conn: Any, _store: CacheStore) -> None:
            attempts.append(1)
            conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")

        store._submit(failing, wait=True)
        assert len(attempts) == 5
        assert store.dropped_batches == 1
        store.flush()  # the writer survived and still works
        assert store.writer_alive()
    finally:
        store.close()


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


class ScriptedStream:
    """A watch stream yielding scripted batches; ``on_batch`` runs after each one (to
    act on the informer mid-stream). Closing it ends the iteration, as WatchStream does."""

    def __init__(self, batches: list[list[dict[str, Any]]], on_batch: Any = None) -> None:
        self.batches, self.on_batch, self.closed, self.delivered = batches, on_batch, False, 0

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        for batch in self.batches:
            if self.closed:
                return
            self.delivered += 1
            yield batch
            if self.on_batch is not None:
                self.on_batch()

    def close(self) -> None:
        self.closed = True


class ScriptedClient:
    context = "ctx"

    def __init__(self, stream: ScriptedStream) -> None:
        self._stream = stream

    def stream(self, *_args: Any, **_kwargs: Any) -> ScriptedStream:
        return self._stream


def _scripted_informer(
    store: CacheStore, stream: ScriptedStream, *, resume_from: str | None = None
) -> ResourceInformer:
    return ResourceInformer(
        client=ScriptedClient(stream),  # type: ignore[arg-type]
        descriptor=CMS, store=store, options=informers.InformerOptions(), resume_from=resume_from,
    )  # fmt: skip


def test_relist_requested_during_a_streaming_list_keeps_streaming(store: CacheStore) -> None:
    """Closing the initial state's stream ourselves (relist request) is not a server
    that cannot stream lists: the informer must not fall back to LIST for good."""
    uid = str(uuid.uuid4())
    stream = ScriptedStream([[{"type": "ADDED", "object": _cm("a", uid, "5")}]] * 3)
    inf = _scripted_informer(store, stream)
    stream.on_batch = inf.request_relist
    inf._watch(streaming_list=True)  # no StreamingListUnsupported
    assert inf.streaming and stream.closed and stream.delivered == 1


def test_stream_that_ends_before_the_initial_bookmark_still_means_unsupported(store: CacheStore) -> None:
    stream = ScriptedStream([[{"type": "ADDED", "object": _cm("a", str(uuid.uuid4()), "5")}]])
    with pytest.raises(StreamingListUnsupported):
        _scripted_informer(store, stream)._watch(streaming_list=True)


def test_relist_requested_while_no_watch_is_open_closes_the_next_watch_at_once(store: CacheStore) -> None:
    """A request made during a LIST or a backoff must not wait out the next watch's
    server timeout (5-10 minutes)."""
    stream = ScriptedStream([[{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}]] * 5)
    inf = _scripted_informer(store, stream, resume_from="5")
    inf.request_relist()  # no stream open yet
    inf._watch(streaming_list=False)
    assert stream.closed and stream.delivered == 0
