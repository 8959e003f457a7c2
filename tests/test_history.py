"""History end to end (issue 22): a daemon on a real API server records changes, the
real CLI carries them into the real PostgreSQL destination, and the as-of functions
answer from there. The write model itself is tested in tests/unit/test_history.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from testbed.cluster import ControlPlanes
from testbed.cq import destination_config, history_configs, run_cloudquery, source_config
from testbed.daemon import console_script
from tests.conftest import CMS, configmap, eventually, namespace, sync, unique
from watcher.history import CHANGES_TABLE
from watcher.snapshot import SnapshotReader

HISTORY = ["k8s_object_changes", "k8s_object_lifetimes"]


def cache_changes(cache: Path, context: str = "dev") -> list[dict[str, Any]]:
    """The change rows the daemon's cache holds, as a sync reads them."""
    with SnapshotReader.open(cache) as snap:
        found = [r for b in snap.table_batches(CHANGES_TABLE, [context]) for r in b.to_pylist()]
    for r in found:
        r["uid"] = str(uuid.UUID(bytes=r["uid"])) if r["uid"] else None
        r["object"] = json.loads(r["object"]) if r["object"] else None
        r["managers"] = json.loads(r["managers"]) if r["managers"] else []
    return found


def pg_rows(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql, args)
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def synced(
    tmp: Path, dsn: str, address: str, tables: list[str], spec: dict[str, Any] | None = None, **kw: Any
) -> None:
    result = sync(tmp, dsn, spec or {}, registry="grpc", path=address, tables=tables, **kw)
    assert result.returncode == 0, result.output[-3000:]


def install_timeline(dsn: str) -> None:
    done = subprocess.run(
        [console_script("k8s-watcher"), "history", "install", "--dsn", dsn], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def test_a_cluster_admin_binding_that_lived_ten_seconds_between_two_syncs(
    planes: ControlPlanes, start_daemon: Any, tmp_path: Path, dsn: str
) -> None:
    admin = planes.servers["dev"].admin()
    cache = tmp_path / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "dev")
    tables = [*HISTORY, "k8s_clusterrolebindings"]
    synced(tmp_path, dsn, daemon.grpc_address, tables)

    name = unique("break-glass")
    path = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    binding = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}],
    }
    created_at = time.time()
    uid = admin.create(f"{path}?fieldManager=break-glass-tool", binding)["metadata"]["uid"]
    time.sleep(10)
    admin.delete(f"{path}/{name}")
    deleted_at = time.time()
    eventually(
        lambda: any(c["change_type"] == "deleted" and c["name"] == name for c in cache_changes(cache)),
        what="the deletion recorded",
    )
    synced(tmp_path, dsn, daemon.grpc_address, tables)

    changes = pg_rows(
        dsn,
        "SELECT change_type, managers, object FROM k8s_object_changes WHERE uid = %s ORDER BY change_seq",
        uid,
    )
    assert [c["change_type"] for c in changes] == ["added", "deleted"]
    assert [m["manager"] for m in changes[0]["managers"]] == ["break-glass-tool"]
    assert changes[0]["object"]["roleRef"]["name"] == "cluster-admin"
    life = pg_rows(dsn, "SELECT deleted, lived_seconds FROM k8s_object_lifetimes WHERE uid = %s", uid)
    assert life and life[0]["deleted"] and 9 <= life[0]["lived_seconds"] <= 13, life
    # The binding is gone from the inventory table, and remains in its history.
    assert not pg_rows(dsn, "SELECT 1 FROM k8s_clusterrolebindings WHERE uid = %s", uid)

    install_timeline(dsn)
    granted = """
        SELECT name FROM k8s_objects_as_of(%s, ARRAY['ClusterRoleBinding'])
        WHERE context_name = 'dev' AND object->'roleRef'->>'name' = 'cluster-admin'
    """
    assert name in {r["name"] for r in pg_rows(dsn, granted, at(created_at + 5))}
    assert name not in {r["name"] for r in pg_rows(dsn, granted, at(deleted_at + 1))}
    assert name not in {r["name"] for r in pg_rows(dsn, granted, at(created_at - 1))}
    diff = pg_rows(
        dsn, "SELECT name, change FROM k8s_objects_diff(%s, %s)", at(created_at - 1), at(created_at + 5)
    )
    assert {"name": name, "change": "added"} in diff


