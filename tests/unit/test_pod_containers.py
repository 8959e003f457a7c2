"""k8s_pod_containers: rows derived from each pod, cached, changed and tombstoned with it
(watcher.resources.POD_CONTAINERS, watcher.state, watcher.tables)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from tests.unit.builders import PODS, informer_status, meta, stored_rows
from watcher.resources import POD_CONTAINERS
from watcher.state import CacheStore
from watcher.tables import decode_row, derived_rows, derived_schema, rows_to_batch


def pod(rv: str = "1", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta("web", resourceVersion=rv),
        "spec": {
            "nodeName": "node-1",
            "securityContext": {"runAsNonRoot": True},
            "initContainers": [{"name": "setup", "image": "busybox:1"}],
            "containers": [
                {
                    "name": "app",
                    "image": "nginx:1.27",
                    "ports": [{"containerPort": 80}],
                    "resources": {"requests": {"cpu": "10m"}, "limits": {"memory": "64Mi"}},
                    "securityContext": {"privileged": True, "runAsNonRoot": False},
                },
                {"name": "proxy", "image": "envoy:1", "securityContext": {"readOnlyRootFilesystem": True}},
            ],
            "ephemeralContainers": [{"name": "debug", "image": "busybox:1"}],
        },
        "status": {
            "initContainerStatuses": [
                {"name": "setup", "ready": False, "restartCount": 0, "imageID": "busybox@sha256:1",
                 "state": {"terminated": {"reason": "Completed", "exitCode": 0}}},
            ],
            "containerStatuses": [
                {"name": "app", "ready": True, "restartCount": 2, "state": {"running": {}}},
                {"name": "proxy", "ready": False, "restartCount": 5,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ],
            **status,
        },
    }  # fmt: skip


def rows_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: decode_row(doc, POD_CONTAINERS.columns) | {"uid": uid}
        for _d, uid, name, doc in derived_rows(obj, PODS)
    }


def test_every_init_regular_and_ephemeral_container_is_a_row_with_its_spec_and_status() -> None:
    obj = pod()
    rows = rows_of(obj)
    assert [(n, r["container_type"]) for n, r in rows.items()] == [
        ("setup", "init"), ("app", "regular"), ("proxy", "regular"), ("debug", "ephemeral"),
    ]  # fmt: skip
    app, proxy, setup, debug = rows["app"], rows["proxy"], rows["setup"], rows["debug"]
    assert app["pod_uid"] == obj["metadata"]["uid"] and app["pod_name"] == "web" and app["namespace"] == "ns"
    assert (app["image"], app["node_name"], app["ready"], app["restart_count"]) == (
        "nginx:1.27",
        "node-1",
        True,
        2,
    )
    assert (app["state"], app["state_reason"]) == ("running", None)
    assert (proxy["state"], proxy["state_reason"]) == ("waiting", "CrashLoopBackOff")
    assert (setup["state"], setup["state_reason"], setup["image_id"]) == (
        "terminated",
        "Completed",
        "busybox@sha256:1",
    )
    assert (app["requests_cpu"], app["limits_memory"], app["requests_memory"]) == ("10m", "64Mi", None)
    assert app["ports"] == [{"containerPort": 80}]
    assert (app["privileged"], proxy["privileged"], proxy["read_only_root_filesystem"]) == (True, None, True)
    # run_as_non_root: the container's own setting, else the pod's.
    assert (app["run_as_non_root"], proxy["run_as_non_root"]) == (False, True)
    assert (debug["state"], debug["ready"], debug["restart_count"]) == (None, None, None)  # no status yet


def test_a_container_s_uid_is_stable_across_writes_of_its_pod_and_distinct_between_pods() -> None:
    obj = pod()
    later = copy.deepcopy(obj)
    later["metadata"]["resourceVersion"] = "2"
    later["status"]["phase"] = "Running"
    first = {n: r["uid"] for n, r in rows_of(obj).items()}
    assert {n: r["uid"] for n, r in rows_of(later).items()} == first
    assert len(set(first.values())) == 4
    assert not set(first.values()) & {r["uid"] for r in rows_of(pod()).values()}  # another pod's uid


def test_container_rows_are_cached_with_their_pod_and_change_with_it(store: CacheStore) -> None:
    obj = pod()
    store.apply_events("ctx", PODS, [("ADDED", obj)], informer_status(PODS))
    rows = stored_rows(store)
    assert set(rows) == {"web", "web/setup", "web/app", "web/proxy", "web/debug"}
    assert {r["table_name"] for n, r in rows.items() if n != "web"} == {"k8s_pod_containers"}
    assert {r["resource"] for n, r in rows.items() if n != "web"} == {"pods/containers"}
    changed = copy.deepcopy(obj)
    changed["metadata"]["resourceVersion"] = "2"
    changed["status"]["containerStatuses"][0]["restartCount"] = 3
    store.apply_events("ctx", PODS, [("MODIFIED", changed)], informer_status(PODS))
    after = stored_rows(store)
    assert all(after[n]["seq"] > rows[n]["seq"] for n in rows)
    assert decode_row(after["web/app"]["row"], POD_CONTAINERS.columns)["restart_count"] == 3


def test_a_deleted_pod_tombstones_its_containers_with_new_seqs(store: CacheStore) -> None:
    obj = pod()
    store.apply_events("ctx", PODS, [("ADDED", obj)], informer_status(PODS))
    before = stored_rows(store)
    store.apply_events("ctx", PODS, [("DELETED", {**obj, "metadata": {**obj["metadata"], "resourceVersion": "9"}})],
                       informer_status(PODS))  # fmt: skip
    after = stored_rows(store)
    assert all(r["deleted"] == 1 for r in after.values())
    assert all(after[n]["seq"] > max(r["seq"] for r in before.values()) for n in after)


def test_a_relist_keeps_unchanged_containers_seqs_and_tombstones_those_of_vanished_pods(
    store: CacheStore,
) -> None:
    obj = pod()
    gen = store.begin_relist()
    store.relist_page("ctx", PODS, [obj], gen)
    store.end_relist("ctx", PODS, gen, informer_status(PODS))
    first = stored_rows(store)
    gen2 = store.begin_relist()
    store.relist_page("ctx", PODS, [copy.deepcopy(obj)], gen2)
    store.end_relist("ctx", PODS, gen2, informer_status(PODS))
    second = stored_rows(store)
    assert {n: r["seq"] for n, r in second.items()} == {n: r["seq"] for n, r in first.items()}
    gen3 = store.begin_relist()
    store.end_relist("ctx", PODS, gen3, informer_status(PODS))  # the pod is gone
    assert all(r["deleted"] == 1 for r in stored_rows(store).values())


def test_container_rows_become_a_batch_with_the_pod_uid_as_a_uuid() -> None:
    obj = pod()
    docs = [doc for _d, _uid, _name, doc in derived_rows(obj, PODS)]
    batch = rows_to_batch(derived_schema(POD_CONTAINERS), "ctx", docs)
    assert batch.num_rows == 4
    assert batch.schema.field("pod_uid").type == batch.schema.field("uid").type
    assert {str(uuid.UUID(bytes=u)) for u in batch.column("pod_uid").storage.to_pylist()} == {
        obj["metadata"]["uid"]
    }
    assert batch.column("container_type").to_pylist() == ["init", "regular", "regular", "ephemeral"]
