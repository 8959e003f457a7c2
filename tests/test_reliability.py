"""Bad input and security audit (issue 6), against the real parts.

Each bad-input case asserts the exact error the user sees and that the healthy
context's data still arrives (nothing else lost).
"""

from __future__ import annotations

import base64
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from testbed.cluster import ControlPlanes, Pki
from testbed.cq import run_cloudquery
from tests.conftest import (
    assert_pg_equals_api,
    cache_bytes,
    configmap,
    eventually,
    kubeconfig_with,
    namespace,
    pg_tables,
    sync,
    unique,
)

REPO = Path(__file__).resolve().parent.parent


def _cluster_error(dsn: str, context: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT last_error FROM k8s_clusters WHERE context_name = %s", (context,)
        ).fetchone()
    assert row is not None, f"no k8s_clusters row for {context}"
    return str(row[0])


# --------------------------------------------------------------------------- bad input


def test_malformed_yaml_config_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "cq"
    bad.mkdir()
    (bad / "broken.yml").write_text("kind: source\nspec:\n  name: k8s\n  spec: {contexts: [dev\n")
    result = run_cloudquery(["sync", str(bad / "broken.yml")], workdir=bad)
    assert result.returncode != 0
    assert "broken.yml" in result.output


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("directory", "cannot be read: Is a directory"),
        ("malformed", "is not valid YAML"),
        ("not-a-mapping", "is malformed: expected a mapping"),
    ],
)
def test_unusable_kubeconfig_is_named(
    planes: ControlPlanes, dsn: str, tmp_path: Path, kind: str, expected: str
) -> None:
    path = tmp_path / "kubeconfig"
    if kind == "directory":
        path.mkdir()
    elif kind == "malformed":
        path.write_text("apiVersion: v1\nclusters: [\n")
    else:
        path.write_text("- just\n- a list\n")
    result = sync(tmp_path, dsn, {"kubeconfig": str(path), "cache_path": str(tmp_path / "c.db")})
    assert result.returncode != 0
    assert f"kubeconfig {path} {expected}" in result.output, result.output[-2000:]
    assert not any(t.startswith("k8s_") for t in pg_tables(dsn))


def test_wrong_ca_wrong_token_and_hanging_server_spoil_only_their_context(
    planes: ControlPlanes, dsn: str, tmp_path: Path
) -> None:
    server = planes.servers["prod"]
    other_ca = Pki.create(tmp_path / "other-pki").ca_file
    # A server that accepts connections and never answers (hangs mid-handshake/response).
    hang = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(hang.accept()[0]) for _ in range(1000)], daemon=True).start()
    kubeconfig = kubeconfig_with(
        planes,
        tmp_path / "kubeconfig",
        {
            "bad-ca": (
                {"server": server.url, "certificate-authority": str(other_ca)},
                {"token": server.admin_token},
            ),
            "bad-token": (
                {"server": server.url, "certificate-authority": str(server.ca_file)},
                {"token": "not-a-valid-token"},
            ),
            "hangs": (
                {"server": f"https://127.0.0.1:{hang.getsockname()[1]}", "insecure-skip-tls-verify": True},
                {"token": "x"},
            ),
        },
    )
    spec = {
        "kubeconfig": str(kubeconfig),
        "contexts": ["prod", "bad-ca", "bad-token", "hangs"],
        "cache_path": str(tmp_path / "c.db"),
    }
    result = sync(tmp_path, dsn, spec)
    hang.close()
    assert result.returncode == 0, result.output[-3000:]
    assert_pg_equals_api(dsn, planes, ["prod"])
    assert "TLS error" in _cluster_error(dsn, "bad-ca") and "CERTIFICATE_VERIFY_FAILED" in _cluster_error(
        dsn, "bad-ca"
    )
    assert "HTTP 401" in result.output and "context bad-token could not be synced" in result.output
    assert "context hangs could not be synced" in result.output
    assert "timed out" in result.output.lower()