def test_a_server_side_apply_names_its_field_manager_and_the_image_it_replaced(
    planes: ControlPlanes, start_daemon: Any, tmp_path: Path, dsn: str
) -> None:
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique("history"))
    daemon = start_daemon(planes.kubeconfig, tmp_path / "cache.db", "dev")

    def deployment(image: str) -> dict[str, Any]:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image}]},
                },
            },
        }

    url = f"/apis/apps/v1/namespaces/{ns}/deployments/web?fieldManager=%s&force=true"
    apply = "application/apply-patch+yaml"
    uid = admin.request("PATCH", url % "installer", deployment("nginx:1.27"), content_type=apply)["metadata"][
        "uid"
    ]  # type: ignore[index]
    admin.request("PATCH", url % "deployer", deployment("nginx:1.28"), content_type=apply)
    eventually(
        lambda: any(
            c["change_type"] == "modified" for c in cache_changes(tmp_path / "cache.db") if c["name"] == "web"
        ),
        what="the apply recorded",
    )
    synced(tmp_path, dsn, daemon.grpc_address, HISTORY)
    rows = pg_rows(
        dsn,
        "SELECT change_type, managers, patch FROM k8s_object_changes WHERE uid = %s ORDER BY change_seq",
        uid,
    )
    assert [r["change_type"] for r in rows] == ["added", "modified"]
    assert [(m["manager"], m["operation"]) for m in rows[1]["managers"]] == [("deployer", "Apply")]
    assert {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "nginx:1.28"} in rows[
        1
    ]["patch"]
    install_timeline(dsn)
    image = """
        SELECT object #>> '{spec,template,spec,containers,0,image}' AS image
        FROM k8s_objects_as_of(%s, ARRAY['Deployment']) WHERE namespace = %s AND name = 'web'
    """
    applied = pg_rows(
        dsn, "SELECT observed_at FROM k8s_object_changes WHERE uid = %s ORDER BY change_seq", uid
    )
    between = applied[0]["observed_at"] + (applied[1]["observed_at"] - applied[0]["observed_at"]) / 2
    assert pg_rows(dsn, image, between, ns) == [{"image": "nginx:1.27"}]
    assert pg_rows(dsn, image, applied[1]["observed_at"], ns) == [{"image": "nginx:1.28"}]


def test_a_secrets_data_never_reaches_a_change(
    planes: ControlPlanes, start_daemon: Any, tmp_path: Path, dsn: str
) -> None:
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique("secret-history"))
    daemon = start_daemon(planes.kubeconfig, tmp_path / "cache.db", "dev")
    path = f"/api/v1/namespaces/{ns}/secrets"
    admin.create(path, {"metadata": {"name": "db"}, "stringData": {"password": "hunter2-first"}})
    admin.patch(
        f"{path}/db",
        {"metadata": {"labels": {"rotated": "yes"}}, "stringData": {"password": "hunter2-second"}},
    )
    eventually(
        lambda: any(
            c["change_type"] == "modified" and c["namespace"] == ns
            for c in cache_changes(tmp_path / "cache.db")
        ),
        what="the rotation recorded",
    )
    synced(tmp_path, dsn, daemon.grpc_address, HISTORY)
    text = json.dumps(pg_rows(dsn, "SELECT * FROM k8s_object_changes WHERE namespace = %s", ns), default=str)
    modified = pg_rows(
        dsn, "SELECT paths FROM k8s_object_changes WHERE namespace = %s AND change_type = 'modified'", ns
    )
    assert modified == [{"paths": ["/metadata/labels"]}]  # the data changed too: a Secret shows no data
    for secret in ("hunter2", "aHVudGVyMi", "odW50ZXIy", "h1bnRlcj"):  # plain and base64 at each offset
        assert secret not in text
    raw = (tmp_path / "cache.db").read_bytes()
    assert b"hunter2" not in raw and b"aHVudGVyMi" not in raw


def history_kept_apart(tmp: Path, dsn: str, address: str) -> None:
    """One ``cloudquery sync`` as docs/history.md configures it: the inventory through a
    destination that deletes stale rows, the history through one that never does."""
    inventory = source_config({}, registry="grpc", path=address, tables=["k8s_configmaps"], name="k8s")
    configs = [inventory, destination_config(dsn), *history_configs(dsn, path=address)]
    result = run_cloudquery(["sync"], workdir=tmp / "cq-apart", configs=configs)
    assert result.returncode == 0, result.output[-3000:]


