"""The cache in PostgreSQL (``cache_url``), on a real PostgreSQL server: the same reads
as a SQLite file, one writer or a group of replicas owning contexts, fencing, a change
feed that misses nothing with concurrent writers and hand-overs, and an outage."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import ControlPlanes
from testbed.postgres import Postgres, postgres_server
from tests.conftest import assert_pg_equals_api, cached, eventually, namespace, new_dsn, sync, truth, unique
from tests.conftest import configmap as create_configmap
from tests.unit.builders import CMS, NO_HISTORY, configmap, informer_status
from watcher.cache import writeloop
from watcher.snapshot import SnapshotReader
from watcher.state import CacheLocked, CacheStore, CacheUnusable

TABLE = CMS.table
TABLES = ["k8s_clusters", "k8s_namespaces", "k8s_pods", "k8s_configmaps", "k8s_secrets"]


@pytest.fixture
def cache_url(pg_server: Postgres) -> str:
    """An empty database of the session's PostgreSQL, as a cache URL."""
    return new_dsn(pg_server)


def _status(context: str, rv: str = "1") -> Any:
    status = informer_status(rv=rv)
    status.context = context
    return status


def _apply_script(store: CacheStore) -> None:
    """Events, a relist that drops one object, a resource dropped, a context retired."""
    uids = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(6)]
    store.apply_events(
        "a",
        CMS,
        [("ADDED", configmap(f"cm{i}", uids[i], str(10 + i), k=str(i))) for i in range(4)],
        _status("a"),
    )
    store.apply_events(
        "a", CMS, [("MODIFIED", configmap("cm1", uids[1], "20", k="changed"))], _status("a", "20")
    )
    store.apply_events("a", CMS, [("DELETED", configmap("cm2", uids[2], "21"))], _status("a", "21"))
    gen = store.begin_relist()
    store.relist_page(
        "a", CMS, [configmap("cm0", uids[0], "10", k="0"), configmap("cm1", uids[1], "20", k="changed")], gen
    )
    store.end_relist("a", CMS, gen, _status("a", "30"))
    store.apply_events("b", CMS, [("ADDED", configmap("other", uids[4], "5"))], _status("b"))
    store.apply_events("gone", CMS, [("ADDED", configmap("x", uids[5], "5"))], _status("gone"))
    store.drop_context("gone")
    store.flush()


def _read_all(where: Any) -> dict[str, Any]:
    with SnapshotReader.open(where) as snap:
        return {
            "position": snap.position,
            "rows": {
                ctx: sorted(
                    (r for b in snap.batches(TABLE, ctx) for r in b.to_pylist()), key=lambda r: r["uid"]
                )
                for ctx in ("a", "b", "gone")
            },
            "deleted": {
                ctx: sorted(snap.deleted_uids(TABLE, ctx, since_seq=0)) for ctx in ("a", "b", "gone")
            },
            "changed": snap.changed({"a": 5, "b": 0, "gone": 0}),
        }


def test_the_postgresql_cache_reads_back_exactly_what_the_sqlite_cache_does(
    cache_url: str, tmp_path: Path
) -> None:
    """The same writes through both backends: the same rows, tombstones, seqs, changes."""
    outcomes = []
    for where in (tmp_path / "cache.db", cache_url):
        store = CacheStore(where, batch_wait=0.0)
        try:
            _apply_script(store)
        finally:
            store.close()
        outcomes.append(_read_all(where))
    sqlite, postgres = outcomes
    assert postgres == sqlite
    assert [r["name"] for r in postgres["rows"]["a"]] == ["cm0", "cm1"]  # cm2 deleted, cm3 relisted away
    assert len(postgres["deleted"]["a"]) == 2 and postgres["rows"]["gone"] == []


def test_an_unreachable_cache_database_fails_at_start_with_a_clear_message(pg_server: Postgres) -> None:
    """Refused at once, naming the database without its password."""
    url = "postgresql://watcher:s3cret-pw@127.0.0.1:1/cache?connect_timeout=3"
    with pytest.raises(CacheUnusable) as raised:
        CacheStore(url)
    message = str(raised.value)
    assert "cache database postgresql+psycopg://watcher:***@127.0.0.1:1/cache" in message
    assert "unreachable" in message and "Connection refused" in message
    assert "s3cret-pw" not in message