def test_forbidden_resource_is_reported_and_the_rest_synced(
    planes: ControlPlanes, dsn: str, tmp_path: Path
) -> None:
    spec = {
        "kubeconfig": str(planes.kubeconfig),
        "contexts": ["prod-viewer"],
        "cache_path": str(tmp_path / "c.db"),
    }
    result = sync(
        tmp_path, dsn, spec, tables=["k8s_clusters", "k8s_namespaces", "k8s_secrets", "k8s_configmaps"]
    )
    assert result.returncode == 0, result.output[-3000:]
    assert re.search(r"relist failed for secrets: HTTP 403", result.output), result.output[-3000:]
    with psycopg.connect(dsn) as conn:
        secrets = conn.execute(
            "SELECT count(*) FROM k8s_secrets WHERE context_name = 'prod-viewer'"
        ).fetchone()
        namespaces = conn.execute(
            "SELECT count(*) FROM k8s_namespaces WHERE context_name = 'prod-viewer'"
        ).fetchone()
        states = conn.execute(
            "SELECT informer_states FROM k8s_clusters WHERE context_name = 'prod-viewer'"
        ).fetchone()
    assert secrets == (0,)
    assert namespaces is not None and namespaces[0] >= 4
    assert states is not None and states[0]["secrets"] == "forbidden"


def test_corrupt_cache_is_moved_aside_and_rebuilt(planes: ControlPlanes, dsn: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache.db"
    cache.write_bytes(b"this is not a database" * 1000)
    result = sync(
        tmp_path, dsn, {"kubeconfig": str(planes.kubeconfig), "contexts": ["prod"], "cache_path": str(cache)}
    )
    assert result.returncode == 0, result.output[-3000:]
    assert "cannot be used (not a usable SQLite database" in result.output
    assert "moved aside to" in result.output
    assert list(tmp_path.glob("cache.db.unusable-*"))
    assert_pg_equals_api(dsn, planes, ["prod"])


def test_cache_on_read_only_path_fails_clearly(planes: ControlPlanes, dsn: str, tmp_path: Path) -> None:
    result = sync(
        tmp_path,
        dsn,
        {
            "kubeconfig": str(planes.kubeconfig),
            "contexts": ["prod"],
            "cache_path": "/proc/k8s-watcher/cache.db",
        },
    )
    assert result.returncode != 0
    assert "cache file /proc/k8s-watcher/cache.db cannot be created" in result.output, result.output[-2000:]


def test_large_configmap_and_non_ascii_round_trip(planes: ControlPlanes, dsn: str, tmp_path: Path) -> None:
    admin = planes.servers["prod"].admin()
    ns = namespace(admin, unique("big"))
    # The API server refuses ConfigMaps over 1 MiB of data (422 FieldValueTooLong), so a
    # "1.5 MB ConfigMap" cannot exist: the largest valid one is what we test.
    big = "x" * (1024 * 1024 - 16)
    configmap(admin, ns, "big", payload=big)
    admin.create(
        f"/api/v1/namespaces/{ns}/configmaps",
        {
            "metadata": {"name": "intl", "annotations": {"team": "チーム・データ", "owner": "Zoë Ñúñez 🚀"}},
            "data": {"greeting": "grüße, héllo wörld ✓"},
        },
    )
    result = sync(
        tmp_path,
        dsn,
        {"kubeconfig": str(planes.kubeconfig), "contexts": ["prod"], "cache_path": str(tmp_path / "c.db")},
    )
    assert result.returncode == 0, result.output[-3000:]
    with psycopg.connect(dsn) as conn:
        size = conn.execute(
            "SELECT data_keys FROM k8s_configmaps WHERE namespace = %s AND name = 'big'", (ns,)
        ).fetchone()
        intl = conn.execute(
            "SELECT annotations, data_keys FROM k8s_configmaps WHERE namespace = %s AND name = 'intl'", (ns,)
        ).fetchone()
    assert size == (["payload"],)
    assert intl == ({"team": "チーム・データ", "owner": "Zoë Ñúñez 🚀"}, ["greeting"])
    assert_pg_equals_api(dsn, planes, ["prod"])


# --------------------------------------------------------------------------- security audit


def test_canaries_never_leak_to_cache_postgres_logs_or_metrics(
    planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    server = planes.servers["dev"]
    admin = server.admin()
    secret_canary = "SECRET-CANARY-" + unique("v")
    ns = namespace(admin, unique("audit"))
    admin.create(
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "metadata": {
                "name": "db",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": f'{{"stringData":{{"pw":"{secret_canary}"}}}}'
                },
            },
            "stringData": {"pw": secret_canary},
        },
    )
    # The daemon uses a kubeconfig whose bearer token is the canary (admin rights).
    token_canary = server.admin_token
    cache = tmp_path / "audit" / "cache.db"
    daemon = start_daemon(planes.kubeconfig, cache, "dev")
    eventually(
        lambda: cache.exists() and b"db" in cache.read_bytes() + Path(str(cache) + "-wal").read_bytes(),
        what="secret cached",
    )
    result = sync(tmp_path, dsn, {}, registry="grpc", path=f"127.0.0.1:{daemon.grpc_port}")
    assert result.returncode == 0, result.output[-3000:]
    _, metrics = daemon.http("/metrics")
    with psycopg.connect(dsn) as conn:
        dump = "\n".join(
            str(r) for t in pg_tables(dsn) for r in conn.execute(f"SELECT * FROM {t}").fetchall()
        )
    assert "db" in dump  # the secret's metadata arrived
    daemon.terminate()
    haystacks = {
        "cache": cache_bytes(cache),
        "postgres": dump.encode(),
        "daemon log": daemon.log.read_bytes(),
        "cli output": result.output.encode(),
        "metrics": metrics.encode(),
    }
    for canary in (secret_canary, token_canary):
        for where, blob in haystacks.items():
            assert canary.encode() not in blob, f"{canary[:12]}... leaked into {where}"
            assert base64.b64encode(canary.encode()) not in blob, (
                f"{canary[:12]}... (base64) leaked into {where}"
            )


