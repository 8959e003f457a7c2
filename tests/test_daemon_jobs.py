"""The daemon's scheduled jobs: tombstone retention (``--tombstone-retention``) and the
safety-net relist (``--relist-interval``).

Units for the option parsing and the retention job's arithmetic, then integration
tests against the real test bed: API servers + etcd, the real CloudQuery CLI into
PostgreSQL through the real CloudQuery PostgreSQL destination, and the daemon as a subprocess.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.cluster import ControlPlanes
from tests.conftest import (
    CMS,
    assert_pg_equals_api,
    cache_matches,
    cached,
    configmap,
    eventually,
    namespace,
    pg_uids,
    sync,
    unique,
)
from tests.test_sync import synced_resources
from watcher import cli, daemon, state
from watcher.cursor import CURSOR_KEY, parse_cursor
from watcher.daemon import MAX_PURGE_INTERVAL, Daemon, DaemonConfig, purge_interval

# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("retention", "interval"),
    [
        (86400, MAX_PURGE_INTERVAL),  # the default: capped at 10 minutes
        (2400, 600),  # exactly at the cap
        (600, 150),  # a quarter of the retention
        (8, 2),
        (2, 1),  # floor: never more often than every second
        (0.01, 1),
    ],
)
def test_purge_interval_is_a_quarter_of_the_retention_within_bounds(
    retention: float, interval: float
) -> None:
    """The retention job wakes often enough that a tombstone outlives the retention by at
    most half of it, and never more often than once a second or less often than 10 min."""
    assert purge_interval(retention) == interval


@dataclass
class _FakeStore:
    seq: int = 0
    purges: list[dict[str, int]] = field(default_factory=list)

    def owned_positions(self) -> dict[str, int]:
        return {"ctx": self.seq}

    def purge_tombstones(self, cutoffs: dict[str, int]) -> int:
        self.purges.append(cutoffs)
        return 0


def test_purge_job_purges_up_to_the_newest_seq_older_than_the_retention(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each run samples (time, each owned context's seq); a run purges up to the seqs of the newest sample
    that is older than the retention, and nothing while no sample is that old."""
    now = [1000.0]
    monkeypatch.setattr(daemon.time, "time", lambda: now[0])
    d = Daemon.__new__(Daemon)  # no informers, no cache file: just the job's state
    d.config = DaemonConfig(kubeconfig=Path("k"), contexts=[], cache_path=Path("c"), tombstone_retention=10)
    d.store = store = _FakeStore()  # type: ignore[assignment]
    d._seq_samples = deque()

    for t, seq in ((1000, 5), (1004, 9), (1008, 20), (1010, 21)):
        now[0], store.seq = t, seq
        d._purge_tombstones()
    assert store.purges == []  # the oldest sample is exactly 10 s old: not older
    now[0], store.seq = 1015, 30
    d._purge_tombstones()
    assert store.purges == [{"ctx": 9}]  # samples of t=1000 and t=1004 are > 10 s old
    now[0], store.seq = 1100, 31
    d._purge_tombstones()
    assert store.purges == [{"ctx": 9}, {"ctx": 30}]  # everything before this run; the current sample stays
    assert list(d._seq_samples) == [(1100, {"ctx": 31})]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--tombstone-retention", "0"],
            "argument --tombstone-retention: '0': must be a positive, finite duration",
        ),
        (["--tombstone-retention", "-5"], "argument --tombstone-retention: '-5' is not a duration"),
        (
            ["--tombstone-retention", "1w"],
            "argument --tombstone-retention: '1w' is not a duration (use e.g. 90s",
        ),
        (["--tombstone-retention", "inf"], "argument --tombstone-retention: 'inf' is not a duration"),
        (["--relist-interval", "-1"], "argument --relist-interval: '-1' is not a duration"),
        (["--relist-interval", "nan"], "argument --relist-interval: 'nan' is not a duration"),
    ],
)
def test_serve_rejects_bad_durations_with_a_clear_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad values stop ``serve`` before it touches a kubeconfig, with argparse's exit
    code 2 and a message that names the option and the rule."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--kubeconfig", "/nonexistent", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_passes_the_durations_to_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    """The options reach DaemonConfig (defaults: retention one day, relist off)."""
    configs: list[DaemonConfig] = []

    class Recorder:
        def __init__(self, config: DaemonConfig) -> None:
            configs.append(config)

        def run_forever(self) -> None:
            pass

    monkeypatch.setattr(daemon, "Daemon", Recorder)
    monkeypatch.setattr(cli, "setup_logging", lambda *_: None)  # leave pytest's log capture alone
    assert cli.main(["serve", "--kubeconfig", "/k", "--cache", "/c.db"]) == 0
    assert (
        cli.main(
            [
                "serve",
                "--kubeconfig",
                "/k",
                "--cache",
                "/c.db",
                "--tombstone-retention",
                "2.5",
                "--relist-interval",
                "30",
            ]
        )
        == 0
    )
    assert [(c.tombstone_retention, c.relist_interval) for c in configs] == [(86400, 0), (2.5, 30)]


