"""Object history: patches, managers, the policy, and what the cache writer records
(watcher.history, watcher.cache.history), on a real SQLite cache."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import jsonpatch
import orjson
import pytest

from tests.unit.builders import CMS, SECRETS, configmap, informer_status, secret
from watcher.catalog import selects
from watcher.history import (
    CHANGES_TABLE,
    HISTORY_TABLES,
    LIFETIMES_TABLE,
    HistoryPolicy,
    changed_managers,
    json_patch,
    managers_of,
    same_but_status,
)
from watcher.plugin import Plugin
from watcher.resources import BY_KEY
from watcher.snapshot import SnapshotReader
from watcher.state import CacheStore

DEPLOYMENTS, EVENTS, LEASES = (
    BY_KEY["deployments.apps"],
    BY_KEY["events.events.k8s.io"],
    BY_KEY["leases.coordination.k8s.io"],
)


def rows(store: CacheStore, table: str) -> list[dict[str, Any]]:
    """A history table as a sync reads it (JSON columns parsed), in seq order."""
    store.flush()
    assert store.path is not None
    with SnapshotReader.open(store.path) as snap:
        found = [r for b in snap.table_batches(table, ["ctx"]) for r in b.to_pylist()]
    for r in found:
        if isinstance(r.get("uid"), bytes):
            r["uid"] = str(uuid.UUID(bytes=r["uid"]))
        for k in ("managers", "patch", "object"):
            if isinstance(r.get(k), (bytes, str)):
                r[k] = orjson.loads(r[k])
    key = "change_seq" if table == CHANGES_TABLE else "last_change_seq"
    return sorted(found, key=lambda r: r[key])


def managed(manager: str, operation: str, time: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": operation,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    }


def deployment(uid: str, rv: str, image: str, *managers: dict[str, Any], replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "prod",
            "uid": uid,
            "resourceVersion": rv,
            "creationTimestamp": "2026-12-06T02:00:00Z",
            "managedFields": list(managers),
        },
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "web", "image": image}]}},
        },
        "status": {"replicas": replicas},
    }


# --------------------------------------------------------------------------- patches


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"a": 1, "b": [1, 2, 3]}, {"a": 2, "b": [1, 3]}),
        ({"a": {"x/y": 1, "m~n": 2}}, {"a": {"x/y": 3}}),
        ({"l": [{"n": 1}, {"n": 2}]}, {"l": [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]}),
        ({"l": [1, 2, 3, 4]}, {"l": []}),
        ({"v": True}, {"v": 1}),
        ({"v": {"a": 1}}, {"v": [1]}),
        ({"same": {"deep": [1, {"x": None}]}}, {"same": {"deep": [1, {"x": None}]}}),
    ],
)
def test_a_patch_applied_by_an_independent_implementation_gives_the_new_document(old: Any, new: Any) -> None:
    patch = json_patch(old, new)
    assert jsonpatch.apply_patch(copy.deepcopy(old), patch) == new
    assert (patch == []) == (orjson.dumps(old) == orjson.dumps(new))


def test_an_unchanged_document_has_an_empty_patch_but_true_and_1_differ() -> None:
    assert json_patch({"a": [1, {"b": "c"}]}, {"a": [1, {"b": "c"}]}) == []
    assert json_patch({"a": True}, {"a": 1}) == [{"op": "replace", "path": "/a", "value": 1}]


# --------------------------------------------------------------------------- managers


def test_the_managers_of_a_change_are_those_whose_entry_is_new_or_moved() -> None:
    before = managers_of(
        deployment(
            "u", "1", "a", managed("helm", "Update", "t1", {"f:spec": {}}), managed("kcm", "Update", "t1", {})
        )
    )
    after = managers_of(
        deployment(
            "u",
            "2",
            "b",
            managed("helm", "Update", "t1", {"f:spec": {}}),
            managed("kcm", "Update", "t1", {"f:status": {}}),  # same time, other fields
            managed("deployer", "Apply", "t2", {"f:spec": {}}),
        )
    )
    assert [m["manager"] for m in changed_managers(before, after)] == ["kcm", "deployer"]
    assert changed_managers(after, after) == []
    # A forced apply took helm's field: helm's entry shrank, at its old time: not an author.
    took = managers_of(
        deployment(
            "u",
            "3",
            "c",
            managed("helm", "Update", "t1", {}),
            managed("kcm", "Update", "t1", {"f:status": {}}),
            managed("deployer", "Apply", "t3", {"f:spec": {"f:x": {}}}),
        )
    )
    assert [m["manager"] for m in changed_managers(after, took)] == ["deployer"]


# --------------------------------------------------------------------------- policy


def test_the_default_policy_keeps_configuration_and_leaves_churn_out() -> None:
    policy = HistoryPolicy()
    assert policy.records(DEPLOYMENTS) and policy.records(SECRETS) and policy.records(CMS)
    assert not policy.records(EVENTS) and not policy.records(LEASES)
    assert HistoryPolicy(on=("events",)).records(EVENTS)
    assert not HistoryPolicy(off=("k8s_config_maps", "configmaps")).records(CMS)
    assert not HistoryPolicy(enabled=False).records(DEPLOYMENTS)


def test_status_only_changes_are_kept_only_when_the_policy_asks() -> None:
    assert not HistoryPolicy().keeps(["/status/replicas", "/status"])
    assert HistoryPolicy().keeps(["/status/replicas", "/spec/replicas"])
    assert HistoryPolicy(status_updates=True).keeps(["/status/replicas"])
    assert not HistoryPolicy().keeps([])


def test_a_status_only_change_is_told_without_a_patch_and_as_json() -> None:
    old = {"spec": {"replicas": 1, "paused": False}, "status": {"ready": 0}}
    assert same_but_status(old, {"spec": {"replicas": 1, "paused": False}, "status": {"ready": 1}})
    assert same_but_status(old, {"spec": {"replicas": 1, "paused": False}})
    assert not same_but_status(old, {"spec": {"replicas": 2, "paused": False}, "status": {"ready": 0}})
    # Equal in Python, not in JSON (nor in a patch): 0 is not false.
    assert not same_but_status(old, {"spec": {"replicas": 1, "paused": 0}, "status": {"ready": 0}})


# --------------------------------------------------------------------------- the writer


def test_a_first_list_is_observed_then_watch_events_are_added_modified_and_deleted(store: CacheStore) -> None:
    ua, ub = str(uuid.uuid4()), str(uuid.uuid4())
    gen = store.begin_relist()
    store.relist_page("ctx", CMS, [configmap("a", ua, "10", k="1")], gen)
    store.end_relist("ctx", CMS, gen, informer_status(rv="10"))
    status = informer_status(rv="13")
    store.apply_events(
        "ctx",
        CMS,
        [
            ("ADDED", configmap("b", ub, "11", k="x")),
            ("MODIFIED", configmap("a", ua, "12", k="2")),
            ("DELETED", configmap("b", ub, "13", k="x")),
        ],
        status,
    )
    changes = rows(store, CHANGES_TABLE)
    assert [(c["name"], c["change_type"]) for c in changes] == [
        ("a", "observed"),
        ("b", "added"),
        ("a", "modified"),
        ("b", "deleted"),
    ]
    modified = changes[2]
    assert modified["patch"] == [{"op": "replace", "path": "/data/k", "value": "2"}]
    assert modified["paths"] == ["/data/k"]
    assert (modified["resource_version"], modified["previous_resource_version"]) == ("12", "10")
    assert (
        modified["object"]["data"] == {"k": "2"} and "resourceVersion" not in modified["object"]["metadata"]
    )
    assert changes[0]["patch"] is None and changes[0]["object"]["data"] == {"k": "1"}
    assert (
        str(modified["uid"]) == ua
        and modified["kind"] == "ConfigMap"
        and modified["resource"] == "configmaps"
    )
    lives = {r["name"]: r for r in rows(store, LIFETIMES_TABLE)}
    assert (lives["a"]["deleted"], lives["a"]["first_seen_as"]) == (False, "observed")
    assert lives["b"]["deleted"] and lives["b"]["first_seen_as"] == "added"
    assert lives["b"]["lived_seconds"] is not None and lives["b"]["lived_seconds"] >= 0


def test_a_change_names_its_managers_and_its_patch_replaces_the_image(store: CacheStore) -> None:
    uid = str(uuid.uuid4())
    helm = managed("helm", "Update", "2026-12-06T02:00:00Z", {"f:spec": {"f:replicas": {}}})
    v1 = deployment(uid, "5", "nginx:1.27", helm)
    deployer = managed("deployer", "Apply", "2026-12-06T02:13:00Z", {"f:spec": {"f:template": {}}})
    v2 = deployment(uid, "6", "nginx:1.28", helm, deployer)
    store.apply_events(
        "ctx", DEPLOYMENTS, [("ADDED", v1), ("MODIFIED", v2)], informer_status(DEPLOYMENTS, rv="6")
    )
    added, modified = rows(store, CHANGES_TABLE)
    assert [m["manager"] for m in added["managers"]] == ["helm"]
    assert modified["managers"] == [
        {"manager": "deployer", "operation": "Apply", "subresource": "", "time": "2026-12-06T02:13:00Z"}
    ]
    assert modified["patch"] == [
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "nginx:1.28"}
    ]
    assert "managedFields" not in modified["object"]["metadata"]


def test_status_only_updates_are_skipped_and_the_next_patch_starts_from_the_last_recorded(
    store: CacheStore,
) -> None:
    uid = str(uuid.uuid4())
    v1 = deployment(uid, "1", "a:1")
    v2 = deployment(uid, "2", "a:1")
    v2["status"] = {"replicas": 1, "ready": 1}
    v3 = deployment(uid, "3", "a:2")
    v3["status"] = {"replicas": 1, "ready": 1}
    store.apply_events(
        "ctx", DEPLOYMENTS, [("ADDED", v1), ("MODIFIED", v2), ("MODIFIED", v3)], informer_status(DEPLOYMENTS)
    )
    changes = rows(store, CHANGES_TABLE)
    assert [c["resource_version"] for c in changes] == ["1", "3"]
    assert changes[1]["previous_resource_version"] == "1"
    before = changes[0]["object"]
    assert jsonpatch.apply_patch(before, changes[1]["patch"]) == changes[1]["object"]


def test_a_secret_change_holds_metadata_only(store: CacheStore) -> None:
    uid = str(uuid.uuid4())
    db = secret("db", uid, "1", password="aHVudGVyMg==")
    db["metadata"]["labels"] = {"a": "1"}
    db["stringData"] = {"token": "hunter2"}
    changed = copy.deepcopy(db)
    changed["metadata"].update(resourceVersion="2", labels={"a": "2"})
    changed["data"] = {"password": "c2VjcmV0"}
    store.apply_events("ctx", SECRETS, [("ADDED", db), ("MODIFIED", changed)], informer_status(SECRETS))
    text = orjson.dumps(rows(store, CHANGES_TABLE), default=str)
    assert b"aHVudGVy" not in text and b"hunter2" not in text and b"c2VjcmV0" not in text
    assert b'"/metadata/labels/a"' in text


def test_a_relist_after_a_watch_ended_records_a_gap_and_what_it_found(store: CacheStore) -> None:
    ua, ub, uc = (str(uuid.uuid4()) for _ in range(3))
    gen = store.begin_relist()
    store.relist_page("ctx", CMS, [configmap("a", ua, "1"), configmap("b", ub, "2")], gen)
    store.end_relist("ctx", CMS, gen, informer_status(rv="2"))
    # The watch expired (410): the relist finds a unchanged, b gone, c new.
    gen = store.begin_relist()
    store.relist_page("ctx", CMS, [configmap("a", ua, "1"), configmap("c", uc, "9")], gen)
    store.end_relist("ctx", CMS, gen, informer_status(rv="9"))
    changes = rows(store, CHANGES_TABLE)
    assert [(c["name"], c["change_type"]) for c in changes] == [
        ("a", "observed"),
        ("b", "observed"),
        ("c", "added"),
        ("b", "deleted"),
        (None, "gap"),
    ]
    gap = changes[-1]
    assert gap["uid"] is None and gap["resource"] == "configmaps" and gap["resource_version"] == "9"
    assert changes[3]["object"]["metadata"]["name"] == "b"  # its last known state


def test_replaying_the_same_versions_records_nothing_twice(store: CacheStore) -> None:
    uid = str(uuid.uuid4())
    events = [("ADDED", configmap("a", uid, "1")), ("MODIFIED", configmap("a", uid, "2", k="v"))]
    store.apply_events("ctx", CMS, events, informer_status())
    store.apply_events("ctx", CMS, events[1:], informer_status())  # a resumed watch re-delivers
    assert [c["resource_version"] for c in rows(store, CHANGES_TABLE)] == ["1", "2"]


def test_kinds_without_history_record_nothing(store: CacheStore) -> None:
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "e", "namespace": "ns", "uid": str(uuid.uuid4()), "resourceVersion": "1"},
        "reason": "Pulled",
    }
    store.apply_events("ctx", EVENTS, [("ADDED", event)], informer_status(EVENTS))
    assert rows(store, CHANGES_TABLE) == [] and rows(store, LIFETIMES_TABLE) == []


def test_the_purge_drops_old_history_but_no_object(store: CacheStore) -> None:
    uid = str(uuid.uuid4())
    store.apply_events("ctx", CMS, [("ADDED", configmap("a", uid, "1"))], informer_status())
    store.apply_events("ctx", CMS, [("DELETED", configmap("a", uid, "2"))], informer_status())
    store.apply_events("ctx", CMS, [("ADDED", configmap("b", str(uuid.uuid4()), "3"))], informer_status())
    assert len(rows(store, CHANGES_TABLE)) == 3
    import time

    assert store.purge_history(now=time.time() + 0.9 * 86_400) == 0
    # A day later: every change is past retention, and a's lifetime (deleted); b lives on.
    assert store.purge_history(now=time.time() + 1.1 * 86_400) == 4
    assert rows(store, CHANGES_TABLE) == []
    assert [r["name"] for r in rows(store, LIFETIMES_TABLE)] == ["b"]


def test_the_purge_keeps_history_under_its_size_bound_oldest_first(tmp_path: Any) -> None:
    store = CacheStore(tmp_path / "c.db", batch_wait=0.0, history=HistoryPolicy(max_bytes=1500))
    try:
        uid = str(uuid.uuid4())
        events = [
            ("ADDED" if i == 0 else "MODIFIED", configmap("a", uid, str(i + 1), k="x" * 100 + str(i)))
            for i in range(10)
        ]
        store.apply_events("ctx", CMS, events, informer_status())
        assert store.purge_history() > 0
        left = rows(store, CHANGES_TABLE)
        assert 0 < len(left) < 10 and left[-1]["resource_version"] == "10"
        assert [c["resource_version"] for c in left] == [str(i) for i in range(11 - len(left), 11)]
    finally:
        store.close()


def test_a_catch_all_pattern_leaves_the_history_tables_out_and_their_names_select_them() -> None:
    plugin = Plugin
    assert not set(HISTORY_TABLES) & set(plugin.select_tables(["*"], []))
    assert not set(HISTORY_TABLES) & set(plugin.select_tables(["k8s_*"], []))
    assert "k8s_pods" in plugin.select_tables(["*"], [])
    assert plugin.select_tables(["k8s_object_*"], []) == HISTORY_TABLES
    assert plugin.select_tables(["*", "k8s_object_changes"], [])[-1] == CHANGES_TABLE
    assert plugin.select_tables(["k8s_object_*"], ["k8s_object_lifetimes"]) == (CHANGES_TABLE,)
    assert selects("k8s_object_lifetimes", LIFETIMES_TABLE) and not selects("*", LIFETIMES_TABLE)