def test_history_the_cache_purged_stays_at_the_destination_and_incremental_sends_only_new_changes(
    planes: ControlPlanes, start_daemon: Any, tmp_path: Path, dsn: str
) -> None:
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique("kept"))
    cache = tmp_path / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "dev", extra_args=["--history-retention", "15s"])
    first = configmap(admin, ns, "first", k="1")["metadata"]["uid"]
    eventually(lambda: any(c["uid"] and c["name"] == "first" for c in cache_changes(cache)), what="recorded")
    changes_of_first = "SELECT change_type FROM k8s_object_changes WHERE uid = %s"
    history_kept_apart(tmp_path, dsn, daemon.grpc_address)
    assert [r["change_type"] for r in pg_rows(dsn, changes_of_first, first)] == ["added"]
    eventually(lambda: not any(c["name"] == "first" for c in cache_changes(cache)), timeout=60, what="purged")
    history_kept_apart(tmp_path, dsn, daemon.grpc_address)
    assert [r["change_type"] for r in pg_rows(dsn, changes_of_first, first)] == ["added"]
    assert pg_rows(dsn, "SELECT 1 FROM k8s_configmaps WHERE uid = %s", first)

    # Incremental: the destination deletes only what the plugin says (never history), and
    # the second sync sends the new change only.
    spec = {"incremental": True}
    synced(tmp_path, dsn, daemon.grpc_address, HISTORY, spec=spec, with_state_backend=True)
    sent = "SELECT change_seq, _cq_sync_time FROM k8s_object_changes"
    before = {r["change_seq"]: r["_cq_sync_time"] for r in pg_rows(dsn, sent)}
    admin.patch(f"/api/v1/namespaces/{ns}/configmaps/first", {"data": {"k": "2"}})
    eventually(
        lambda: any(c["change_type"] == "modified" and c["name"] == "first" for c in cache_changes(cache)),
        what="recorded",
    )
    synced(tmp_path, dsn, daemon.grpc_address, HISTORY, spec=spec, with_state_backend=True)
    after = {r["change_seq"]: r["_cq_sync_time"] for r in pg_rows(dsn, sent)}
    assert set(after) > set(before) and all(after[s] == before[s] for s in before), "an old change sent again"
    assert [r["change_type"] for r in pg_rows(dsn, changes_of_first + " ORDER BY change_seq", first)] == [
        "added",
        "modified",
    ]


def test_a_compaction_while_the_daemon_is_down_leaves_a_gap_row(
    planes: ControlPlanes, start_daemon: Any, tmp_path: Path
) -> None:
    admin = planes.servers["dev"].admin()
    assert planes.etcd is not None
    ns = namespace(admin, unique("gap"))
    cm = configmap(admin, ns, "moving", k="0")["metadata"]["uid"]
    cache = tmp_path / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "dev")
    eventually(lambda: any(c["uid"] and c["name"] == "moving" for c in cache_changes(cache)), what="observed")
    daemon.terminate()
    for i in range(1, 4):
        admin.patch(f"/api/v1/namespaces/{ns}/configmaps/moving", {"data": {"k": str(i)}})
    configmap(admin, ns, "born-while-down")
    planes.etcd.compact()  # the stored RVs of configmaps (no watch cache here) expire
    daemon.start()
    eventually(
        lambda: any(c["change_type"] == "gap" and c["resource"] == CMS.key for c in cache_changes(cache)),
        what="a gap row",
    )
    mine = [c for c in cache_changes(cache) if c["namespace"] == ns or c["change_type"] == "gap"]
    kinds = [
        (c["change_type"], c["name"]) for c in mine if c["change_type"] != "gap" and c["namespace"] == ns
    ]
    assert ("modified", "moving") in kinds and ("added", "born-while-down") in kinds
    moving = [c for c in mine if c["name"] == "moving" and c["change_type"] == "modified"]
    assert len(moving) == 1 and moving[0]["object"]["data"] == {"k": "3"}  # versions 1 and 2 are hidden
    assert str(cm)


def test_no_change_lost_or_duplicated_through_a_kill_9(
    planes: ControlPlanes, start_daemon: Any, tmp_path: Path
) -> None:
    admin = planes.servers["prod"].admin()
    ns = namespace(admin, unique("kill"))
    cache = tmp_path / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "prod")
    versions: set[tuple[str, str]] = set()

    def write(i: int) -> None:
        name = f"c{i % 7}"
        found = admin.get(f"/api/v1/namespaces/{ns}/configmaps/{name}")
        if found is None:
            obj = configmap(admin, ns, name, n=str(i))
        else:
            obj = admin.patch(f"/api/v1/namespaces/{ns}/configmaps/{name}", {"data": {"n": str(i)}})
        versions.add((obj["metadata"]["uid"], obj["metadata"]["resourceVersion"]))

    for i in range(30):
        write(i)
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait()
    for i in range(30, 60):
        write(i)
    daemon.start()
    for i in range(60, 80):
        write(i)

    def recorded() -> list[tuple[str, str]]:
        return [
            (str(c["uid"]), c["resource_version"])
            for c in cache_changes(cache, "prod")
            if c["namespace"] == ns and c["change_type"] in ("added", "modified")
        ]

    eventually(lambda: set(recorded()) >= versions, timeout=60, what="every version recorded")
    found = recorded()
    assert len(found) == len(set(found)), "a change recorded twice"
    assert set(found) == versions