# --------------------------------------------------------------------------- helpers

#: Leases are renewed every few seconds by the API servers: left out so that an
#: incremental sync's row count says what changed.
INCREMENTAL_TABLES = ["k8s_clusters", "k8s_namespaces", "k8s_pods", "k8s_configmaps", "k8s_secrets"]


def _cursor_seq(dsn: str, context: str = "prod") -> int:
    """The seq of one context in the incremental cursor the plugin left in the state backend."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT value FROM cq_state_k8s WHERE key = %s", (CURSOR_KEY,)).fetchone()
    assert row is not None, "no cursor in the state backend"
    stored = parse_cursor(str(row[0]))
    assert stored is not None and stored.sent is not None, row
    return stored.sent[context]


def _read(cache: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(query, params).fetchall()
    finally:
        con.close()


def _rows_of(cache: Path, uids: set[str]) -> dict[str, tuple[int, int]]:
    """uid -> (deleted, seq) of whatever object rows the cache still holds for ``uids``
    (not their history's lifetime rows, which share the uid)."""
    marks = ",".join("?" for _ in uids)
    query = f"SELECT uid, deleted, seq FROM objects WHERE uid IN ({marks}) AND resource NOT LIKE '~%'"
    rows = _read(cache, query, tuple(uids))
    return {uid: (int(deleted), int(seq)) for uid, deleted, seq in rows}


def _purged_seq(cache: Path, context: str = "prod") -> int:
    with state.reading(cache) as conn:
        return state.read_context_logs(conn)[context].purged_seq


def _informer_counters(status: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {
        i["resource"]: {k: int(i[k]) for k in ("lists", "relists", "errors")} for i in status["informers"]
    }


def _configmap_lists(planes: ControlPlanes, server: str, since: float) -> list[str]:
    """The k8s-watcher's full reads of configmaps on one API server since ``since``:
    a LIST, or a WATCH with ``sendInitialEvents=true`` (a streaming list)."""
    out = []
    for e in planes.servers[server].audit_events():
        if not e.get("userAgent", "").startswith("k8s-watcher/") or "/configmaps" not in e["requestURI"]:
            continue
        received = datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        if received >= since and (e["verb"] == "list" or "sendInitialEvents=true" in e["requestURI"]):
            out.append(f"{e['verb']} {e['requestURI']}")
    return out


def _corrupt(cache: Path, context: str, ns: str) -> dict[str, str]:
    """Make the cache miss three events behind the daemon's back: cm0's ADDED (its row
    goes), cm1's MODIFIED (its resourceVersion goes back to "1") and the DELETED of an
    object that never existed (a phantom copy of cm1). Returns uid -> resourceVersion
    of what the cache now holds for the namespace's configmaps."""
    con = sqlite3.connect(cache, timeout=30, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        where = "context = ? AND resource = 'configmaps' AND namespace = ? AND name = ? AND deleted = 0"
        con.execute(
            "INSERT INTO objects (context, resource, uid, table_name, namespace, name, resource_version, row, seq, deleted, list_gen) "
            f"SELECT context, resource, ?, table_name, namespace, 'phantom', resource_version, row, seq, 0, list_gen FROM objects WHERE {where}",
            (str(uuid.uuid4()), context, ns, "cm1"),
        )
        assert con.execute(f"DELETE FROM objects WHERE {where}", (context, ns, "cm0")).rowcount == 1
        assert (
            con.execute(
                f"UPDATE objects SET resource_version = '1' WHERE {where}", (context, ns, "cm1")
            ).rowcount
            == 1
        )
        con.execute("COMMIT")
    finally:
        con.close()
    return cached(cache, context, CMS, ns)


# --------------------------------------------------------------------------- integration


def test_cursor_older_than_purged_tombstones_gets_a_full_snapshot(
    planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    """With ``--tombstone-retention 2`` the daemon purges deletions within seconds and
    records the purge point; an incremental sync whose cursor is older must not send a
    delta (it would miss those deletions) but a full snapshot, and PostgreSQL must end
    equal to the API server: the deleted configmaps gone, the new ones there."""
    admin = planes.servers["prod"].admin()
    ns = namespace(admin, unique("retain"))
    for i in range(4):
        configmap(admin, ns, f"cm{i}", k=str(i))
    cache = tmp_path / "retain" / "cache.db"
    d = start_daemon(planes.kubeconfig, cache, "prod", extra_args=["--tombstone-retention", "2"])
    source = {
        "registry": "grpc",
        "path": f"127.0.0.1:{d.grpc_port}",
        "with_state_backend": True,
        "write_mode": "overwrite",
    }
    spec = {"incremental": True, "tables": INCREMENTAL_TABLES}

    first = sync(tmp_path, dsn, spec, **source)
    assert first.returncode == 0, first.output[-3000:]
    assert "incremental: no cursor yet, full snapshot" in d.log.read_text()
    assert_pg_equals_api(dsn, planes, ["prod"])
    cursor = _cursor_seq(dsn)

    gone = {admin.get(f"/api/v1/namespaces/{ns}/configmaps/cm{i}")["metadata"]["uid"] for i in (0, 1)}  # type: ignore[index]
    assert gone <= pg_uids(dsn, "k8s_configmaps", "prod")
    for i in (0, 1):
        admin.delete(f"/api/v1/namespaces/{ns}/configmaps/cm{i}")
    new = {configmap(admin, ns, name)["metadata"]["uid"] for name in ("after-a", "after-b")}
    # The deletions are first kept as tombstones newer than the cursor (a delta could
    # carry them)...
    tombstones = eventually(
        lambda: (rows := _rows_of(cache, gone)) and all(deleted for deleted, _ in rows.values()) and len(rows) == 2 and rows,
        timeout=10, what="tombstones of cm0 and cm1",
    )  # fmt: skip
    assert min(seq for _, seq in tombstones.values()) > cursor
    # ...then purged by the retention job, which records a purge point past the cursor.
    eventually(lambda: not _rows_of(cache, gone), timeout=15, what="tombstones purged")
    assert _purged_seq(cache) >= max(seq for _, seq in tombstones.values()) > cursor
    assert re.search(r"purged [1-9]\d* tombstones up to prod@", d.log.read_text())

    second = sync(tmp_path, dsn, spec, **source)
    assert second.returncode == 0, second.output[-3000:]
    in_pg = pg_uids(dsn, "k8s_configmaps", "prod")
    assert not gone & in_pg and new <= in_pg  # a delta would have left cm0 and cm1 there
    assert_pg_equals_api(dsn, planes, ["prod"])
    assert synced_resources(second) > 10  # every object again, not the 1 + 2 of a delta
    log = d.log.read_text()
    assert f"incremental: prod: cursor {cursor} is older than the retained change log" in log, log[-3000:]
    assert "(full snapshot) in" in log.rpartition("sync sent")[2], log[-3000:]
    assert _cursor_seq(dsn) > cursor


def test_relist_interval_relists_and_repairs_missed_events_and_is_off_by_default(
    planes: ControlPlanes, tmp_path: Path, start_daemon: Any
) -> None:
    """Two daemons over the same seconds: ``prod`` with ``--relist-interval 2``, ``dev``
    without. Both caches are made to miss three events behind the daemons' backs, and
    real changes happen meanwhile. The relisting daemon lists again and again (its
    informers' list counters and the API server's audit log say so) and its cache
    ends equal to the API; the other lists nothing and keeps its wrong rows while
    still following the real changes through its watches."""
    prod, dev = planes.servers["prod"].admin(), planes.servers["dev"].admin()
    ns = unique("relist")
    uids: dict[str, dict[str, str]] = {}
    for ctx, admin in (("prod", prod), ("dev", dev)):
        namespace(admin, ns)
        uids[ctx] = {f"cm{i}": configmap(admin, ns, f"cm{i}", k=str(i))["metadata"]["uid"] for i in range(4)}
    cache_on, cache_off = tmp_path / "on" / "cache.db", tmp_path / "off" / "cache.db"
    on = start_daemon(planes.kubeconfig, cache_on, "prod", extra_args=["--relist-interval", "2"])
    off = start_daemon(planes.kubeconfig, cache_off, "dev")
    eventually(
        lambda: cache_matches(cache_on, "prod", prod, CMS) and cache_matches(cache_off, "dev", dev, CMS),
        what="caches warm",
    )
    before_on, before_off = _informer_counters(on.status()), _informer_counters(off.status())
    began = time.time()

    corrupted_off = _corrupt(cache_off, "dev", ns)
    _corrupt(cache_on, "prod", ns)
    assert not cache_matches(cache_on, "prod", prod, CMS) and not cache_matches(cache_off, "dev", dev, CMS)
    # Real changes (not to the corrupted objects), delivered by the watches.
    for ctx, admin in (("prod", prod), ("dev", dev)):
        uids[ctx]["fresh"] = configmap(admin, ns, "fresh")["metadata"]["uid"]
        admin.patch(f"/api/v1/namespaces/{ns}/configmaps/cm2", {"data": {"k": "changed"}})
        admin.delete(f"/api/v1/namespaces/{ns}/configmaps/cm3")

    def relisted_twice() -> bool:
        now = _informer_counters(on.status())
        return all(now[r]["lists"] >= c["lists"] + 2 for r, c in before_on.items())

    eventually(relisted_twice, timeout=20, what="every informer of the relisting daemon listed twice more")
    eventually(
        lambda: cache_matches(cache_on, "prod", prod, CMS), timeout=10, what="relist repaired the cache"
    )
    assert _ns_cached(cache_on, "prod", ns) == _ns_truth(prod, ns)  # cm0 back, cm1 current, no phantom
    assert uids["prod"]["fresh"] in _ns_truth(prod, ns) and uids["prod"]["cm3"] not in _ns_truth(prod, ns)
    # The counters may include a list that began just before ``began``; relists go on
    # every 2 s, so the audit log soon shows two begun after it.
    eventually(
        lambda: len(_configmap_lists(planes, "prod", began)) >= 2,
        timeout=15,
        what="two full reads in the audit log",
    )
    assert "periodic safety-net relist" in on.log.read_text()
    after_on = _informer_counters(on.status())
    assert all(after_on[r]["relists"] == c["relists"] for r, c in before_on.items())  # no 410 involved

    # Without the option, in the same seconds: the watched changes arrived, but the
    # missed events stay missed and not one list was made.
    api_off = _ns_truth(dev, ns)
    expected_off = {uid: rv for uid, rv in corrupted_off.items() if uid != uids["dev"]["cm3"]}
    expected_off |= {uids["dev"][name]: api_off[uids["dev"][name]] for name in ("cm2", "fresh")}
    eventually(
        lambda: _ns_cached(cache_off, "dev", ns) == expected_off,
        timeout=10,
        what="watched changes, corruption kept",
    )
    assert _informer_counters(off.status()) == before_off
    assert _configmap_lists(planes, "dev", began) == []
    assert "periodic safety-net relist" not in off.log.read_text()


def _ns_cached(cache: Path, context: str, ns: str) -> dict[str, str]:
    """uid -> resourceVersion of the live configmaps of one namespace in the cache."""
    return cached(cache, context, CMS, ns)


def _ns_truth(admin: Any, ns: str) -> dict[str, str]:
    items = admin.list(f"/api/v1/namespaces/{ns}/configmaps")["items"]
    return {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in items}
