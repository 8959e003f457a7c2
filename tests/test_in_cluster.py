"""In-cluster mode: no kubeconfig, the pod's service account instead, simulated with the
environment variables and files a pod gets, pointed at a test bed API server and a real
service-account token it issued (TokenRequest)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from testbed.cluster import ApiServer, ControlPlanes, binary_dir
from testbed.daemon import DaemonProcess
from tests.audit import accepted, watcher_events
from tests.conftest import CMS, NSS, cached, configmap, eventually, namespace, pg_uids, sync, truth, unique

READ_ALL = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "k8s-watcher-in-cluster-test"},
    "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}],
}


class ServiceAccount:
    """A ServiceAccount bound to a read-all ClusterRole (the ServiceAccount admission
    plugin is off in the test bed, so the object is created here), and the directory a
    pod would have it mounted in."""

    def __init__(self, server: ApiServer, directory: Path) -> None:
        self.server = server
        self.admin = server.admin()
        self.namespace = namespace(self.admin, unique("in-cluster"))
        self.name = "watcher"
        self.directory = directory
        self.admin.apply("/apis/rbac.authorization.k8s.io/v1/clusterroles", READ_ALL)
        self.admin.create(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "metadata": {"name": self.namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": READ_ALL["metadata"]["name"],
                },
                "subjects": [{"kind": "ServiceAccount", "name": self.name, "namespace": self.namespace}],
            },
        )
        directory.mkdir(parents=True)
        (directory / "ca.crt").write_bytes(server.ca_file.read_bytes())
        (directory / "namespace").write_text(self.namespace)
        self.recreate()

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    def recreate(self) -> None:
        """(Re)create the ServiceAccount (a new uid: tokens of the old one stop working)
        and mount a new token for it, as the kubelet rotates it."""
        path = f"/api/v1/namespaces/{self.namespace}/serviceaccounts"
        self.admin.delete(f"{path}/{self.name}")
        eventually(lambda: self.admin.get(f"{path}/{self.name}") is None, what="service account deleted")
        self.admin.create(path, {"metadata": {"name": self.name}})
        review = self.admin.create(
            f"{path}/{self.name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600},
            },
        )
        self.token = review["status"]["token"]
        staged = self.directory / "token.new"
        staged.write_text(self.token)
        staged.replace(self.directory / "token")

    def environment(self, home: Path) -> dict[str, str]:
        """What a pod's process sees: the service host and port, no kubeconfig."""
        host, port = self.server.client_url.removeprefix("https://").rsplit(":", 1)
        home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        return {
            **env,
            "HOME": str(home),
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            "K8S_WATCHER_SERVICE_ACCOUNT_DIR": str(self.directory),
        }


@pytest.fixture
def service_account(planes: ControlPlanes, tmp_path: Path) -> ServiceAccount:
    return ServiceAccount(planes.servers["dev"], tmp_path / "serviceaccount")


def test_the_daemon_watches_its_own_cluster_with_the_pods_rotating_token(
    service_account: ServiceAccount, tmp_path: Path
) -> None:
    server = service_account.server
    assert server.proxy is not None
    cache = tmp_path / "cache.db"
    daemon = DaemonProcess(
        None, cache, tmp_path / "daemon.log",
        extra_args=["--in-cluster-context", "my-cluster"], env=service_account.environment(tmp_path / "home"),
    )  # fmt: skip
    started = time.time()
    daemon.start()
    try:
        contexts = {i["context"] for i in daemon.status()["informers"]}
        assert contexts == {"my-cluster"}
        ns = namespace(service_account.admin, unique("pod-view"))
        configmap(service_account.admin, ns, "seen")
        eventually(lambda: cached(cache, "my-cluster", CMS, ns), what="configmap cached")
        users = {e["user"]["username"] for e in accepted(watcher_events(server, started))}
        assert users == {service_account.username}
        assert "watching the cluster this pod runs in" in daemon.log.read_text()

        # The kubelet rotates the token; the old one stops working (its account is gone).
        service_account.recreate()
        server.proxy.cut_all()  # the watches reconnect, with whatever token is mounted
        configmap(service_account.admin, ns, "after-rotation")
        eventually(
            lambda: len(cached(cache, "my-cluster", CMS, ns)) == 2, what="configmap after rotation cached"
        )
        assert all(i["state"] == "watching" for i in daemon.status()["informers"])
        assert service_account.token not in daemon.log.read_text()
    finally:
        daemon.stop()


def test_the_local_plugin_syncs_the_in_cluster_context(
    service_account: ServiceAccount, tmp_path: Path, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K8S_WATCHER_TESTBED_BIN", str(binary_dir()))  # found through HOME otherwise
    for key, value in service_account.environment(tmp_path / "home").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    spec: dict[str, Any] = {"tables": ["k8s_namespaces"], "cache_path": str(tmp_path / "cache.db")}
    result = sync(tmp_path, dsn, spec)
    assert result.returncode == 0, result.output[-3000:]
    namespaces = truth(service_account.admin, NSS)
    assert pg_uids(dsn, "k8s_namespaces", "in-cluster") == set(namespaces)
