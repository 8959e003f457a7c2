"""Fixtures: the real control planes (session-wide), caches, and truth-vs-cache helpers.

Tests share one etcd and two API servers (``dev`` behind a cutting proxy, ``prod``
direct) and isolate themselves by namespace names of their own. Under pytest-xdist
(``scripts/test.sh`` runs ``-n 3 --dist loadfile``) each worker has its own control
planes and PostgreSQL, and a file's tests run in one worker (module fixtures start once).
"""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml

from testbed.cluster import ControlPlanes, KubeHttp, control_planes, free_port
from testbed.cq import CqResult, destination_config, run_cloudquery, source_config
from testbed.daemon import DaemonProcess
from testbed.postgres import Postgres, postgres_server
from watcher import state
from watcher.cache.history import segment_ops
from watcher.resources import BY_KEY, ResourceDescriptor

PODS, CMS, NSS, SECRETS = (BY_KEY[k] for k in ("pods", "configmaps", "namespaces", "secrets"))

_counter = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with slow tests first, the rest in their order: pytest-xdist's ``loadfile``
    hands files to its workers in collection order, so the long ones start at once and
    the short ones fill in around them, instead of a two-minute test starting last while
    the other workers idle (longest first, as far as the ``slow`` mark knows)."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def pytest_report_header() -> list[str]:
    """The versions of every real part the suite runs against, at the top of its output."""
    from testbed.cluster import binary_dir
    from testbed.cq import cloudquery_binary
    from testbed.live import versions as live_versions
    from testbed.postgres import pg_bin

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        except OSError as exc:
            return f"unavailable ({exc})"
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"

    bindir = binary_dir()
    return [
        "real parts: "
        + "; ".join(
            [
                version([str(bindir / "kube-apiserver"), "--version"]),
                "etcd " + version([str(bindir / "etcd"), "--version"]).split()[-1],
                *live_versions().values(),
                version([str(cloudquery_binary()), "--version"]),
                "destination " + version([str(bindir / "cq-postgresql"), "--version"]),
                "official source " + version([str(bindir / "cq-source-k8s"), "--version"]),
                version([str(pg_bin() / "postgres"), "--version"]),
            ]
        )
    ]


@pytest.fixture(scope="session")
def planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlanes]:
    with control_planes(["dev", "prod"], workdir=tmp_path_factory.mktemp("testbed"), with_proxy=True) as cp:
        yield cp


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


def eventually(
    predicate: Callable[[], Any], *, timeout: float = 30, interval: float = 0.1, what: str = ""
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


def truth(admin: KubeHttp, desc: ResourceDescriptor) -> dict[str, str]:
    """uid -> resourceVersion of every object, from a consistent LIST."""
    items = admin.list(desc.collection_path())["items"]
    return {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in items}


def cached(
    cache: Path, context: str, desc: ResourceDescriptor, namespace: str | None = None
) -> dict[str, str]:
    """uid -> resourceVersion of every live object of the resource in the cache file."""
    with state.reading(cache) as conn:
        return state.live_versions(conn, context, desc.key, namespace)


def cache_matches(cache: Path, context: str, admin: KubeHttp, desc: ResourceDescriptor) -> bool:
    return cached(cache, context, desc) == truth(admin, desc)


def kubeconfig_with(
    planes: ControlPlanes, path: Path, extra: dict[str, tuple[dict[str, Any], dict[str, Any]]]
) -> Path:
    """The test bed's kubeconfig plus one context per ``name: (cluster, user)``."""
    config = yaml.safe_load(planes.kubeconfig.read_text())
    for name, (cluster, user) in extra.items():
        config["clusters"].append({"name": name, "cluster": cluster})
        config["users"].append({"name": name, "user": user})
        config["contexts"].append({"name": name, "context": {"cluster": name, "user": name}})
    path.write_text(yaml.safe_dump(config))
    return path


def unreachable_cluster() -> dict[str, Any]:
    """A cluster entry for a loopback port nothing listens on."""
    return {"server": f"https://127.0.0.1:{free_port()}", "insecure-skip-tls-verify": True}


def namespace(admin: KubeHttp, name: str) -> str:
    admin.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": {"test": "yes"}}})
    return name


def configmap(admin: KubeHttp, ns: str, name: str, **data: str) -> dict[str, Any]:
    return admin.create(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": name}, "data": data})


# --------------------------------------------------------------------------- PostgreSQL and the CLI


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Postgres]:
    with postgres_server() as pg:
        yield pg


def new_dsn(pg: Postgres) -> str:
    """The connection string of a new, empty database."""
    name = "t_" + uuid.uuid4().hex[:10]
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg.dsn.replace("/postgres?", f"/{name}?")


@pytest.fixture
def dsn(pg_server: Postgres) -> str:
    """A fresh database per test."""
    return new_dsn(pg_server)


def cache_bytes(cache: Path) -> bytes:
    """Every byte of a SQLite cache's files, and its history log's segments as JSON (they
    are stored compressed, where a search of the file's bytes would not see a leak)."""
    raw = b"".join(p.read_bytes() for p in cache.parent.glob(cache.name + "*"))
    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=30)
    try:
        segments = [orjson.dumps(segment_ops(b)) for (b,) in con.execute("SELECT body FROM history_log")]
    finally:
        con.close()
    return raw + b"".join(segments)


def pg_uids(dsn: str, table: str, context: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f"SELECT uid::text FROM {table} WHERE context_name = %s", (context,)).fetchall()
    return {r[0] for r in rows}


def pg_tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def assert_pg_equals_api(dsn: str, planes: ControlPlanes, contexts: list[str]) -> None:
    for ctx in contexts:
        admin = planes.servers[ctx].admin()
        for desc in (NSS, PODS, CMS, SECRETS):
            assert pg_uids(dsn, desc.table, ctx) == set(truth(admin, desc)), f"{ctx} {desc.table}"


def sync(tmp: Path, dsn: str, spec: dict[str, Any], **source: Any) -> CqResult:
    """``cloudquery sync`` of this plugin into ``dsn`` through the real PostgreSQL destination."""
    destination = {k: source.pop(k) for k in ("write_mode", "migrate_mode") if k in source}
    configs = [source_config(spec, **source), destination_config(dsn, **destination)]
    return run_cloudquery(["sync"], workdir=tmp / "cq", configs=configs)


# --------------------------------------------------------------------------- daemon


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Any]:
    """Start ``k8s-watcher serve`` (testbed.daemon), synced; every one is killed at the end."""
    started: list[DaemonProcess] = []

    def start(
        kubeconfig: Path,
        cache: Path,
        contexts: str = "*",
        *,
        extra_args: Sequence[str] = (),
        timeout: float = 60,
    ) -> DaemonProcess:
        log = tmp_path / f"daemon-{len(started)}.log"
        daemon = DaemonProcess(kubeconfig, cache, log, contexts, extra_args=extra_args)
        started.append(daemon)
        return daemon.start(timeout=timeout)

    yield start
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()