def test_a_cache_database_has_one_lone_writer_or_one_group_of_replicas(cache_url: str) -> None:
    lone = CacheStore(cache_url)
    try:
        with pytest.raises(CacheLocked, match="already written by another daemon or replica group"):
            CacheStore(cache_url)
        with pytest.raises(CacheLocked, match="already written by a lone daemon"):
            CacheStore(cache_url, shared=True)
    finally:
        lone.close()
    replicas = [CacheStore(cache_url, shared=True) for _ in range(2)]  # replicas share it
    try:
        with pytest.raises(CacheLocked):
            CacheStore(cache_url)
    finally:
        for r in replicas:
            r.close()


def test_a_second_replica_group_cannot_join_a_database_while_the_first_writes_it(cache_url: str) -> None:
    """Two groups would each claim every context; once the first group is gone, the
    database may change hands."""
    first = CacheStore(cache_url, shared=True, group="blue")
    try:
        with pytest.raises(CacheLocked, match="written by replica group 'blue', not 'green'"):
            CacheStore(cache_url, shared=True, group="green")
        CacheStore(cache_url, shared=True, group="blue").close()  # the same group joins
    finally:
        first.close()
    CacheStore(cache_url, shared=True, group="green").close()


def test_a_retired_context_let_go_by_its_replica_is_purged_by_another(cache_url: str) -> None:
    """The replica that tombstoned a context removed from the kubeconfig gives it up;
    its tombstones must not stay forever: any replica's retention job purges them."""
    a, b = (
        CacheStore(cache_url, shared=True, batch_wait=0.0, history=NO_HISTORY),
        CacheStore(cache_url, shared=True, batch_wait=0.0, history=NO_HISTORY),
    )
    try:
        a.claim_context("gone")
        a.apply_events("gone", CMS, [("ADDED", configmap("x", str(uuid.uuid4()), "1"))], _status("gone"))
        a.drop_context("gone")
        a.release_context("gone")
        positions = b.owned_positions()
        assert positions == {"gone": 2}
        assert b.purge_tombstones(positions) == 1
        with psycopg.connect(cache_url) as conn:
            assert conn.execute("SELECT count(*) FROM objects").fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM retired_contexts").fetchone() == (0,)
    finally:
        a.close()
        b.close()


def test_the_history_log_is_stored_uncompressed_in_postgresql(cache_url: str) -> None:
    """A segment is read once and deleted within seconds: PostgreSQL must not spend its
    INSERT compressing it (pglz on 50-500 KB) while the writer waits."""
    CacheStore(cache_url).close()
    with psycopg.connect(cache_url) as conn:
        storage = conn.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = 'history_log'::regclass AND attname = 'body'"
        ).fetchone()
    assert storage == ("e",)  # EXTERNAL: out of line, not compressed


