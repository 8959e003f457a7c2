"""Fixtures (a pytest plugin) for the data set of tests/hardening.py.

A pytest plugin (``pytest_plugins = ["tests.hardening_fixtures"]``) so that the three test
modules share one session-wide set-up: two contexts of the real test bed, objects that
violate each check and objects that satisfy them created through the API, and one real
``cloudquery sync`` of both contexts into a PostgreSQL database of its own.

The control plane is one of its own (the test bed's API servers run with
``--allow-privileged=true``, as kubeadm sets it), so that the data set's findings are
exactly its objects.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.cluster import ControlPlanes, control_planes
from testbed.postgres import Postgres
from tests.conftest import new_dsn, sync
from tests.hardening import EAST, WEST, Hardened, populate


@pytest.fixture(scope="session")
def hardened_planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlanes]:
    with control_planes([EAST, WEST], workdir=tmp_path_factory.mktemp("hardened-testbed")) as planes:
        yield planes


@pytest.fixture(scope="session")
def hardened(
    hardened_planes: ControlPlanes, pg_server: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Hardened:
    """The data set in ``east`` (``west`` holds only what a new cluster has), synced into
    a database of its own by one real ``cloudquery sync``."""
    admin = hardened_planes.servers[EAST].admin()
    namespaces, cases = populate(admin)
    assert hardened_planes.kubeconfig is not None
    dsn = new_dsn(pg_server)
    tmp = tmp_path_factory.mktemp("hardened-sync")
    spec = {
        "kubeconfig": str(hardened_planes.kubeconfig),
        "contexts": [EAST, WEST],
        "cache_path": str(tmp / "cache.db"),
    }
    result = sync(tmp, dsn, spec)
    assert result.returncode == 0, result.output[-3000:]
    return Hardened(dsn, hardened_planes.kubeconfig, admin, namespaces, cases)