def test_listeners_bind_loopback_by_default(planes: ControlPlanes, tmp_path: Path) -> None:
    import subprocess
    import sys

    # No --grpc-address / --http-address: the defaults must be loopback only.
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "k8s-watcher"), "serve", "--kubeconfig", str(planes.kubeconfig), "--contexts", "prod",
         "--cache", str(tmp_path / "c.db")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        eventually(lambda: {7777, 9464} <= set(_listening_addresses(proc.pid)), what="listeners up")
        bound = _listening_addresses(proc.pid)
        loopback = {"127.0.0.1", "::ffff:127.0.0.1"}  # gRPC listens on a dual-stack socket
        assert bound[7777] in loopback and bound[9464] in loopback, bound
    finally:
        proc.terminate()
        proc.wait(30)


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def _listening_addresses(pid: int) -> dict[int, str]:
    inodes = _socket_inodes(pid)
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            local, state, inode = parts[1], parts[3], parts[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            port = int(port_hex, 16)
            raw = bytes.fromhex(addr_hex)
            if len(raw) == 4:
                addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four little-endian 32-bit words
                addr = socket.inet_ntop(
                    socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                )
            found[port] = addr
    return found


def test_container_runs_as_non_root_and_rbac_is_read_only() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    deployment = yaml.safe_load((REPO / "deploy/kubernetes/deployment.yaml").read_text())
    security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    role = yaml.safe_load((REPO / "deploy/kubernetes/clusterrole.yaml").read_text())
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}


def test_a_cold_cache_written_by_another_process_fails_the_sync_naming_the_writer(
    planes: ControlPlanes, dsn: str, tmp_path: Path
) -> None:
    """One writer per cache: a relist that would be a second writer is refused at once,
    with the holder's pid, and nothing is written."""
    from watcher.state import CacheStore

    cache = tmp_path / "cache.db"
    holder = CacheStore(cache)  # this test process is the cache's writer throughout
    try:
        result = sync(
            tmp_path,
            dsn,
            {"kubeconfig": str(planes.kubeconfig), "contexts": ["prod"], "cache_path": str(cache)},
        )
    finally:
        holder.close()
    assert result.returncode != 0
    assert f"cache file {cache} is already written by another process (pid {os.getpid()})" in result.output, (
        result.output[-2000:]
    )
    assert not any(t.startswith("k8s_") for t in pg_tables(dsn))


@pytest.mark.slow
def test_ten_thousand_namespaces_in_one_context(dsn: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from testbed.cluster import control_planes

    with control_planes(["big"], workdir=tmp_path / "kube") as big:
        admin = big.servers["big"].admin()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda i: admin.create("/api/v1/namespaces", {"metadata": {"name": f"team-{i:05d}"}}),
                    range(10_000),
                )
            )
        spec = {"kubeconfig": str(big.kubeconfig), "contexts": ["big"], "cache_path": str(tmp_path / "c.db")}
        result = sync(tmp_path, dsn, spec, tables=["k8s_clusters", "k8s_namespaces"])
        assert result.returncode == 0, result.output[-3000:]
        expected = {i["metadata"]["uid"] for i in admin.list("/api/v1/namespaces")["items"]}
    with psycopg.connect(dsn) as conn:
        rows = {
            r[0]
            for r in conn.execute(
                "SELECT uid::text FROM k8s_namespaces WHERE context_name = 'big'"
            ).fetchall()
        }
    assert len(expected) >= 10_004 and rows == expected
