"""Every kind k8s-watcher has a descriptor for, beyond the first 28: one object of each
created on the real test bed, synced by the real CLI and destination, found in
PostgreSQL with its typed column."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from testbed.cluster import ControlPlanes
from testbed.postgres import Postgres
from tests.conftest import namespace, new_dsn, sync, unique
from watcher.resources import BY_TABLE, RESOURCES

CTX = "prod"

#: The tables of the first version; every other descriptor must be covered below.
FIRST_TABLES = {
    "k8s_namespaces", "k8s_pods", "k8s_deployments", "k8s_services", "k8s_custom_resources", "k8s_nodes",
    "k8s_replicasets", "k8s_statefulsets", "k8s_daemonsets", "k8s_jobs", "k8s_cronjobs", "k8s_configmaps",
    "k8s_secrets", "k8s_serviceaccounts", "k8s_roles", "k8s_rolebindings", "k8s_clusterroles",
    "k8s_clusterrolebindings", "k8s_persistentvolumes", "k8s_persistentvolumeclaims", "k8s_storageclasses",
    "k8s_ingresses", "k8s_networkpolicies", "k8s_endpointslices", "k8s_events",
    "k8s_horizontalpodautoscalers", "k8s_poddisruptionbudgets", "k8s_leases",
}  # fmt: skip


@dataclass(frozen=True)
class Kind:
    """One object to create, and a typed column of its row with the value it must hold."""

    table: str
    body: dict[str, Any]
    column: str
    expected: Any


def _csr_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k8s-watcher-test")]))
        .sign(key, hashes.SHA256())
    )
    return base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode()


def _webhooks(name: str) -> dict[str, Any]:
    """A webhook configuration that can never be called: it matches no object."""
    return {
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "never.k8s-watcher.io",
                "clientConfig": {"url": "https://127.0.0.1:1/never"},
                "rules": [
                    {"apiGroups": ["example.invalid"], "apiVersions": ["v1"], "operations": ["CREATE"],
                     "resources": ["nothings"]},
                ],
                "objectSelector": {"matchLabels": {"k8s-watcher.io/never": "true"}},
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }
        ],
    }  # fmt: skip


def _kinds(name: str) -> list[Kind]:
    containers = [{"name": "c", "image": "tmpl:1"}]
    requests = [{"name": "gpu", "exactly": {"deviceClassName": "gpu.example.com"}}]
    no_object = [{"apiGroups": ["example.invalid"], "apiVersions": ["v1"], "operations": ["CREATE"],
                  "resources": ["nothings"]}]  # fmt: skip
    return [
        Kind("k8s_endpoints", {"metadata": {"name": "ep"}, "subsets": [
            {"addresses": [{"ip": "10.1.2.3"}], "ports": [{"port": 80}]}]}, "addresses", ["10.1.2.3"]),
        Kind("k8s_limitranges", {"metadata": {"name": "lr"}, "spec": {"limits": [
            {"type": "Container", "default": {"cpu": "100m"}}]}}, "limit_types", ["Container"]),
        Kind("k8s_resourcequotas", {"metadata": {"name": "rq"}, "spec": {"hard": {"pods": "10"}}},
             "hard", {"pods": "10"}),
        Kind("k8s_podtemplates", {"metadata": {"name": "pt"}, "template": {"spec": {"containers": containers}}},
             "images", ["tmpl:1"]),
        Kind("k8s_replicationcontrollers", {"metadata": {"name": "rc"}, "spec": {
            "replicas": 2, "selector": {"app": "rc"},
            "template": {"metadata": {"labels": {"app": "rc"}}, "spec": {"containers": containers}}}},
             "replicas", 2),
        Kind("k8s_mutatingwebhookconfigurations", _webhooks(name), "webhook_names", ["never.k8s-watcher.io"]),
        Kind("k8s_validatingwebhookconfigurations", _webhooks(name), "failure_policies", ["Ignore"]),
        Kind("k8s_validatingadmissionpolicies", {"metadata": {"name": name}, "spec": {
            "failurePolicy": "Ignore", "matchConstraints": {"resourceRules": no_object},
            "validations": [{"expression": "true"}]}}, "failure_policy", "Ignore"),
        Kind("k8s_validatingadmissionpolicybindings", {"metadata": {"name": name}, "spec": {
            "policyName": name, "validationActions": ["Audit"]}}, "validation_actions", ["Audit"]),
        Kind("k8s_certificatesigningrequests", {"metadata": {"name": name}, "spec": {
            "request": _csr_pem(), "signerName": "example.com/k8s-watcher", "usages": ["digital signature"]}},
             "signer_name", "example.com/k8s-watcher"),
        Kind("k8s_ingressclasses", {"metadata": {"name": name}, "spec": {"controller": "example.com/ingress"}},
             "controller", "example.com/ingress"),
        Kind("k8s_runtimeclasses", {"metadata": {"name": name}, "handler": "runsc"}, "handler", "runsc"),
        Kind("k8s_priorityclasses", {"metadata": {"name": name}, "value": 1000}, "value", 1000),
        Kind("k8s_csidrivers", {"metadata": {"name": f"{name}.csi.example.com"}, "spec": {"attachRequired": False}},
             "attach_required", False),
        Kind("k8s_csinodes", {"metadata": {"name": name}, "spec": {"drivers": [
            {"name": "csi.example.com", "nodeID": "n1"}]}}, "driver_names", ["csi.example.com"]),
        Kind("k8s_csistoragecapacities", {"metadata": {"name": "cap"}, "storageClassName": "fast",
                                          "capacity": "10Gi"}, "capacity", "10Gi"),
        Kind("k8s_volumeattachments", {"metadata": {"name": name}, "spec": {
            "attacher": "csi.example.com", "nodeName": "node-1", "source": {"persistentVolumeName": "pv-1"}}},
             "persistent_volume_name", "pv-1"),
        Kind("k8s_apiservices", {"metadata": {"name": f"v1.{name}.k8s-watcher.io"}, "spec": {
            "group": f"{name}.k8s-watcher.io", "version": "v1", "groupPriorityMinimum": 100,
            "versionPriority": 10}}, "group_priority_minimum", 100),
        Kind("k8s_flowschemas", {"metadata": {"name": name}, "spec": {
            "priorityLevelConfiguration": {"name": "global-default"}, "matchingPrecedence": 9000,
            "rules": [{"subjects": [{"kind": "User", "user": {"name": "nobody-k8s-watcher"}}],
                       "resourceRules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"],
                                          "namespaces": ["*"]}]}]}}, "priority_level", "global-default"),
        Kind("k8s_prioritylevelconfigurations", {"metadata": {"name": name}, "spec": {
            "type": "Limited", "limited": {"nominalConcurrencyShares": 1, "limitResponse": {"type": "Reject"}}}},
             "nominal_concurrency_shares", 1),
        Kind("k8s_deviceclasses", {"metadata": {"name": name}, "spec": {"extendedResourceName": "example.com/gpu"}},
             "extended_resource_name", "example.com/gpu"),
        Kind("k8s_resourceclaims", {"metadata": {"name": "claim"}, "spec": {"devices": {"requests": requests}}},
             "device_class_names", ["gpu.example.com"]),
        Kind("k8s_resourceclaimtemplates", {"metadata": {"name": "claim-tmpl"}, "spec": {"spec": {
            "devices": {"requests": requests}}}}, "device_class_names", ["gpu.example.com"]),
        Kind("k8s_resourceslices", {"metadata": {"name": name}, "spec": {
            "driver": "gpu.example.com", "pool": {"name": "pool-1", "generation": 1, "resourceSliceCount": 1},
            "allNodes": True, "devices": [{"name": "gpu-0"}]}}, "device_names", ["gpu-0"]),
    ]  # fmt: skip


def _collection(table: str, ns: str) -> str:
    desc = BY_TABLE[table]
    prefix = f"/apis/{desc.group}/{desc.version}" if desc.group else f"/api/{desc.version}"
    return f"{prefix}/namespaces/{ns}/{desc.plural}" if desc.namespaced else f"{prefix}/{desc.plural}"


@dataclass(frozen=True)
class Synced:
    dsn: str
    created: dict[str, dict[str, Any]]  # table -> the object as the API server returned it
    output: str


@pytest.fixture(scope="module")
def synced(
    planes: ControlPlanes, pg_server: Postgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Synced]:
    """One object of every new kind in ``prod``, then one sync of all tables (registry local)."""
    admin = planes.servers[CTX].admin()
    ns = namespace(admin, unique("kinds"))
    created = {k.table: admin.create(_collection(k.table, ns), k.body) for k in _kinds(unique("kinds"))}
    tmp = tmp_path_factory.mktemp("kinds")
    dsn = new_dsn(pg_server)
    spec = {"kubeconfig": str(planes.kubeconfig), "contexts": [CTX], "cache_path": str(tmp / "cache.db")}
    result = sync(tmp, dsn, spec)
    yield Synced(dsn, created, result.output)
    for table, obj in created.items():
        if not BY_TABLE[table].namespaced:  # cluster-wide objects would outlive the test
            admin.delete(f"{_collection(table, ns)}/{obj['metadata']['name']}")


def test_every_kind_added_after_the_first_version_is_created_here() -> None:
    # A list-only kind cannot be created: the API server computes it (checked below).
    computed = {d.table for d in RESOURCES if d.list_only}
    assert computed == {"k8s_componentstatuses"}
    assert {k.table for k in _kinds("x")} == {d.table for d in RESOURCES} - FIRST_TABLES - computed


@pytest.mark.parametrize("kind", _kinds("x"), ids=lambda k: k.table)
def test_an_object_of_every_new_kind_reaches_postgresql_with_its_typed_column(
    synced: Synced, kind: Kind
) -> None:
    obj = synced.created[kind.table]
    with psycopg.connect(synced.dsn) as conn:
        row = conn.execute(
            f"SELECT name, namespace, {kind.column} FROM {kind.table} WHERE context_name = %s AND uid = %s",
            (CTX, obj["metadata"]["uid"]),
        ).fetchone()
    assert row == (obj["metadata"]["name"], obj["metadata"].get("namespace"), kind.expected), synced.output[
        -2000:
    ]


def test_built_in_objects_of_the_new_kinds_are_synced_too(synced: Synced) -> None:
    """What the API server creates itself: its APIServices, flow schemas and priority
    levels, and the component statuses it computes."""
    with psycopg.connect(synced.dsn) as conn:
        api = conn.execute(
            "SELECT available FROM k8s_apiservices WHERE context_name = %s AND name = 'v1.apps'", (CTX,)
        ).fetchone()
        exempt = conn.execute(
            "SELECT type FROM k8s_prioritylevelconfigurations WHERE context_name = %s AND name = 'exempt'",
            (CTX,),
        ).fetchone()
        components = conn.execute(
            "SELECT name, conditions->0->>'status' FROM k8s_componentstatuses WHERE context_name = %s", (CTX,)
        ).fetchall()
    assert api == (True,)
    assert exempt == ("Exempt",)
    # (The scheduler's and controller manager's health is whatever listens on their
    # ports on this machine: not asserted.)
    assert {name for name, _ in components} == {"controller-manager", "etcd-0", "scheduler"}
    assert ("etcd-0", "True") in components
