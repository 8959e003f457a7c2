"""Fixtures (a pytest plugin) for the data set of tests/hardening.py.

A pytest plugin (``pytest_plugins = ["tests.hardening_fixtures"]``) so that the three test
modules share one session-wide set-up: two contexts of the real test bed, objects that
violate each check and objects that satisfy them created through the API, and one real
``cloudquery sync`` of both contexts into a PostgreSQL database of its own.

The control plane is the test bed's own code started with ``--allow-privileged=true``
(what kubeadm sets): without it the API server refuses privileged and HostProcess
containers outright, so the checks for them could never meet one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from testbed.cluster import ApiServer, ControlPlanes
from testbed.postgres import Postgres
from tests.conftest import sync
from tests.hardening import EAST, WEST, Hardened, new_database, populate


class _PrivilegedPlanes(ControlPlanes):
    def _make_server(self, *args: Any, **kwargs: Any) -> ApiServer:
        server = super()._make_server(*args, **kwargs)
        server.process.argv.append("--allow-privileged=true")
        return server


@pytest.fixture(scope="session")
def hardened_planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlanes]:
    planes = _PrivilegedPlanes(workdir=tmp_path_factory.mktemp("hardened-testbed"), names=[EAST, WEST])
    try:
        yield planes.start()
    finally:
        planes.stop()


@pytest.fixture(scope="session")
def hardened(
    hardened_planes: ControlPlanes, pg_server: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Hardened:
    """The data set in ``east`` (``west`` holds only what a new cluster has), synced into
    a database of its own by one real ``cloudquery sync``."""
    admin = hardened_planes.servers[EAST].admin()
    namespaces, cases = populate(admin)
    assert hardened_planes.kubeconfig is not None
    dsn = new_database(pg_server)
    tmp = tmp_path_factory.mktemp("hardened-sync")
    spec = {
        "kubeconfig": str(hardened_planes.kubeconfig),
        "contexts": [EAST, WEST],
        "cache_path": str(tmp / "cache.db"),
    }
    result = sync(tmp, dsn, spec)
    assert result.returncode == 0, result.output[-3000:]
    return Hardened(dsn, hardened_planes.kubeconfig, admin, namespaces, cases)
