"""Credentials that expire and rotate, against a real API server of its own.

The ``auth`` control plane (behind a cutting proxy) trusts a client CA the tests
control and is restarted with new token files, so these tests never disturb the
session's ``dev``/``prod`` servers.
"""

from __future__ import annotations

import base64
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from testbed.certs import ClientCa
from testbed.cluster import ApiServer, ControlPlanes, control_planes
from testbed.daemon import DaemonProcess, watcher_status
from testbed.proxy import ConnectProxy
from tests.audit import accepted, list_requests, watcher_events
from tests.conftest import (
    CMS,
    cache_matches,
    cached,
    configmap,
    eventually,
    kubeconfig_with,
    namespace,
    sync,
    unique,
)
from watcher.kube import ApiError, KubeClient

V1 = "client.authentication.k8s.io/v1"

# A plugin that prints the next token of $DIR/tokens (one a line) on each run, valid
# for $LIFETIME seconds, and counts its runs in $DIR/runs.
EXPIRING_PLUGIN = r"""#!/bin/sh
echo run >> "$DIR/runs"
n=$(wc -l < "$DIR/runs")
tok=$(sed -n "$(( (n - 1) % 10 + 1 ))p" "$DIR/tokens")
exp=$(date -u -d "@$(( $(date +%s) + LIFETIME ))" +%Y-%m-%dT%H:%M:%SZ)
printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%s","expirationTimestamp":"%s"}}' "$tok" "$exp"
"""

# A plugin that prints the token in $DIR/current, with no expiry.
CURRENT_TOKEN_PLUGIN = r"""#!/bin/sh
echo run >> "$DIR/runs"
printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%s"}}' "$(cat "$DIR/current")"
"""


@pytest.fixture(scope="module")
def auth_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlanes]:
    workdir = tmp_path_factory.mktemp("auth-testbed")
    client_ca = workdir / "client-ca.pem"
    client_ca.write_bytes(ClientCa.create().pem)
    with control_planes(
        ["auth"], workdir=workdir, with_proxy=True, apiserver_args=(f"--client-ca-file={client_ca}",)
    ) as cp:
        yield cp


