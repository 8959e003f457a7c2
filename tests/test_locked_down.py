"""A locked-down deployment: gRPC over TLS, and manifests a real API server accepts
(NetworkPolicy admitting the ports only from labelled pods, read-only root filesystem)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cloudquery.plugin_v3 import plugin_pb2, plugin_pb2_grpc

from testbed.cluster import ControlPlanes, Pki
from tests.conftest import sync, unique

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "kubernetes"


def plugin_name(address: str, ca: Path | None) -> str:
    """GetName over a TLS channel trusting ``ca``, or a plaintext one."""
    channel = (
        grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=ca.read_bytes()))
        if ca
        else grpc.insecure_channel(address)
    )
    with channel:
        stub = plugin_pb2_grpc.PluginStub(channel)
        return str(stub.GetName(plugin_pb2.GetName.Request(), timeout=10).name)


def test_grpc_over_tls_serves_tls_clients_only_and_picks_up_a_renewed_certificate(
    planes: ControlPlanes, tmp_path: Path, dsn: str, start_daemon: Any
) -> None:
    pki = Pki.create(tmp_path / "grpc-pki")
    daemon = start_daemon(
        planes.kubeconfig, tmp_path / "cache.db", "prod",
        extra_args=["--grpc-tls-cert", str(pki.cert_file), "--grpc-tls-key", str(pki.key_file)],
    )  # fmt: skip
    assert plugin_name(daemon.grpc_address, pki.ca_file) == "k8s-watcher"
    with pytest.raises(grpc.RpcError) as plaintext:
        plugin_name(daemon.grpc_address, None)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
    # CLI 6.21.1 dials registry: grpc plugins in plaintext: 30 attempts, then it gives up.
    result = sync(tmp_path, dsn, {}, registry="grpc", path=daemon.grpc_address)
    assert result.returncode != 0 and "connection not ready" in result.output, result.output[-2000:]

    renewed = Pki.create(tmp_path / "renewed-pki")
    pki.cert_file.write_bytes(renewed.cert_file.read_bytes())
    pki.key_file.write_bytes(renewed.key_file.read_bytes())
    assert plugin_name(daemon.grpc_address, renewed.ca_file) == "k8s-watcher"
    with pytest.raises(grpc.RpcError):
        plugin_name(daemon.grpc_address, pki.ca_file)  # the old CA no longer matches
    assert "gRPC TLS certificate" in daemon.log.read_text() and "reloaded" in daemon.log.read_text()


def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return [yaml.safe_load((DEPLOY / name).read_text()) for name in kustomization["resources"]]


def by_kind(kind: str) -> dict[str, Any]:
    return next(m for m in manifests() if m["kind"] == kind)


COLLECTIONS = {
    "Namespace": "/api/v1/namespaces",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "PersistentVolumeClaim": "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
}


def test_every_manifest_is_accepted_by_a_real_api_server_with_strict_field_validation(
    planes: ControlPlanes,
) -> None:
    admin = planes.servers["prod"].admin()
    ns = unique("deploy")
    admin.create("/api/v1/namespaces", {"metadata": {"name": ns}})
    kinds = []
    for manifest in manifests():
        obj = copy.deepcopy(manifest)
        if "namespace" in obj["metadata"]:
            obj["metadata"]["namespace"] = ns
        else:
            obj["metadata"]["name"] = unique(obj["metadata"]["name"])
        path = COLLECTIONS[obj["kind"]].format(ns=ns)
        admin.request("POST", f"{path}?dryRun=All&fieldValidation=Strict", obj)
        kinds.append(obj["kind"])
    assert "NetworkPolicy" in kinds and "ConfigMap" not in kinds


def test_the_pod_runs_read_only_without_a_kubeconfig_and_admits_only_labelled_clients() -> None:
    deployment = by_kind("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "--kubeconfig" not in container["args"] and pod["automountServiceAccountToken"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert mounts == {"/var/lib/k8s-watcher", "/tmp"}
    assert any(a.startswith("/var/lib/k8s-watcher/") for a in container["args"])  # the cache is on the volume

    policy = by_kind("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"] == {"k8s-watcher.io/client": "true"}
    ports = {p["name"] for p in container["ports"]}
    assert {p["port"] for p in rule["ports"]} == ports == {"grpc", "metrics"}
