"""The data set the hardening checks, the report and the dashboards are tested on:
objects that violate each check and objects that satisfy them, created through the API,
each with the checks that must report it. The fixtures that build it are in
``tests/hardening_fixtures.py``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.cluster import KubeHttp
from tests.conftest import unique

EAST, WEST = "east", "west"
IMAGE = "registry.example/app:1.4.2"
DIGEST = "registry.example/app@sha256:" + "0" * 64

Spec = dict[str, Any]


def good_container(name: str = "app") -> Spec:
    return {
        "name": name,
        "image": IMAGE,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
    }


def good_pod_spec() -> Spec:
    """A pod spec no check reports (and the restricted Pod Security Standard admits)."""
    return {
        "serviceAccountName": "app",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [good_container()],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }


def _c0(spec: Spec) -> Spec:
    return spec["containers"][0]


def _sc(spec: Spec) -> Spec:
    return spec["containers"][0]["securityContext"]


@dataclass
class Case:
    """One object of the data set and the checks it must be reported by (none: compliant)."""

    kind: str
    name: str
    namespace: str | None
    violates: frozenset[str]
    uid: str = ""


@dataclass
class PodCase:
    """A pod or workload: the good pod spec changed by ``mutate``."""

    name: str
    violates: set[str]
    mutate: Callable[[Spec], Any] = lambda spec: None
    kind: str = "Pod"
    annotations: dict[str, str] = field(default_factory=dict)


def _without(*keys: str) -> Callable[[Spec], Any]:
    """Remove ``a.b.c`` paths (from the spec; a leading ``c0.`` means its first container)."""

    def mutate(spec: Spec) -> None:
        for key in keys:
            parts = key.split(".")
            node = _c0(spec) if parts[0] == "c0" else spec
            for part in parts[1 if parts[0] == "c0" else 0 : -1]:
                node = node[part]
            del node[parts[-1]]

    return mutate


def _add_init(**security: Any) -> Callable[[Spec], Any]:
    def mutate(spec: Spec) -> None:
        init = good_container("init")
        init["securityContext"].update(security)
        spec["initContainers"] = [init]

    return mutate


CAPS_ALL = {"capabilities-beyond-baseline", "capabilities-added", "dangerous-capabilities"}
ALL_RESOURCES = {
    "cpu-requests-missing",
    "memory-requests-missing",
    "cpu-limits-missing",
    "memory-limits-missing",
}

#: Pods and workloads in the namespace that breaks the rules ("bad"); the first group are pods.
POD_CASES: list[PodCase] = [
    PodCase("privileged", {"privileged-containers", "privilege-escalation-allowed"},
            lambda s: (_sc(s).update(privileged=True), _sc(s).pop("allowPrivilegeEscalation"))),
    PodCase("escalation", {"privilege-escalation-allowed"}, lambda s: _sc(s).update(allowPrivilegeEscalation=True)),
    PodCase("cap-sys-admin", CAPS_ALL, lambda s: _sc(s)["capabilities"].update(add=["SYS_ADMIN"])),
    PodCase("cap-chown", {"capabilities-added"}, lambda s: _sc(s)["capabilities"].update(add=["CHOWN"])),
    # The runtime reads CAP_SYS_ADMIN as SYS_ADMIN; the Pod Security Standards match names exactly.
    PodCase("cap-prefixed", CAPS_ALL, lambda s: _sc(s)["capabilities"].update(add=["CAP_SYS_PTRACE"])),
    PodCase("cap-net-bind", set(), lambda s: _sc(s)["capabilities"].update(add=["NET_BIND_SERVICE"])),
    PodCase("no-drop", {"capabilities-not-dropped"}, _without("c0.securityContext.capabilities")),
    PodCase("root-allowed", {"run-as-root-allowed"}, lambda s: _sc(s).update(runAsNonRoot=False)),
    PodCase("nonroot-unset", {"run-as-root-allowed"}, _without("securityContext.runAsNonRoot")),
    PodCase("init-uid-0", {"run-as-uid-0"}, _add_init(runAsUser=0)),
    PodCase("writable-root", {"writable-root-filesystem"}, _without("c0.securityContext.readOnlyRootFilesystem")),
    PodCase("no-cpu", {"cpu-requests-missing", "cpu-limits-missing"},
            _without("c0.resources.requests.cpu", "c0.resources.limits.cpu")),
    PodCase("no-cpu-limit", {"cpu-limits-missing"}, _without("c0.resources.limits.cpu")),
    PodCase("no-memory", {"memory-requests-missing", "memory-limits-missing"},
            _without("c0.resources.requests.memory", "c0.resources.limits.memory")),
    PodCase("no-memory-limit", {"memory-limits-missing"}, _without("c0.resources.limits.memory")),
    PodCase("init-no-resources", ALL_RESOURCES,
            lambda s: (_add_init()(s), s["initContainers"][0].pop("resources"))),
    PodCase("host-port", {"host-ports"}, lambda s: _c0(s).update(ports=[{"containerPort": 8080, "hostPort": 8080}])),
    PodCase("seccomp-unconfined", {"seccomp-unconfined", "seccomp-profile-missing"},
            lambda s: _sc(s).update(seccompProfile={"type": "Unconfined"})),
    PodCase("seccomp-unset", {"seccomp-profile-missing"}, _without("securityContext.seccompProfile")),
    PodCase("selinux-spc", {"selinux-custom-options"}, lambda s: _sc(s).update(seLinuxOptions={"type": "spc_t"})),
    PodCase("selinux-level", set(),
            lambda s: s["securityContext"].update(seLinuxOptions={"type": "container_t", "level": "s0:c1,c2"})),
    PodCase("apparmor-field", {"apparmor-unconfined"}, lambda s: _sc(s).update(appArmorProfile={"type": "Unconfined"})),
    PodCase("apparmor-annotation", {"apparmor-unconfined"},
            annotations={"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}),
    PodCase("apparmor-default", set(), lambda s: _sc(s).update(appArmorProfile={"type": "RuntimeDefault"})),
    # Baseline allows an unmasked /proc in a pod's own user namespace (the API server
    # refuses one in the host's); restricted does not.
    PodCase("proc-unmasked", {"proc-mount-unmasked"},
            lambda s: (s.update(hostUsers=False), _sc(s).update(procMount="Unmasked"))),
    PodCase("secret-env", {"secrets-in-env"},
            lambda s: _c0(s).update(env=[{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}])),
    PodCase("secret-env-from", {"secrets-in-env"}, lambda s: _c0(s).update(envFrom=[{"secretRef": {"name": "s"}}])),
    PodCase("configmap-env", set(),
            lambda s: _c0(s).update(env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}])),
    PodCase("host-process", {"windows-host-process", "host-network"},
            lambda s: (s.update(hostNetwork=True), s["securityContext"].update(windowsOptions={"hostProcess": True}))),
    PodCase("image-latest", {"image-mutable-tag"}, lambda s: _c0(s).update(image="nginx:latest")),
    PodCase("image-untagged", {"image-mutable-tag"}, lambda s: _c0(s).update(image="registry.example:5000/app")),
    PodCase("image-digest", set(), lambda s: _c0(s).update(image=DIGEST)),
    PodCase("host-network", {"host-network"}, lambda s: s.update(hostNetwork=True)),
    PodCase("host-pid", {"host-pid"}, lambda s: s.update(hostPID=True)),
    PodCase("host-ipc", {"host-ipc"}, lambda s: s.update(hostIPC=True)),
    PodCase("host-path", {"host-path-volumes", "restricted-volume-types"},
            lambda s: s["volumes"].append({"name": "etc", "hostPath": {"path": "/etc"}})),
    PodCase("nfs-volume", {"restricted-volume-types"},
            lambda s: s["volumes"].append({"name": "nfs", "nfs": {"server": "192.0.2.1", "path": "/x"}})),
    PodCase("unsafe-sysctl", {"unsafe-sysctls"},
            lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "65536"}])),
    PodCase("safe-sysctl", set(),
            lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.shm_rmid_forced", "value": "1"}])),
    PodCase("token-via-sa", {"service-account-token-automounted"},
            lambda s: (s.pop("automountServiceAccountToken"), s.update(serviceAccountName="noisy"))),
    PodCase("token-off-via-sa", set(),
            lambda s: (s.pop("automountServiceAccountToken"), s.update(serviceAccountName="quiet"))),
    PodCase("token-on-in-pod", {"service-account-token-automounted"},
            lambda s: s.update(automountServiceAccountToken=True, serviceAccountName="quiet")),
    PodCase("default-sa", {"default-service-account"}, _without("serviceAccountName")),
    PodCase("deploy-privileged", {"privileged-containers", "privilege-escalation-allowed"},
            lambda s: (_sc(s).update(privileged=True), _sc(s).pop("allowPrivilegeEscalation")), kind="Deployment"),
    PodCase("ds-host-network", {"host-network"}, lambda s: s.update(hostNetwork=True), kind="DaemonSet"),
    PodCase("sts-host-path", {"host-path-volumes", "restricted-volume-types"},
            lambda s: s["volumes"].append({"name": "etc", "hostPath": {"path": "/etc"}}), kind="StatefulSet"),
    PodCase("job-net-admin", CAPS_ALL, lambda s: _sc(s)["capabilities"].update(add=["NET_ADMIN"]), kind="Job"),
    PodCase("cron-host-pid", {"host-pid"}, lambda s: s.update(hostPID=True), kind="CronJob"),
    PodCase("cron-init-root", {"run-as-root-allowed"}, _add_init(runAsNonRoot=False), kind="CronJob"),
    PodCase("rs-secret-env", {"secrets-in-env"}, lambda s: _c0(s).update(envFrom=[{"secretRef": {"name": "s"}}]),
            kind="ReplicaSet"),
    PodCase("deploy-default-sa", {"default-service-account"}, _without("serviceAccountName"), kind="Deployment"),
]  # fmt: skip

#: An ephemeral container (added through the pod's subresource) that is privileged.
EPHEMERAL = {
    "name": "debug",
    "image": IMAGE,
    "securityContext": {
        "privileged": True,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    },
}
EPHEMERAL_VIOLATES = {"privileged-containers", "privilege-escalation-allowed"}

WORKLOAD_KINDS = ("Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "CronJob")
_COLLECTIONS = {
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "ReplicaSet": "/apis/apps/v1/namespaces/{ns}/replicasets",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "CronJob": "/apis/batch/v1/namespaces/{ns}/cronjobs",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "LimitRange": "/api/v1/namespaces/{ns}/limitranges",
    "ResourceQuota": "/api/v1/namespaces/{ns}/resourcequotas",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Namespace": "/api/v1/namespaces",
}


def collection(kind: str, namespace: str | None) -> str:
    return _COLLECTIONS[kind].format(ns=namespace)


def pod_manifest(kind: str, name: str, spec: Spec, annotations: dict[str, str] | None = None) -> Spec:
    """A Pod, or a workload whose pod template is ``spec``."""
    if kind == "Pod":
        return {"metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}
    if kind in ("Job", "CronJob"):
        spec = {**spec, "restartPolicy": "Never"}
    template = {"metadata": {"labels": {"app": name}, "annotations": annotations or {}}, "spec": spec}
    if kind == "Job":
        body: Spec = {"template": template}
    elif kind == "CronJob":
        body = {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": template}}}
    else:
        body = {"selector": {"matchLabels": {"app": name}}, "template": template}
        if kind == "StatefulSet":
            body["serviceName"] = name
    return {"metadata": {"name": name}, "spec": body}


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> Spec:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def _ref(kind: str, name: str) -> Spec:
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}


@dataclass
class Hardened:
    """The data set: where it lives and what each object must be reported by."""

    dsn: str
    kubeconfig: Path
    admin: KubeHttp
    namespaces: dict[str, str]
    cases: list[Case]

    @property
    def uids(self) -> set[str]:
        return {c.uid for c in self.cases}

    def expected(self, check_id: str) -> set[str]:
        """uids of the data set's objects that ``check_id`` must report."""
        return {c.uid for c in self.cases if check_id in c.violates}