def plugin(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "plugin"
    path.write_text(body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def exec_user(command: Path | str, directory: Path, **more: Any) -> dict[str, Any]:
    return {
        "exec": {
            "apiVersion": V1,
            "command": str(command),
            "interactiveMode": "Never",
            "env": [{"name": "DIR", "value": str(directory)}],
            **more,
        }
    }


def cluster_of(server: ApiServer) -> dict[str, Any]:
    return {"server": server.client_url, "certificate-authority": str(server.ca_file)}


def runs(directory: Path) -> int:
    path = directory / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def informer_lists(daemon: DaemonProcess, context: str) -> dict[str, tuple[int, int]]:
    """resource -> (lists, relists) of each informer of the context."""
    return {
        i["resource"]: (i["lists"], i["relists"])
        for i in daemon.status()["informers"]
        if i["context"] == context
    }


def lists_only_after_410(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> bool:
    """Every list since ``before`` by the informers of ``before`` was a relist after a
    410 (a restarted API server's watch cache starts at the current RV), none was caused
    by the credentials."""
    return all(after[r][0] - before[r][0] == after[r][1] - before[r][1] for r in before)


def new_configmap_arrives(server: ApiServer, cache: Path, context: str, timeout: float) -> float:
    """Create a namespace and a configmap; seconds until both are in the cache."""
    admin = server.admin()
    started = time.monotonic()
    ns = namespace(admin, unique("cred"))
    configmap(admin, ns, "after")
    eventually(lambda: cached(cache, context, CMS, ns), timeout=timeout, what="new configmap cached")
    return time.monotonic() - started


def start(kubeconfig: Path, cache: Path, contexts: str, tmp_path: Path, *extra: str) -> DaemonProcess:
    return DaemonProcess(
        kubeconfig, cache, tmp_path / f"daemon-{unique('log')}.log", contexts, extra_args=extra
    )


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_exec_tokens_that_expire_are_fetched_again_and_watches_go_on_without_relisting(
    auth_plane: ControlPlanes, tmp_path: Path
) -> None:
    server = auth_plane.servers["auth"]
    assert server.proxy is not None
    tokens = {f"exp-{i}-{unique('t')}": f"exec-user-{i}" for i in range(10)}
    server.restart_with_tokens(tokens)
    pdir = tmp_path / "plugin"
    command = plugin(pdir, EXPIRING_PLUGIN.replace("LIFETIME", "20"))
    (pdir / "tokens").write_text("\n".join(tokens) + "\n")
    kubeconfig = kubeconfig_with(
        auth_plane, tmp_path / "kubeconfig", {"expiring": (cluster_of(server), exec_user(command, pdir))}
    )
    cache = tmp_path / "cache.db"
    daemon = start(kubeconfig, cache, "expiring", tmp_path).start()
    try:
        synced_at = time.time()
        lists_before = informer_lists(daemon, "expiring")
        assert runs(pdir) == 1  # every informer of the context shares one credential
        # Watches outlive tokens (a token is checked when a request starts): cut them
        # through the proxy so that the informers re-watch, with whatever token is current.
        deadline = time.monotonic() + 65
        while time.monotonic() < deadline:
            time.sleep(5)
            server.proxy.cut_all()
        seconds = new_configmap_arrives(server, cache, "expiring", timeout=30)
        assert eventually(lambda: cache_matches(cache, "expiring", server.admin(), CMS))
        # About one run per 15 s (20 s lifetime, fetched again 5 s before the end), not one per informer.
        assert 4 <= runs(pdir) <= 8, runs(pdir)
        events = watcher_events(server, synced_at)
        users = {e["user"]["username"] for e in accepted(events) if e["verb"] == "watch"}
        assert len(users) >= 4, users
        assert list_requests(events) == []
        after = informer_lists(daemon, "expiring")  # discovery may have added informers since
        assert {r: after[r] for r in lists_before} == lists_before
        assert seconds < 10
        daemon.terminate()
        leaked = daemon.log.read_bytes() + b"".join(p.read_bytes() for p in cache.parent.glob("cache.db*"))
        assert not [t for t in tokens if t.encode() in leaked]
    finally:
        daemon.stop()


def test_a_rotated_token_is_fetched_again_when_the_server_refuses_the_old_one(
    auth_plane: ControlPlanes, tmp_path: Path
) -> None:
    server = auth_plane.servers["auth"]
    old, new = unique("old-token"), unique("new-token")
    server.restart_with_tokens({old: "rotating-old"})
    pdir = tmp_path / "plugin"
    command = plugin(pdir, CURRENT_TOKEN_PLUGIN)
    (pdir / "current").write_text(old)
    kubeconfig = kubeconfig_with(
        auth_plane, tmp_path / "kubeconfig", {"rotating": (cluster_of(server), exec_user(command, pdir))}
    )
    cache = tmp_path / "cache.db"
    daemon = start(kubeconfig, cache, "rotating", tmp_path).start()
    try:
        lists_before = informer_lists(daemon, "rotating")
        (pdir / "current").write_text(new)
        restarted = time.time()
        server.restart_with_tokens({new: "rotating-new"})
        seconds = new_configmap_arrives(server, cache, "rotating", timeout=30)
        assert seconds < 20, seconds
        events = watcher_events(server, restarted)
        assert {e["user"]["username"] for e in accepted(events)} == {"rotating-new"}
        assert lists_only_after_410(lists_before, informer_lists(daemon, "rotating"))
        assert runs(pdir) == 2
        log = daemon.log.read_text()
        assert "the API server refused it (401)" in log
        assert old not in log and new not in log
    finally:
        daemon.stop()


def test_a_client_certificate_rotated_on_disk_is_used_without_a_restart(
    auth_plane: ControlPlanes, tmp_path: Path
) -> None:
    server = auth_plane.servers["auth"]
    client_ca = auth_plane.workdir / "client-ca.pem"
    first_ca, second_ca = ClientCa.create("first-ca"), ClientCa.create("second-ca")
    client_ca.write_bytes(first_ca.pem)
    server.restart_with_tokens({})
    certs = tmp_path / "certs"
    cert, key = first_ca.write(certs, "cert-user", ("system:masters",))
    user = {"client-certificate": str(cert), "client-key": str(key)}
    kubeconfig = kubeconfig_with(auth_plane, tmp_path / "kubeconfig", {"certs": (cluster_of(server), user)})
    cache = tmp_path / "cache.db"
    daemon = start(kubeconfig, cache, "certs", tmp_path).start()
    try:
        lists_before = informer_lists(daemon, "certs")
        # The certificate is renewed by another CA; the server trusts only the new one.
        second_ca.write(certs, "cert-user", ("system:masters",))
        client_ca.write_bytes(second_ca.pem)
        restarted = time.time()
        server.restart_with_tokens({})
        seconds = new_configmap_arrives(server, cache, "certs", timeout=30)
        assert seconds < 20, seconds
        events = watcher_events(server, restarted)
        assert accepted(events) and {e["user"]["username"] for e in accepted(events)} == {"cert-user"}
        assert lists_only_after_410(lists_before, informer_lists(daemon, "certs"))
        assert "TLS material changed" in daemon.log.read_text()
    finally:
        daemon.stop()
        client_ca.write_bytes(first_ca.pem)


def test_a_broken_exec_plugin_spoils_only_its_context_and_says_why(
    auth_plane: ControlPlanes, tmp_path: Path, dsn: str
) -> None:
    server = auth_plane.servers["auth"]
    pdir = tmp_path / "plugins"
    hangs = plugin(pdir / "hangs", "#!/bin/sh\nsleep 60\n")
    garbage = plugin(pdir / "garbage", "#!/bin/sh\necho '<html>not a credential</html>'\n")
    cluster = cluster_of(server)
    kubeconfig = kubeconfig_with(
        auth_plane,
        tmp_path / "kubeconfig",
        {
            "missing": (
                cluster,
                exec_user(
                    "no-such-credential-plugin",
                    pdir,
                    installHint="Install it: see https://example.com/plugin",
                ),
            ),
            "hangs": (cluster, exec_user(hangs, pdir)),
            "garbage": (cluster, exec_user(garbage, pdir)),
        },
    )
    cache = tmp_path / "cache.db"
    daemon = start(kubeconfig, cache, "auth,missing,hangs,garbage", tmp_path, "--exec-timeout", "2s")
    daemon.start(synced=False)
    try:

        def informers_of(ctx: str) -> list[dict[str, Any]]:
            return [i for i in daemon.status()["informers"] if i["context"] == ctx]

        def settled() -> bool:
            good = informers_of("auth")
            bad = [informers_of(c) for c in ("missing", "hangs", "garbage")]
            return (
                bool(good)
                and all(i["state"] == "watching" for i in good)
                and all(b and all(i["last_error"] for i in b) for b in bad)
            )

        daemon.wait_until(settled, timeout=60, what="good context watching, bad ones failing")
        expected = {
            "missing": [
                "no-such-credential-plugin",
                "not found",
                "Install it: see https://example.com/plugin",
            ],
            "hangs": ["timed out after 2s"],
            "garbage": ["not JSON"],
        }
        for ctx, words in expected.items():
            errors = {i["last_error"] for i in informers_of(ctx)}
            assert all(all(w in e for w in words) for e in errors), (ctx, errors)
        assert new_configmap_arrives(server, cache, "auth", timeout=30) < 10
        result = sync(tmp_path, dsn, {}, registry="grpc", path=daemon.grpc_address)
        assert result.returncode == 0, result.output[-3000:]
        with psycopg.connect(dsn) as conn:
            rows = dict(conn.execute("SELECT context_name, last_error FROM k8s_clusters").fetchall())
        assert rows["auth"] is None
        for ctx, words in expected.items():
            assert rows[ctx] and all(w in rows[ctx] for w in words), (ctx, rows[ctx])
        text = watcher_status(cache)
        for ctx, words in expected.items():
            line = next(
                line for line in text.splitlines() if line.startswith(f"{ctx} ") and "credentials" in line
            )
            assert all(w in line for w in words), line
    finally:
        daemon.stop()


# --------------------------------------------------------------------------- TLS settings, proxy


def client_for(
    auth_plane: ControlPlanes, tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any]
) -> KubeClient:
    kubeconfig = kubeconfig_with(auth_plane, tmp_path / f"kubeconfig-{unique('k')}", {"ctx": (cluster, user)})
    return KubeClient(kubeconfig, "ctx")


def test_tls_server_name_is_the_name_the_certificate_is_checked_against(
    auth_plane: ControlPlanes, tmp_path: Path
) -> None:
    server = auth_plane.servers["auth"]
    user = {"token": server.admin_token}
    good = client_for(auth_plane, tmp_path, {**cluster_of(server), "tls-server-name": "localhost"}, user)
    assert good.get("/version")["gitVersion"]
    wrong = client_for(
        auth_plane, tmp_path, {**cluster_of(server), "tls-server-name": "not-the-server.example"}, user
    )
    with pytest.raises(ApiError, match=r"TLS error.*not-the-server\.example"):
        wrong.get("/version")


def test_insecure_skip_tls_verify_works_and_is_warned_about_once(
    auth_plane: ControlPlanes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = auth_plane.servers["auth"]
    cluster = {"server": server.url, "insecure-skip-tls-verify": True}
    for _ in range(3):
        assert client_for(auth_plane, tmp_path, cluster, {"token": server.admin_token}).get("/version")
    warnings = [r for r in caplog.records if "insecure-skip-tls-verify" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"


def test_requests_go_through_the_proxy_url(auth_plane: ControlPlanes, tmp_path: Path) -> None:
    server = auth_plane.servers["auth"]
    proxy = ConnectProxy().start()
    try:
        client = client_for(
            auth_plane,
            tmp_path,
            {**cluster_of(server), "proxy-url": proxy.url},
            {"token": server.admin_token},
        )
        assert client.get("/api/v1/namespaces/default")["metadata"]["name"] == "default"
        assert proxy.tunnels == [f"127.0.0.1:{server.client_url.rsplit(':', 1)[1]}"]
    finally:
        proxy.stop()


def test_client_certificate_data_authenticates(auth_plane: ControlPlanes, tmp_path: Path) -> None:
    server = auth_plane.servers["auth"]
    ca = ClientCa.create("inline-ca")
    (auth_plane.workdir / "client-ca.pem").write_bytes(ca.pem)  # the server reloads it by itself
    cert, key = ca.issue("inline-user", ("system:masters",))
    user = {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }
    client = client_for(auth_plane, tmp_path, cluster_of(server), user)
    # Anonymous requests are forbidden (403); an untrusted certificate is refused (401).
    namespace = eventually(
        lambda: _default_namespace(client), timeout=90, what="the server trusts the new CA"
    )
    assert namespace["metadata"]["name"] == "default"


def _default_namespace(client: KubeClient) -> dict[str, Any] | None:
    try:
        return client.get("/api/v1/namespaces/default")
    except ApiError:
        return None
