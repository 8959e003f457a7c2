"""The cache writer's data model: relists, watch events, tombstones and change seqs (watcher.state)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.unit.builders import (
    CMS,
    NO_HISTORY,
    PODS,
    SECRETS,
    checkpoints_of,
    configmap,
    informer_status,
    purged_seq,
    query_cache,
    seq_of,
    stored_rows,
)
from watcher.state import CacheStore
from watcher.tables import (
    LAST_APPLIED,
    columns_of,
    decode_row,
)


def test_relist_tombstones_objects_the_list_no_longer_has_and_keeps_unchanged_seqs(store: CacheStore) -> None:
    ua, ub, uc = (str(uuid.uuid4()) for _ in range(3))
    gen = store.begin_relist()
    store.relist_page("ctx", CMS, [configmap("a", ua, "10"), configmap("b", ub, "11")], gen)
    store.relist_page("ctx", CMS, [configmap("c", uc, "12")], gen)
    store.end_relist("ctx", CMS, gen, informer_status(state="listing", rv="12"))
    first = stored_rows(store)
    assert {n: r["deleted"] for n, r in first.items()} == {"a": 0, "b": 0, "c": 0}
    assert len({r["seq"] for r in first.values()}) == 3

    # second list: a unchanged, b gone, c modified, d new
    ud = str(uuid.uuid4())
    gen2 = store.begin_relist()
    assert gen2 != gen
    store.relist_page(
        "ctx",
        CMS,
        [configmap("a", ua, "10"), configmap("c", uc, "20", k="v"), configmap("d", ud, "21")],
        gen2,
    )
    store.end_relist("ctx", CMS, gen2, informer_status(state="watching", rv="21"))
    second = stored_rows(store)
    assert second["a"]["deleted"] == 0 and second["a"]["seq"] == first["a"]["seq"]
    assert second["b"]["deleted"] == 1 and second["b"]["seq"] > max(r["seq"] for r in first.values())
    assert second["c"]["deleted"] == 0 and second["c"]["seq"] > first["c"]["seq"]
    assert second["c"]["resource_version"] == "20"
    assert decode_row(second["c"]["row"], columns_of(CMS))["data_keys"] == ["k"]
    assert second["d"]["deleted"] == 0
    # The context's counter is at its newest row (the history's rows, derived after the
    # objects', are the newest).
    assert seq_of(store) == query_cache(store, "SELECT max(seq) FROM objects WHERE context = 'ctx'")[0][0]
    found = [
        (c["state"], c["resource_version"]) for c in checkpoints_of(store, "ctx") if c["resource"] == CMS.key
    ]
    assert found == [("watching", "21")]


def test_a_relist_tombstones_only_in_its_own_context_and_resource(store: CacheStore) -> None:
    cm_other_ctx, pod_uid = str(uuid.uuid4()), str(uuid.uuid4())
    store.relist_page("other", CMS, [configmap("other-cm", cm_other_ctx, "1")], store.begin_relist())
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": pod_uid, "resourceVersion": "1"}}
    store.relist_page("ctx", PODS, [pod], store.begin_relist())
    gen = store.begin_relist()
    store.end_relist("ctx", CMS, gen, informer_status())  # an empty list of configmaps in ctx
    rows = stored_rows(store)
    assert rows["other-cm"]["deleted"] == 0
    assert rows["p"]["deleted"] == 0


def test_watch_events_upsert_and_tombstone_with_increasing_seqs(store: CacheStore) -> None:
    ux, uy, uz = (str(uuid.uuid4()) for _ in range(3))
    store.apply_events(
        "ctx",
        CMS,
        [
            ("ADDED", configmap("x", ux, "1")),
            ("ADDED", configmap("y", uy, "2")),
            ("BOOKMARK", {"metadata": {"resourceVersion": "3"}}),
        ],
        informer_status(rv="3"),
    )
    before = stored_rows(store)
    assert set(before) == {"x", "y"}
    store.apply_events(
        "ctx",
        CMS,
        [
            ("MODIFIED", configmap("x", ux, "4", k="v")),
            ("DELETED", configmap("y", uy, "5")),
            ("DELETED", configmap("ghost", str(uuid.uuid4()), "6")),
            ("ADDED", configmap("z", uz, "7")),
            ("DELETED", configmap("z", uz, "8")),
        ],
        informer_status(rv="8"),
    )
    after = stored_rows(store)
    assert set(after) == {"x", "y", "z"}  # the ghost never existed: no row
    assert after["x"]["deleted"] == 0 and after["x"]["resource_version"] == "4"
    assert decode_row(after["x"]["row"], columns_of(CMS))["data_keys"] == ["k"]
    assert after["x"]["seq"] > before["x"]["seq"]
    assert after["y"]["deleted"] == 1 and after["y"]["resource_version"] == "5"
    assert after["y"]["seq"] > after["x"]["seq"]
    assert after["z"]["deleted"] == 1 and after["z"]["resource_version"] == "8"
    assert after["z"]["seq"] > after["y"]["seq"]
    assert [c["resource_version"] for c in checkpoints_of(store)] == ["8"]

    # a tombstoned object that comes back (even with the same RV) is live with a new seq
    store.apply_events("ctx", CMS, [("ADDED", configmap("y", uy, "5"))], informer_status(rv="9"))
    back = stored_rows(store)["y"]
    assert back["deleted"] == 0 and back["seq"] > after["z"]["seq"]

    # an event repeating the stored RV keeps the seq
    store.apply_events("ctx", CMS, [("MODIFIED", configmap("x", ux, "4", k="v"))], informer_status(rv="9"))
    assert stored_rows(store)["x"]["seq"] == after["x"]["seq"]


def test_watch_events_are_sanitized_before_they_are_stored(store: CacheStore) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "ns", "uid": str(uuid.uuid4()), "resourceVersion": "1",
                     "annotations": {LAST_APPLIED: "hunter2", "keep": "me"}},
        "data": {"pw": "aHVudGVyMg=="},
    }  # fmt: skip
    store.apply_events("ctx", SECRETS, [("ADDED", secret)], informer_status(SECRETS))
    row = stored_rows(store)["s"]["row"]
    assert b"hunter2" not in row and b"aHVudGVyMg==" not in row
    assert decode_row(row, columns_of(SECRETS))["annotations"] == {"keep": "me"}


def test_purging_drops_a_contexts_tombstones_up_to_a_seq_and_records_its_purge_point(
    store: CacheStore,
) -> None:
    uids = [str(uuid.uuid4()) for _ in range(4)]
    store.apply_events(
        "ctx", CMS, [("ADDED", configmap(f"o{i}", u, "1")) for i, u in enumerate(uids)], informer_status()
    )
    store.apply_events(
        "ctx",
        CMS,
        [("DELETED", configmap("o0", uids[0], "2")), ("DELETED", configmap("o1", uids[1], "3"))],
        informer_status(),
    )
    rows = stored_rows(store)
    cut = rows["o0"]["seq"]
    assert rows["o1"]["seq"] > cut
    assert store.purge_tombstones({"ctx": cut}) == 1
    rows = stored_rows(store)
    assert set(rows) == {"o1", "o2", "o3"}
    assert rows["o1"]["deleted"] == 1
    assert purged_seq(store) == cut
    assert store.purge_tombstones({"ctx": cut - 1}) == 0  # a purge point never goes back
    assert purged_seq(store) == cut
    assert store.purge_tombstones({"ctx": seq_of(store)}) == 1
    assert set(stored_rows(store)) == {"o2", "o3"}
    assert purged_seq(store) == seq_of(store)


def test_each_context_has_a_change_sequence_of_its_own(tmp_path: Path) -> None:
    """Seqs count per context (one writer owns each): two contexts written in the
    same transactions both count 1, 2, 3."""
    store = CacheStore(tmp_path / "cache.db", batch_wait=0.0, history=NO_HISTORY)
    for i in range(3):
        for ctx in ("ctx", "other"):
            store.apply_events(
                ctx, CMS, [("ADDED", configmap(f"{ctx}{i}", str(uuid.uuid4()), "1"))], informer_status()
            )
    rows = query_cache(store, "SELECT context, seq FROM objects ORDER BY context, seq")
    assert rows == [("ctx", 1), ("ctx", 2), ("ctx", 3), ("other", 1), ("other", 2), ("other", 3)]
    assert store.owned_positions() == {"ctx": 3, "other": 3}
    store.close()


def test_writes_coalesced_into_one_transaction_still_apply_in_enqueue_order(tmp_path: Path) -> None:
    """Ops batched into one transaction share executemany calls, and must still land
    as if applied one by one: add, delete, re-add of one object; a checkpoint per op
    (the last one wins); a context dropped after its events (its checkpoint is not
    brought back by one still pending)."""
    # Everything below in one batch.
    store = CacheStore(tmp_path / "batched.db", batch_wait=0.5, history=NO_HISTORY)
    try:
        uid = str(uuid.uuid4())
        store.apply_events("ctx", CMS, [("ADDED", configmap("a", uid, "1"))], _status("ctx", "1"))
        store.apply_events("ctx", CMS, [("DELETED", configmap("a", uid, "2"))], _status("ctx", "2"))
        store.apply_events("ctx", CMS, [("ADDED", configmap("a", uid, "3"))], _status("ctx", "3"))
        store.apply_events(
            "gone", CMS, [("ADDED", configmap("g", str(uuid.uuid4()), "1"))], _status("gone", "1")
        )
        store.drop_context("gone")
        rows = query_cache(
            store, "SELECT context, name, resource_version, deleted, seq FROM objects ORDER BY context"
        )
        assert rows == [("ctx", "a", "3", 0, 3), ("gone", "g", "1", 1, 2)]
        assert [(c["context"], c["resource_version"]) for c in checkpoints_of(store)] == [("ctx", "3")]
    finally:
        store.close()


def _status(context: str, rv: str) -> Any:
    status = informer_status(rv=rv)
    status.context = context
    return status