class _Builder:
    def __init__(self, admin: KubeHttp) -> None:
        self.admin = admin
        self.cases: list[Case] = []

    def create(self, kind: str, namespace: str | None, body: Spec, violates: Iterable[str] = ()) -> Spec:
        created = self.admin.create(collection(kind, namespace), body)
        meta = created["metadata"]
        self.cases.append(Case(kind, meta["name"], namespace, frozenset(violates), meta["uid"]))
        return created

    def namespace(self, name: str, violates: set[str], labels: dict[str, str] | None = None) -> str:
        self.create("Namespace", None, {"metadata": {"name": name, "labels": labels or {}}}, violates)
        return name


NS_CHECKS = {
    "namespace-without-network-policy",
    "namespace-without-default-deny-ingress",
    "namespace-without-default-deny-egress",
    "namespace-without-limit-range",
    "namespace-without-resource-quota",
    "namespace-without-pod-security-enforcement",
}
ENFORCE = "pod-security.kubernetes.io/enforce"


def populate(admin: KubeHttp) -> tuple[dict[str, str], list[Case]]:
    """Create the data set in one context; the namespaces by role, and every case."""
    b = _Builder(admin)
    ns = {
        "bad": b.namespace(unique("hard-bad"), NS_CHECKS),
        "good": b.namespace(unique("hard-good"), set(), {ENFORCE: "restricted"}),
        "selective": b.namespace(
            unique("hard-sel"), NS_CHECKS - {"namespace-without-network-policy"}, {ENFORCE: "privileged"}
        ),
        "ingress-open": b.namespace(
            unique("hard-open"),
            {
                "namespace-without-default-deny-ingress",
                "namespace-without-limit-range",
                "namespace-without-resource-quota",
            },
            {ENFORCE: "baseline"},
        ),
    }
    bad, good = ns["bad"], ns["good"]
    # Network and resource policies.
    deny_all = {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    b.create("NetworkPolicy", good, {"metadata": {"name": "deny-all"}, "spec": deny_all})
    b.create("LimitRange", good, {"metadata": {"name": "defaults"}, "spec": {"limits": [
        {"type": "Container", "default": {"cpu": "100m", "memory": "64Mi"}, "defaultRequest": {"cpu": "10m", "memory": "16Mi"}},
    ]}})  # fmt: skip
    b.create(
        "ResourceQuota", good, {"metadata": {"name": "quota"}, "spec": {"hard": {"count/configmaps": "100"}}}
    )
    b.create("NetworkPolicy", ns["selective"], {"metadata": {"name": "web"}, "spec": {
        "podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
    }})  # fmt: skip
    b.create("NetworkPolicy", ns["ingress-open"], {"metadata": {"name": "allow-in"}, "spec": {
        "podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}],
    }})  # fmt: skip
    b.create("NetworkPolicy", ns["ingress-open"], {"metadata": {"name": "deny-out"}, "spec": {
        "podSelector": {}, "policyTypes": ["Egress"],
    }})  # fmt: skip
    # Service accounts and secrets.
    b.create("ServiceAccount", good, {"metadata": {"name": "app"}, "automountServiceAccountToken": False})
    b.create("ServiceAccount", bad, {"metadata": {"name": "noisy"}}, {"serviceaccount-token-automount"})
    b.create("ServiceAccount", bad, {"metadata": {"name": "quiet"}, "automountServiceAccountToken": False})
    b.create("Secret", bad, {
        "metadata": {"name": "legacy-token", "annotations": {"kubernetes.io/service-account.name": "noisy"}},
        "type": "kubernetes.io/service-account-token",
    }, {"legacy-service-account-token-secrets"})  # fmt: skip
    b.create("Secret", bad, {"metadata": {"name": "opaque"}, "stringData": {"k": "v"}})
    # Pods and workloads: every case in the bad namespace, every kind once compliant.
    for case in POD_CASES:
        spec = good_pod_spec()
        case.mutate(spec)
        b.create(case.kind, bad, pod_manifest(case.kind, case.name, spec, case.annotations), case.violates)
    for kind in ("Pod", *WORKLOAD_KINDS):
        b.create(kind, good, pod_manifest(kind, f"good-{kind.lower()}", good_pod_spec()))
    for kind in ("Pod", "Deployment"):
        b.create(kind, "default", pod_manifest(kind, unique(f"hard-{kind.lower()}"), good_pod_spec()),
                 {"workloads-in-default-namespace"})  # fmt: skip
    pod = b.create("Pod", bad, pod_manifest("Pod", "ephemeral", good_pod_spec()), EPHEMERAL_VIOLATES)
    pod["spec"]["ephemeralContainers"] = [EPHEMERAL]
    admin.request("PUT", f"{collection('Pod', bad)}/ephemeral/ephemeralcontainers", pod)
    # Services.
    port = [{"port": 80, "targetPort": 8080}]
    b.create("Service", bad, {"metadata": {"name": "nodeport"}, "spec": {"type": "NodePort", "ports": port}},
             {"service-nodeport"})  # fmt: skip
    b.create("Service", bad, {"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": port}},
             {"service-loadbalancer"})  # fmt: skip
    b.create("Service", bad, {"metadata": {"name": "external"}, "spec": {"ports": port, "externalIPs": ["203.0.113.10"]}},
             {"service-external-ips"})  # fmt: skip
    b.create("Service", good, {"metadata": {"name": "internal"}, "spec": {"ports": port}})
    # RBAC.
    core = [""]
    b.create("ClusterRole", None, {"metadata": {"name": unique("hard-apps-any")},
             "rules": [_rule(["apps"], ["*"], ["get", "list"])]}, {"clusterrole-wildcard"})  # fmt: skip
    b.create("ClusterRole", None, {"metadata": {"name": unique("hard-secret-reader")},
             "rules": [_rule(core, ["secrets"], ["get", "list"])]}, {"secrets-read-access"})  # fmt: skip
    b.create("ClusterRole", None, {"metadata": {"name": unique("hard-impersonator")},
             "rules": [_rule(core, ["users", "groups"], ["impersonate"])]}, {"rbac-escalation-verbs"})  # fmt: skip
    b.create("ClusterRole", None, {"metadata": {"name": unique("hard-rbac-any")},
             "rules": [_rule(["rbac.authorization.k8s.io"], ["roles", "rolebindings"], ["*"])]},
             {"clusterrole-wildcard", "rbac-escalation-verbs"})  # fmt: skip
    reader = b.create("ClusterRole", None, {"metadata": {"name": unique("hard-reader")},
                      "rules": [_rule(core, ["configmaps", "pods"], ["get", "list", "watch"])]})  # fmt: skip
    b.create("Role", bad, {"metadata": {"name": "cm-any"}, "rules": [_rule(core, ["configmaps"], ["*"])]},
             {"role-wildcard"})  # fmt: skip
    b.create("Role", bad, {"metadata": {"name": "exec"}, "rules": [_rule(core, ["pods/exec"], ["create"])]},
             {"pod-exec-access"})  # fmt: skip
    b.create("Role", good, {"metadata": {"name": "read-cm"}, "rules": [_rule(core, ["configmaps"], ["get"])]})
    user = {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}
    b.create("ClusterRoleBinding", None, {"metadata": {"name": unique("hard-admins")},
             "roleRef": _ref("ClusterRole", "cluster-admin"), "subjects": [user]}, {"cluster-admin-bindings"})  # fmt: skip
    b.create("RoleBinding", bad, {"metadata": {"name": "ns-admin"}, "roleRef": _ref("ClusterRole", "cluster-admin"),
             "subjects": [{**user, "kind": "Group", "name": "devs"}]}, {"cluster-admin-bindings"})  # fmt: skip
    b.create("ClusterRoleBinding", None, {"metadata": {"name": unique("hard-anonymous")},
             "roleRef": _ref("ClusterRole", reader["metadata"]["name"]),
             "subjects": [{**user, "kind": "Group", "name": "system:unauthenticated"}]}, {"anonymous-bindings"})  # fmt: skip
    b.create("RoleBinding", bad, {"metadata": {"name": "default-sa"}, "roleRef": _ref("Role", "cm-any"),
             "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": bad}]},
             {"default-service-account-bindings"})  # fmt: skip
    b.create("RoleBinding", good, {"metadata": {"name": "app"}, "roleRef": _ref("Role", "read-cm"),
             "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": good}]})  # fmt: skip
    return ns, b.cases


def k8s_watcher(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``k8s-watcher`` console script of this environment."""
    exe = Path(sys.executable).parent / "k8s-watcher"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, check=False)
