"""No port races in the test bed: a daemon binds port 0 itself and reports the ports it
got; etcd, kube-apiserver and PostgreSQL, which cannot, move to another port when theirs
was taken before they could bind it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from testbed import cluster, postgres
from testbed.cluster import ControlPlanes, Etcd, binary_dir, free_port
from testbed.daemon import DaemonProcess


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the whole test."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield int(sock.getsockname()[1])


def handing_out_first(monkeypatch: pytest.MonkeyPatch, module: object, port: int) -> None:
    """``module.free_port`` returns ``port`` first (as if another process took it right
    after it was picked), then free ports."""
    ports = iter([port])
    monkeypatch.setattr(module, "free_port", lambda: next(ports, None) or free_port())


def test_free_port_never_hands_out_a_port_twice() -> None:
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_daemons_built_before_any_starts_bind_their_own_ports(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncontexts: []\n")
    daemons = [
        DaemonProcess(kubeconfig, tmp_path / f"cache{i}.db", tmp_path / f"daemon{i}.log") for i in range(3)
    ]
    try:
        for d in daemons:
            d.start(synced=False)
        ports = [p for d in daemons for p in (d.grpc_port, d.http_port)]
        assert len(set(ports)) == 6 and 0 not in ports
        assert all(d.http("/healthz")[0] == 200 for d in daemons)
        first = daemons[0]
        grpc_port = first.grpc_port
        first.kill()
        first.start(synced=False)  # a restart keeps its ports
        assert first.grpc_port == grpc_port and first.http("/healthz")[0] == 200
        assert f"plugin on 127.0.0.1:{grpc_port}" in first.log.read_text()
    finally:
        for d in daemons:
            d.stop()


def test_postgres_moves_to_another_port_when_its_port_is_taken(
    monkeypatch: pytest.MonkeyPatch, taken_port: int
) -> None:
    handing_out_first(monkeypatch, postgres, taken_port)
    with postgres.postgres_server() as server, psycopg.connect(server.dsn) as conn:
        assert server.port != taken_port
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_etcd_moves_to_other_ports_when_its_port_is_taken(
    monkeypatch: pytest.MonkeyPatch, taken_port: int, tmp_path: Path
) -> None:
    handing_out_first(monkeypatch, cluster, taken_port)
    etcd = Etcd(tmp_path, binary_dir())
    try:
        etcd.start()
        assert etcd.client_port != taken_port and etcd.revision() >= 1
        assert "address already in use" in (tmp_path / "etcd.log").read_text()
    finally:
        etcd.process.stop()


def test_kube_apiserver_moves_to_another_port_when_its_port_is_taken(
    monkeypatch: pytest.MonkeyPatch, taken_port: int, tmp_path: Path
) -> None:
    planes = ControlPlanes(workdir=tmp_path, names=["moved"])
    real = cluster.free_port
    calls = iter(range(1000))
    # etcd takes the first two ports, the API server the third: that one is taken.
    monkeypatch.setattr(cluster, "free_port", lambda: taken_port if next(calls) == 2 else real())
    try:
        planes.start()
        server = planes.servers["moved"]
        assert server.port != taken_port
        assert server.admin().request("GET", "/readyz", timeout=5) is not None
    finally:
        planes.stop()
