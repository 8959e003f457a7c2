"""Fixtures: the real control planes (session-wide), caches, and truth-vs-cache helpers.

Tests share one etcd and two API servers (``dev`` behind a cutting proxy, ``prod``
direct) and isolate themselves by namespace names of their own.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.cluster import ControlPlanes, KubeHttp, control_planes
from watcher.resources import ResourceDescriptor

_counter = itertools.count()


@pytest.fixture(scope="session")
def planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlanes]:
    with control_planes(["dev", "prod"], workdir=tmp_path_factory.mktemp("testbed"), with_proxy=True) as cp:
        yield cp


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}-{uuid.uuid4().hex[:6]}"


def eventually(predicate: Callable[[], Any], *, timeout: float = 30, interval: float = 0.1, what: str = "") -> Any:
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


def cached(cache: Path, context: str, desc: ResourceDescriptor) -> dict[str, str]:
    """uid -> resourceVersion of every live object of the resource in the cache file."""
    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT uid, resource_version FROM objects WHERE context = ? AND resource = ? AND deleted = 0",
            (context, desc.key),
        ).fetchall()
    finally:
        con.close()
    return dict(rows)


def cache_matches(cache: Path, context: str, admin: KubeHttp, desc: ResourceDescriptor) -> bool:
    return cached(cache, context, desc) == truth(admin, desc)


def namespace(admin: KubeHttp, name: str) -> str:
    admin.create("/api/v1/namespaces", {"metadata": {"name": name, "labels": {"test": "yes"}}})
    return name


def configmap(admin: KubeHttp, ns: str, name: str, **data: str) -> dict[str, Any]:
    return admin.create(f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": name}, "data": data})
