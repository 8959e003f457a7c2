"""A context removed from the kubeconfig (CacheStore.drop_context): its objects become
tombstones that incremental syncs delete, and the cache remembers it until the purge."""

from __future__ import annotations

from tests.unit.builders import CMS, checkpoints_of, configmap, informer_status, query_cache, seq_of
from watcher import state
from watcher.state import CacheStore


def test_dropping_a_context_tombstones_its_objects_and_forgets_its_state(store: CacheStore) -> None:
    store.apply_events(
        "ctx",
        CMS,
        [("ADDED", configmap("a", "u1", "1")), ("ADDED", configmap("b", "u2", "2"))],
        informer_status(),
    )
    store.apply_events("other", CMS, [("ADDED", configmap("c", "u3", "3"))], informer_status())
    store.write_cluster("ctx", server="https://x")
    before = seq_of(store)
    store.drop_context("ctx")
    rows = query_cache(
        store, "SELECT context, uid, deleted, seq FROM objects WHERE resource NOT LIKE '~%' ORDER BY uid"
    )
    assert [(c, u, d) for c, u, d, _ in rows] == [("ctx", "u1", 1), ("ctx", "u2", 1), ("other", "u3", 0)]
    assert all(seq > before for c, _, _, seq in rows if c == "ctx")
    # Its history stays live: it is what happened (an incremental sync deletes no change).
    history = query_cache(
        store, "SELECT count(*) FROM objects WHERE context = 'ctx' AND resource LIKE '~%' AND deleted"
    )
    assert history == [(0,)]
    assert query_cache(
        store, "SELECT count(*) FROM objects WHERE context = 'ctx' AND resource LIKE '~%'"
    ) == [(4,)]
    assert checkpoints_of(store, "ctx") == []
    with state.reading(store.path) as conn:
        assert [c["context"] for c in state.read_clusters(conn)] == []
        retired = state.read_retired_contexts(conn)
    assert [(r["context"], r["seq"]) for r in retired] == [("ctx", seq_of(store))]


def test_a_context_added_again_is_no_longer_retired(store: CacheStore) -> None:
    store.drop_context("ctx")
    store.unretire_context("ctx")
    store.flush()
    with state.reading(store.path) as conn:
        assert state.read_retired_contexts(conn) == []


def test_the_tombstone_purge_also_forgets_retired_contexts(store: CacheStore) -> None:
    store.drop_context("old")
    store.flush()
    store.drop_context("new")
    store.purge_tombstones({"old": seq_of(store, "old")})
    with state.reading(store.path) as conn:
        assert [r["context"] for r in state.read_retired_contexts(conn)] == ["new"]
