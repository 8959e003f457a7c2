"""In a pod with no kubeconfig, the pod's service account is the kubeconfig (watcher.kubeconfig)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.certs import ClientCa
from watcher.daemon import DaemonConfig, lease_client
from watcher.errors import ConfigError
from watcher.kubeconfig import KubeconfigError, context_entry, context_names, read_kubeconfig


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A pod's environment: service host and port, the mounted service account, no kubeconfig."""
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("tok")
    (sa / "ca.crt").write_text("CA")
    (sa / "namespace").write_text("watchers\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("K8S_WATCHER_SERVICE_ACCOUNT_DIR", str(sa))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("K8S_WATCHER_IN_CLUSTER_CONTEXT", raising=False)
    return tmp_path / "no-kubeconfig"


def test_without_a_kubeconfig_a_pod_has_one_in_cluster_context(pod: Path) -> None:
    assert context_names(pod) == ["in-cluster"]
    entry = context_entry(pod, "in-cluster")
    assert entry.cluster["server"] == "https://10.96.0.1:443"
    assert entry.cluster["certificate-authority"].endswith("serviceaccount/ca.crt")
    assert entry.user == {"tokenFile": str(Path(entry.cluster["certificate-authority"]).parent / "token")}
    assert entry.namespace == "watchers"


def test_the_context_name_can_be_chosen(pod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_WATCHER_IN_CLUSTER_CONTEXT", "prod-eu")
    assert context_names(pod) == ["prod-eu"]


def test_an_ipv6_service_host_is_bracketed(pod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert context_entry(pod, "in-cluster").cluster["server"] == "https://[fd00::1]:443"


def test_a_kubeconfig_named_explicitly_never_falls_back(pod: Path, tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match=r"does not exist$"):
        read_kubeconfig(tmp_path / "other")


def test_outside_a_pod_a_missing_kubeconfig_says_so(pod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(KubeconfigError, match=r"does not exist .*not a pod with a service account"):
        read_kubeconfig(pod)


def test_an_existing_kubeconfig_wins_over_the_pod(pod: Path) -> None:
    pod.write_text("contexts: [{name: mine, context: {}}]\n")
    assert context_names(pod) == ["mine"]


def test_replicas_reach_their_leases_on_the_pods_own_cluster_beside_a_kubeconfig(
    pod: Path, tmp_path: Path
) -> None:
    """A replica with a fleet kubeconfig keeps its Leases on the cluster it runs in: a
    client from the service account, whatever the kubeconfig names."""
    sa = tmp_path / "serviceaccount"
    (sa / "ca.crt").write_bytes(ClientCa.create().pem)  # a real certificate: the client loads it
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("apiVersion: v1\nkind: Config\ncontexts: []\n")
    config = DaemonConfig(
        kubeconfig=fleet, contexts=["*"], cache_path=tmp_path / "c.db", replicas_lease_namespace="ns"
    )
    client = lease_client(config)
    assert client.context == "in-cluster" and client.info.server == "https://10.96.0.1:443"
    assert client.entry.user == {"tokenFile": str(sa / "token")}


def test_outside_a_pod_replicas_must_name_the_leases_cluster(
    pod: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    config = DaemonConfig(
        kubeconfig=tmp_path / "k", contexts=["*"], cache_path=tmp_path / "c.db", replicas_lease_namespace="ns"
    )
    with pytest.raises(ConfigError, match="name a kubeconfig context with --replicas-lease-context"):
        lease_client(config)