def test_a_context_handed_over_before_its_history_was_derived_is_derived_by_its_new_owner_once(
    cache_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history's log is the context's: versions its old owner logged and did not
    derive become the new owner's to derive, exactly once; the old owner derives
    nothing of a context it let go."""
    monkeypatch.setattr(writeloop, "IDLE_AFTER", 3600.0)  # no derivation unless asked
    old, new = (
        CacheStore(cache_url, shared=True, batch_wait=0.0),
        CacheStore(cache_url, shared=True, batch_wait=0.0),
    )
    try:
        uid = str(uuid.uuid4())
        old.claim_context("moved")
        old.apply_events(
            "moved",
            CMS,
            [("ADDED", configmap("x", uid, "1")), ("MODIFIED", configmap("x", uid, "2", k="v"))],
            _status("moved", "2"),
        )
        old.flush(history=False)
        old.release_context("moved")
        old.flush()  # derives nothing of "moved": not its context any more
        with psycopg.connect(cache_url) as conn:
            assert conn.execute(
                "SELECT count(*) FROM objects WHERE resource LIKE '~history/%'"
            ).fetchone() == (0,)
        new.claim_context("moved")
        assert new.history_backlog == 2
        new.flush()
        with psycopg.connect(cache_url) as conn:
            changes = conn.execute(
                "SELECT resource_version FROM objects WHERE resource = '~history/changes' ORDER BY seq"
            ).fetchall()
            assert changes == [("1",), ("2",)]
            assert conn.execute("SELECT count(*) FROM history_log").fetchone() == (0,)
        assert new.history_backlog == 0
    finally:
        old.close()
        new.close()


def test_a_replica_that_lost_a_context_writes_nothing_more_for_it(cache_url: str) -> None:
    """Fencing: once another replica claimed the context (its Lease expired and was
    taken), the old owner's writes for it are dropped, and its other contexts go on;
    the new owner continues the same change sequence."""
    old, new = (
        CacheStore(cache_url, shared=True, batch_wait=0.0, history=NO_HISTORY),
        CacheStore(cache_url, shared=True, batch_wait=0.0, history=NO_HISTORY),
    )
    try:
        old.claim_context("moved")
        old.claim_context("kept")
        old.apply_events(
            "moved", CMS, [("ADDED", configmap("before", str(uuid.uuid4()), "1"))], _status("moved")
        )
        old.flush()
        new.claim_context("moved")
        old.apply_events(
            "moved", CMS, [("ADDED", configmap("late", str(uuid.uuid4()), "2"))], _status("moved", "2")
        )
        old.apply_events(
            "kept", CMS, [("ADDED", configmap("kept", str(uuid.uuid4()), "2"))], _status("kept", "2")
        )
        old.flush()
        assert old.fenced == {"moved": new.identity}
        new.apply_events(
            "moved", CMS, [("ADDED", configmap("after", str(uuid.uuid4()), "3"))], _status("moved", "3")
        )
        new.flush()
        with psycopg.connect(cache_url) as conn:
            rows = conn.execute("SELECT context, name, seq FROM objects ORDER BY context, seq").fetchall()
            checkpoint = conn.execute(
                "SELECT resource_version FROM checkpoints WHERE context = 'moved'"
            ).fetchone()
        assert rows == [("kept", "kept", 1), ("moved", "before", 1), ("moved", "after", 2)]
        assert checkpoint == ("3",)  # the fenced writer's checkpoint ("2") never landed
        assert old.owned_positions() == {"kept": 1} and new.owned_positions() == {"moved": 2}
    finally:
        old.close()
        new.close()


class _IncrementalReader:
    """What an incremental sync does, in a loop: read the changes after its cursor in
    one snapshot, then move the cursor to the snapshot's positions."""

    def __init__(self, url: str, contexts: list[str]) -> None:
        self.url = url
        self.contexts = contexts
        self.cursor = dict.fromkeys(contexts, 0)
        self.live: dict[tuple[str, str], str] = {}  # (context, uid) -> resourceVersion
        self.received: list[tuple[str, str, str]] = []  # every (context, uid, rv) sent
        self.deletions: list[tuple[str, str]] = []

    def read(self) -> None:
        with SnapshotReader.open(self.url) as snap:
            for ctx in self.contexts:
                since = self.cursor[ctx]
                for uid in snap.deleted_uids(TABLE, ctx, since_seq=since):
                    self.deletions.append((ctx, uid))
                    self.live.pop((ctx, uid), None)
                for batch in snap.batches(TABLE, ctx, since_seq=since):
                    for row in batch.to_pylist():
                        uid = str(uuid.UUID(bytes=row["uid"]))  # the uuid extension type, as bytes
                        self.received.append((ctx, uid, row["resource_version"]))
                        self.live[(ctx, uid)] = row["resource_version"]
            self.cursor = {ctx: snap.position.get(ctx, 0) for ctx in self.contexts}


def _cache_truth(url: str) -> dict[tuple[str, str], str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT context, uid, resource_version FROM objects WHERE NOT deleted").fetchall()
    return {(c, u): rv for c, u, rv in rows}


def test_incremental_reads_miss_nothing_and_repeat_nothing_with_concurrent_writers_and_hand_overs(
    cache_url: str,
) -> None:
    """Three replicas write six contexts at once (creates, updates, deletes), contexts
    move between replicas mid-way (the new owner claims, the old one is fenced), and a
    reader polls incremental changes all along. Its copy must end equal to the cache,
    and no object version may reach it twice."""
    contexts = [f"ctx-{i}" for i in range(6)]
    replicas = [CacheStore(cache_url, shared=True, batch_wait=0.005, history=NO_HISTORY) for _ in range(3)]
    owner = {ctx: replicas[i % 3] for i, ctx in enumerate(contexts)}
    for ctx, store in owner.items():
        store.claim_context(ctx)
    stop = threading.Event()
    lock = threading.Lock()  # the writer threads and the hand-overs agree on owners
    rv = iter(range(1, 10**9))

    def write(ctx: str) -> None:
        rng = random.Random(ctx)
        objects: dict[str, str] = {}
        while not stop.is_set():
            with lock:
                store = owner[ctx]
                op = rng.random()
                if objects and op < 0.2:
                    uid = rng.choice(sorted(objects))
                    event = ("DELETED", configmap(objects.pop(uid), uid, str(next(rv))))
                elif objects and op < 0.5:
                    uid = rng.choice(sorted(objects))
                    event = ("MODIFIED", configmap(objects[uid], uid, str(next(rv)), v=str(rng.random())))
                else:
                    uid = str(uuid.uuid4())
                    objects[uid] = f"cm-{len(objects)}-{uid[:6]}"
                    event = ("ADDED", configmap(objects[uid], uid, str(next(rv))))
                store.apply_events(ctx, CMS, [event], _status(ctx, event[1]["metadata"]["resourceVersion"]))
            time.sleep(rng.random() * 0.004)

    reader = _IncrementalReader(cache_url, contexts)
    threads = [threading.Thread(target=write, args=(ctx,)) for ctx in contexts]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 8
        moves = 0
        while time.monotonic() < deadline:
            reader.read()
            if time.monotonic() > deadline - 6 + moves and moves < 4:
                # A hand-over: the old owner's queued writes are committed, then the new
                # one claims (as after a Lease release; a killed owner is fenced instead).
                ctx = contexts[moves]
                with lock:
                    old = owner[ctx]
                    old.flush()
                    owner[ctx] = replicas[(replicas.index(old) + 1) % 3]
                    owner[ctx].claim_context(ctx)
                moves += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
        for r in replicas:
            r.flush()
    reader.read()
    try:
        truth = _cache_truth(cache_url)
        assert len(truth) > 100 and len(reader.deletions) > 20
        assert reader.live == truth
        assert len(reader.received) == len(set(reader.received)), "an object version was sent twice"
        assert all(not r.fenced for r in replicas)
    finally:
        for r in replicas:
            r.close()


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of this test alone (it is stopped and started)."""
    with postgres_server() as pg:
        yield pg


def test_writes_wait_out_a_cache_database_outage_and_nothing_is_lost(own_postgres: Postgres) -> None:
    """The database goes down under the writer: writes are retried with backoff (the
    queue holds them, and then holds the informers), and land once it is back."""
    url = new_dsn(own_postgres)
    store = CacheStore(url, batch_wait=0.0)
    try:
        store.apply_events(
            "ctx", CMS, [("ADDED", configmap("before", str(uuid.uuid4()), "1"))], _status("ctx")
        )
        store.flush()
        with psycopg.connect(url, autocommit=True) as conn:
            # The test server runs with synchronous_commit=off: without this, an
            # immediate stop may lose the last commits, which a real server would keep.
            conn.execute("CHECKPOINT")
        own_postgres.stop()
        written = threading.Thread(
            target=lambda: [
                store.apply_events(
                    "ctx",
                    CMS,
                    [("ADDED", configmap(f"during-{i}", str(uuid.uuid4()), str(i + 2)))],
                    _status("ctx", str(i + 2)),
                )
                for i in range(20)
            ]
        )
        written.start()
        time.sleep(3)
        assert store.unreachable_since is not None
        own_postgres.start()
        written.join(60)
        store.flush()
        assert store.unreachable_since is None and store.dropped_batches == 0
        with psycopg.connect(url) as conn:
            names = {n for (n,) in conn.execute("SELECT name FROM objects WHERE NOT deleted")}
            (rv,) = conn.execute("SELECT resource_version FROM checkpoints WHERE context = 'ctx'").fetchone()
        assert names == {"before", *(f"during-{i}" for i in range(20))}
        assert rv == "21"
        # The restart ended the session that held the writer lock: it was taken again.
        with pytest.raises(CacheLocked):
            CacheStore(url)
    finally:
        store.close()


def test_a_daemon_rides_out_a_cache_database_outage_without_losing_events(
    own_postgres: Postgres, planes: ControlPlanes, start_daemon: Any, tmp_path: Path
) -> None:
    """The shared cache goes away under a running daemon while objects change: /healthz
    says so, the writes wait, and once the database is back the cache equals the API
    server again, the changes made meanwhile included, without a relist."""
    url = new_dsn(own_postgres)
    admin = planes.servers["dev"].admin()
    ns = namespace(admin, unique("outage"))
    create_configmap(admin, ns, "before", v="1")
    d = start_daemon(planes.kubeconfig, tmp_path / "unused.db", "dev", extra_args=["--cache-url", url])
    eventually(lambda: "before" in _names(url, ns), what="configmap cached")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # see test_writes_wait_out_a_cache_database_outage...
    own_postgres.stop()
    create_configmap(admin, ns, "during", v="1")
    admin.delete(f"/api/v1/namespaces/{ns}/configmaps/before")
    eventually(lambda: "cache_unreachable_for" in d.http("/healthz")[1], timeout=30, what="outage reported")
    time.sleep(3)
    own_postgres.start()
    create_configmap(admin, ns, "after", v="1")
    eventually(lambda: _names(url, ns) == {"during", "after"}, timeout=60, what="cache caught up")
    eventually(lambda: cached(url, "dev", CMS) == truth(admin, CMS), timeout=30, what="cache == API server")
    assert "cache_unreachable_for" not in d.http("/healthz")[1]
    log = d.log.read_text()
    assert "unreachable" in log and "retrying" in log and "dropped" not in log
    assert d.metric("k8s_watcher_relists") == 0


def _names(url: str, ns: str) -> set[str]:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            rows = conn.execute(
                "SELECT name FROM objects WHERE resource = 'configmaps' AND namespace = %s AND NOT deleted",
                (ns,),
            ).fetchall()
    except psycopg.OperationalError:
        return set()
    return {n for (n,) in rows}


def test_a_registry_local_sync_relists_into_a_postgresql_cache_then_reads_it(
    planes: ControlPlanes, cache_url: str, dsn: str, tmp_path: Path
) -> None:
    """No daemon: the plugin run by the CLI fills the PostgreSQL cache named by
    ``cache_url`` (a cold cache means a relist) and writes through the real destination;
    the next sync reads the cache without asking the API server again."""
    spec = {
        "kubeconfig": str(planes.kubeconfig),
        "contexts": ["dev"],
        "cache_url": cache_url,
        "tables": TABLES,
    }
    first = sync(tmp_path, dsn, spec)
    assert first.returncode == 0, first.output[-3000:]
    assert_pg_equals_api(dsn, planes, ["dev"])
    assert cached(cache_url, "dev", CMS) == truth(planes.servers["dev"].admin(), CMS)
    with psycopg.connect(cache_url) as conn:
        listed = conn.execute("SELECT sum(lists) FROM checkpoints WHERE context = 'dev'").fetchone()
    second = sync(tmp_path, dsn, spec)
    assert second.returncode == 0, second.output[-3000:]
    with psycopg.connect(cache_url) as conn:
        assert conn.execute("SELECT sum(lists) FROM checkpoints WHERE context = 'dev'").fetchone() == listed
    assert_pg_equals_api(dsn, planes, ["dev"])
