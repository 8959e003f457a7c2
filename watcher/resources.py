"""The Kubernetes resources k8s-watcher watches, as data.

Adding a kind is one :class:`ResourceDescriptor` entry plus, optionally, the typed
columns users filter on. Nothing else in the code base is written per kind: the
informers, the cache, the Arrow schemas and the CloudQuery tables all derive from
this table. Custom resources get descriptors at run time from their CRDs
(:func:`custom_object_descriptor`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

ColumnType = Literal["string", "int64", "float64", "bool", "json", "timestamp", "string_list", "uuid"]
Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """A typed column extracted from an object when it is written to the cache."""

    name: str
    type: ColumnType
    extract: Callable[[Obj], Any]


def path(*keys: str | int) -> Callable[[Obj], Any]:
    """An extractor that follows ``keys`` through nested dicts/lists; None if absent."""

    def get(obj: Obj) -> Any:
        cur: Any = obj
        for key in keys:
            if isinstance(key, int):
                if not isinstance(cur, list) or len(cur) <= key:
                    return None
                cur = cur[key]
            elif isinstance(cur, Mapping):
                cur = cur.get(key)
            else:
                return None
            if cur is None:
                return None
        return cur

    return get


def each(list_path: Callable[[Obj], Any], item: Callable[[Obj], Any]) -> Callable[[Obj], Any]:
    """An extractor mapping ``item`` over the list found at ``list_path``."""

    def get(obj: Obj) -> Any:
        values = list_path(obj) or []
        return [v for v in (item(x) for x in values if isinstance(x, Mapping)) if v is not None]

    return get


def _containers(obj: Obj) -> list[Obj]:
    spec = obj.get("spec") or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _restart_count(obj: Obj) -> int:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses)


def condition(type_: str) -> Callable[[Obj], bool | None]:
    """An extractor: whether the status condition ``type_`` is True (None if absent)."""

    def get(obj: Obj) -> bool | None:
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if isinstance(cond, Mapping) and cond.get("type") == type_:
                return bool(cond.get("status") == "True")
        return None

    return get


def first_of(*extractors: Callable[[Obj], Any]) -> Callable[[Obj], Any]:
    """An extractor: the first value that is not None among ``extractors``."""

    def get(obj: Obj) -> Any:
        return next((v for v in (x(obj) for x in extractors) if v is not None), None)

    return get


def flat_each(list_path: Callable[[Obj], Any], inner: Callable[[Obj], Any]) -> Callable[[Obj], Any]:
    """An extractor: the lists ``inner`` finds in each item at ``list_path``, concatenated."""

    def get(obj: Obj) -> Any:
        return [v for values in each(list_path, inner)(obj) for v in values]

    return get


@dataclass(frozen=True)
class DerivedTable:
    """Rows derived from each object of a resource (a pod's containers). They are cached
    with the object, in the same transaction, and changed and tombstoned with it."""

    table: str
    #: The cache's resource key of these rows, apart from the parent's own.
    key: str
    description: str
    #: The rows of one (sanitized) object: mappings with a ``uid`` (stable across writes
    #: of the object) and a ``name``, which ``columns`` extract from.
    rows: Callable[[Obj], list[dict[str, Any]]]
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class ResourceDescriptor:
    """One watchable API resource and the CloudQuery table it feeds."""

    table: str
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    columns: tuple[Column, ...] = ()
    #: Watch as PartialObjectMetadata: the object's body never reaches the process.
    metadata_only: bool = False
    #: Custom resource instances share one table; they carry their GVK as columns.
    custom: bool = False
    derived: tuple[DerivedTable, ...] = ()
    #: A field selector every list and watch of it carries: objects nobody queries and
    #: that change all the time stay out of the cache (the nodes' heartbeat Leases).
    field_selector: str = ""
    #: Served with ``list`` but not ``watch`` (computed on each request: component
    #: statuses): its informer polls it (``watcher.polling``) instead of watching.
    list_only: bool = False

    @property
    def key(self) -> str:
        """Unique name of the resource, as kubectl spells it: ``pods``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def collection_path(self) -> str:
        """Path of the cluster-wide collection (all namespaces)."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/{self.plural}"


def _d(
    table: str,
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    columns: tuple[Column, ...] = (),
    metadata_only: bool = False,
    derived: tuple[DerivedTable, ...] = (),
    field_selector: str = "",
    list_only: bool = False,
) -> ResourceDescriptor:
    return ResourceDescriptor(
        table=table,
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        columns=columns,
        metadata_only=metadata_only,
        derived=derived,
        field_selector=field_selector,
        list_only=list_only,
    )


# Typed as ColumnType (not str) so a misspelt column type fails the type check.
S: ColumnType = "string"
INT: ColumnType = "int64"
B: ColumnType = "bool"
J: ColumnType = "json"
T: ColumnType = "timestamp"
SL: ColumnType = "string_list"

CRD = _d(
    "k8s_custom_resources", "apiextensions.k8s.io", "v1", "customresourcedefinitions",
    "CustomResourceDefinition", namespaced=False,
    columns=(
        Column("group", S, path("spec", "group")),
        Column("kind", S, path("spec", "names", "kind")),
        Column("plural", S, path("spec", "names", "plural")),
        Column("scope", S, path("spec", "scope")),
        Column("versions", SL, each(path("spec", "versions"), path("name"))),
        Column("served_versions", SL, each(path("spec", "versions"), lambda v: v.get("name") if v.get("served") else None)),
        Column("storage_version", S, lambda o: next((v.get("name") for v in (o.get("spec") or {}).get("versions") or [] if v.get("storage")), None)),
    ),
)  # fmt: skip

NODES = _d(
    "k8s_nodes", "", "v1", "nodes", "Node", namespaced=False,
    columns=(
        Column("pod_cidr", S, path("spec", "podCIDR")),
        Column("unschedulable", B, path("spec", "unschedulable")),
        Column("capacity_cpu", S, path("status", "capacity", "cpu")),
        Column("capacity_memory", S, path("status", "capacity", "memory")),
        Column("capacity_pods", S, path("status", "capacity", "pods")),
        Column("allocatable_cpu", S, path("status", "allocatable", "cpu")),
        Column("allocatable_memory", S, path("status", "allocatable", "memory")),
        Column("ready", B, condition("Ready")),
        Column("conditions", J, path("status", "conditions")),
        Column("kubelet_version", S, path("status", "nodeInfo", "kubeletVersion")),
        Column("os_image", S, path("status", "nodeInfo", "osImage")),
        Column("internal_ips", SL, each(path("status", "addresses"), lambda a: a.get("address") if a.get("type") == "InternalIP" else None)),
    ),
)  # fmt: skip

_WORKLOAD_REPLICAS = (
    Column("replicas", INT, path("spec", "replicas")),
    Column("ready_replicas", INT, path("status", "readyReplicas")),
    Column("available_replicas", INT, path("status", "availableReplicas")),
    Column("updated_replicas", INT, path("status", "updatedReplicas")),
    Column("selector", J, path("spec", "selector")),
    Column("images", SL, each(lambda o: _containers(path("spec", "template")(o) or {}), path("image"))),
)

#: uuid5 namespace of derived rows' uids.
_DERIVED_UID_NS = uuid.UUID("3b0f1c9e-7d4a-4f6e-9a61-2c5d8e0b4a17")
_CONTAINER_KINDS = (
    ("init", "initContainers", "initContainerStatuses"),
    ("regular", "containers", "containerStatuses"),
    ("ephemeral", "ephemeralContainers", "ephemeralContainerStatuses"),
)


def _pod_containers(pod: Obj) -> list[dict[str, Any]]:
    """One row per init, regular and ephemeral container: its spec, its status, the pod."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    pod_uid = pod["metadata"]["uid"]
    rows = []
    for container_type, spec_key, status_key in _CONTAINER_KINDS:
        statuses = {s.get("name"): s for s in status.get(status_key) or [] if isinstance(s, Mapping)}
        for container in spec.get(spec_key) or []:
            name = str(container.get("name"))
            rows.append({
                "uid": str(uuid.uuid5(_DERIVED_UID_NS, f"{pod_uid}/{container_type}/{name}")),
                "name": name,
                "type": container_type,
                "container": container,
                "status": statuses.get(name) or {},
                "pod": pod,
            })  # fmt: skip
    return rows


def _state(row: Obj) -> str | None:
    """waiting, running or terminated: the key of the container's current state."""
    return next(iter(path("status", "state")(row) or {}), None)


def _state_reason(row: Obj) -> str | None:
    state = _state(row)
    return None if state is None else path("status", "state", state, "reason")(row)


POD_CONTAINERS = DerivedTable(
    table="k8s_pod_containers",
    key="pods/containers",
    description="One row per container (init, regular, ephemeral) of every pod",
    rows=_pod_containers,
    columns=(
        Column("pod_uid", "uuid", path("pod", "metadata", "uid")),
        Column("pod_name", S, path("pod", "metadata", "name")),
        Column("namespace", S, path("pod", "metadata", "namespace")),
        Column("node_name", S, path("pod", "spec", "nodeName")),
        Column("name", S, path("name")),
        Column("container_type", S, path("type")),
        Column("image", S, path("container", "image")),
        Column("image_id", S, path("status", "imageID")),
        Column("ready", B, path("status", "ready")),
        Column("restart_count", INT, path("status", "restartCount")),
        Column("state", S, _state),
        Column("state_reason", S, _state_reason),
        Column("requests_cpu", S, path("container", "resources", "requests", "cpu")),
        Column("requests_memory", S, path("container", "resources", "requests", "memory")),
        Column("limits_cpu", S, path("container", "resources", "limits", "cpu")),
        Column("limits_memory", S, path("container", "resources", "limits", "memory")),
        Column("ports", J, path("container", "ports")),
        Column("privileged", B, path("container", "securityContext", "privileged")),
        # The container's own setting, else the pod's: what the kubelet enforces.
        Column("run_as_non_root", B, first_of(path("container", "securityContext", "runAsNonRoot"),
                                              path("pod", "spec", "securityContext", "runAsNonRoot"))),
        Column("read_only_root_filesystem", B, path("container", "securityContext", "readOnlyRootFilesystem")),
        Column("allow_privilege_escalation", B, path("container", "securityContext", "allowPrivilegeEscalation")),
        Column("pod_created_at", T, path("pod", "metadata", "creationTimestamp")),
    ),
)  # fmt: skip

_WEBHOOKS = (
    Column("webhooks", J, path("webhooks")),
    Column("webhook_names", SL, each(path("webhooks"), path("name"))),
    Column("failure_policies", SL, each(path("webhooks"), path("failurePolicy"))),
)

RESOURCES: tuple[ResourceDescriptor, ...] = (
    _d("k8s_namespaces", "", "v1", "namespaces", "Namespace", namespaced=False,
       columns=(Column("phase", S, path("status", "phase")),)),
    _d("k8s_pods", "", "v1", "pods", "Pod", columns=(
        Column("phase", S, path("status", "phase")),
        Column("node_name", S, path("spec", "nodeName")),
        Column("pod_ip", S, path("status", "podIP")),
        Column("host_ip", S, path("status", "hostIP")),
        Column("service_account_name", S, path("spec", "serviceAccountName")),
        Column("qos_class", S, path("status", "qosClass")),
        Column("images", SL, each(_containers, path("image"))),
        Column("restart_count", INT, _restart_count),
        Column("ready", B, condition("Ready")),
        Column("start_time", T, path("status", "startTime")),
    ), derived=(POD_CONTAINERS,)),
    _d("k8s_deployments", "apps", "v1", "deployments", "Deployment", columns=(
        *_WORKLOAD_REPLICAS,
        Column("strategy", S, path("spec", "strategy", "type")),
        Column("paused", B, path("spec", "paused")),
    )),
    _d("k8s_services", "", "v1", "services", "Service", columns=(
        Column("type", S, path("spec", "type")),
        Column("cluster_ip", S, path("spec", "clusterIP")),
        Column("cluster_ips", SL, path("spec", "clusterIPs")),
        Column("external_ips", SL, path("spec", "externalIPs")),
        Column("load_balancer_ingress", J, path("status", "loadBalancer", "ingress")),
        Column("ports", J, path("spec", "ports")),
        Column("selector", J, path("spec", "selector")),
    )),
    CRD,
    NODES,
    _d("k8s_replicasets", "apps", "v1", "replicasets", "ReplicaSet", columns=_WORKLOAD_REPLICAS),
    _d("k8s_statefulsets", "apps", "v1", "statefulsets", "StatefulSet", columns=(
        *_WORKLOAD_REPLICAS, Column("service_name", S, path("spec", "serviceName")),
    )),
    _d("k8s_daemonsets", "apps", "v1", "daemonsets", "DaemonSet", columns=(
        Column("desired_number_scheduled", INT, path("status", "desiredNumberScheduled")),
        Column("number_ready", INT, path("status", "numberReady")),
        Column("number_available", INT, path("status", "numberAvailable")),
        Column("images", SL, each(lambda o: _containers(path("spec", "template")(o) or {}), path("image"))),
    )),
    _d("k8s_jobs", "batch", "v1", "jobs", "Job", columns=(
        Column("completions", INT, path("spec", "completions")),
        Column("parallelism", INT, path("spec", "parallelism")),
        Column("succeeded", INT, path("status", "succeeded")),
        Column("failed", INT, path("status", "failed")),
        Column("active", INT, path("status", "active")),
        Column("start_time", T, path("status", "startTime")),
        Column("completion_time", T, path("status", "completionTime")),
    )),
    _d("k8s_cronjobs", "batch", "v1", "cronjobs", "CronJob", columns=(
        Column("schedule", S, path("spec", "schedule")),
        Column("suspend", B, path("spec", "suspend")),
        Column("last_schedule_time", T, path("status", "lastScheduleTime")),
    )),
    # ConfigMaps hold configuration, kept whole (Secrets, below, never are).
    _d("k8s_configmaps", "", "v1", "configmaps", "ConfigMap", columns=(
        Column("data_keys", SL, lambda o: sorted((o.get("data") or {}).keys())),
        Column("data", J, path("data")),
        Column("binary_data", J, path("binaryData")),
        Column("immutable", B, path("immutable")),
    )),
    # Secrets: metadata only. The body (data, stringData) is never requested.
    _d("k8s_secrets", "", "v1", "secrets", "Secret", metadata_only=True),
    _d("k8s_serviceaccounts", "", "v1", "serviceaccounts", "ServiceAccount", columns=(
        Column("automount_service_account_token", B, path("automountServiceAccountToken")),
        # References to Secrets (their names), not their content.
        Column("secrets", J, path("secrets")),
        Column("image_pull_secrets", J, path("imagePullSecrets")),
    )),
    _d("k8s_roles", "rbac.authorization.k8s.io", "v1", "roles", "Role", columns=(
        Column("rules", J, path("rules")),
    )),
    _d("k8s_rolebindings", "rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", columns=(
        Column("role_ref", J, path("roleRef")), Column("subjects", J, path("subjects")),
    )),
    _d("k8s_clusterroles", "rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False,
       columns=(Column("rules", J, path("rules")), Column("aggregation_rule", J, path("aggregationRule")))),
    _d("k8s_clusterrolebindings", "rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
       namespaced=False, columns=(Column("role_ref", J, path("roleRef")), Column("subjects", J, path("subjects")))),
    _d("k8s_persistentvolumes", "", "v1", "persistentvolumes", "PersistentVolume", namespaced=False, columns=(
        Column("capacity_storage", S, path("spec", "capacity", "storage")),
        Column("storage_class_name", S, path("spec", "storageClassName")),
        Column("reclaim_policy", S, path("spec", "persistentVolumeReclaimPolicy")),
        Column("phase", S, path("status", "phase")),
        Column("claim_ref", J, path("spec", "claimRef")),
    )),
    _d("k8s_persistentvolumeclaims", "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", columns=(
        Column("storage_class_name", S, path("spec", "storageClassName")),
        Column("volume_name", S, path("spec", "volumeName")),
        Column("requested_storage", S, path("spec", "resources", "requests", "storage")),
        Column("phase", S, path("status", "phase")),
    )),
    _d("k8s_storageclasses", "storage.k8s.io", "v1", "storageclasses", "StorageClass", namespaced=False, columns=(
        Column("provisioner", S, path("provisioner")),
        Column("reclaim_policy", S, path("reclaimPolicy")),
        Column("volume_binding_mode", S, path("volumeBindingMode")),
        Column("parameters", J, path("parameters")),
        Column("mount_options", SL, path("mountOptions")),
        Column("allow_volume_expansion", B, path("allowVolumeExpansion")),
        Column("allowed_topologies", J, path("allowedTopologies")),
    )),
    _d("k8s_ingresses", "networking.k8s.io", "v1", "ingresses", "Ingress", columns=(
        Column("ingress_class_name", S, path("spec", "ingressClassName")),
        Column("hosts", SL, each(path("spec", "rules"), path("host"))),
        Column("load_balancer_ingress", J, path("status", "loadBalancer", "ingress")),
    )),
    _d("k8s_networkpolicies", "networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", columns=(
        Column("pod_selector", J, path("spec", "podSelector")),
        Column("policy_types", SL, path("spec", "policyTypes")),
    )),
    _d("k8s_endpointslices", "discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", columns=(
        Column("address_type", S, path("addressType")),
        Column("endpoints", J, path("endpoints")),
        Column("ports", J, path("ports")),
    )),
    _d("k8s_events", "events.k8s.io", "v1", "events", "Event", columns=(
        Column("reason", S, path("reason")),
        Column("type", S, path("type")),
        Column("note", S, path("note")),
        Column("regarding", J, path("regarding")),
        Column("event_time", T, path("eventTime")),
        Column("reporting_controller", S, path("reportingController")),
        Column("reporting_instance", S, path("reportingInstance")),
        Column("action", S, path("action")),
        Column("related", J, path("related")),
        Column("series", J, path("series")),
        # core/v1's source, firstTimestamp, lastTimestamp and count, as events.k8s.io/v1
        # serves them (what kubelets and older controllers still write).
        Column("deprecated_source", J, path("deprecatedSource")),
        Column("deprecated_first_timestamp", T, path("deprecatedFirstTimestamp")),
        Column("deprecated_last_timestamp", T, path("deprecatedLastTimestamp")),
        Column("deprecated_count", INT, path("deprecatedCount")),
    )),
    _d("k8s_horizontalpodautoscalers", "autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler",
       columns=(
           Column("min_replicas", INT, path("spec", "minReplicas")),
           Column("max_replicas", INT, path("spec", "maxReplicas")),
           Column("current_replicas", INT, path("status", "currentReplicas")),
           Column("desired_replicas", INT, path("status", "desiredReplicas")),
           Column("scale_target_ref", J, path("spec", "scaleTargetRef")),
       )),
    _d("k8s_poddisruptionbudgets", "policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", columns=(
        Column("min_available", S, lambda o: _str(path("spec", "minAvailable")(o))),
        Column("max_unavailable", S, lambda o: _str(path("spec", "maxUnavailable")(o))),
        Column("current_healthy", INT, path("status", "currentHealthy")),
        Column("disruptions_allowed", INT, path("status", "disruptionsAllowed")),
    )),
    # Every node renews a Lease in kube-node-lease every 10 s: on a busy 500-node cluster
    # 30 % of all watch events (91 % when quiet) and 500 rows in every incremental sync,
    # for a heartbeat that k8s_nodes' conditions already report. Left out (BENCHMARKS.md).
    _d("k8s_leases", "coordination.k8s.io", "v1", "leases", "Lease", columns=(
        Column("holder_identity", S, path("spec", "holderIdentity")),
        Column("renew_time", T, path("spec", "renewTime")),
    ), field_selector="metadata.namespace!=kube-node-lease"),
    # -- core kinds the official plugin also has
    _d("k8s_endpoints", "", "v1", "endpoints", "Endpoints", columns=(
        Column("subsets", J, path("subsets")),
        Column("addresses", SL, flat_each(path("subsets"), each(path("addresses"), path("ip")))),
        Column("not_ready_addresses", SL, flat_each(path("subsets"), each(path("notReadyAddresses"), path("ip")))),
    )),
    _d("k8s_limitranges", "", "v1", "limitranges", "LimitRange", columns=(
        Column("limits", J, path("spec", "limits")),
        Column("limit_types", SL, each(path("spec", "limits"), path("type"))),
    )),
    _d("k8s_resourcequotas", "", "v1", "resourcequotas", "ResourceQuota", columns=(
        Column("hard", J, path("spec", "hard")),
        Column("used", J, path("status", "used")),
        Column("scopes", SL, path("spec", "scopes")),
    )),
    _d("k8s_podtemplates", "", "v1", "podtemplates", "PodTemplate", columns=(
        Column("template", J, path("template")),
        Column("images", SL, each(lambda o: _containers(path("template")(o) or {}), path("image"))),
    )),
    _d("k8s_replicationcontrollers", "", "v1", "replicationcontrollers", "ReplicationController",
       columns=_WORKLOAD_REPLICAS),
    # Deprecated since 1.19 but served: the API server checks its scheduler, controller
    # manager and etcd on each LIST. Nothing to watch, so polled; the objects have no uid
    # and no resourceVersion, which the poller derives (watcher.polling).
    _d("k8s_componentstatuses", "", "v1", "componentstatuses", "ComponentStatus", namespaced=False,
       columns=(Column("conditions", J, path("conditions")),), list_only=True),
    # -- admission
    _d("k8s_mutatingwebhookconfigurations", "admissionregistration.k8s.io", "v1",
       "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", namespaced=False, columns=_WEBHOOKS),
    _d("k8s_validatingwebhookconfigurations", "admissionregistration.k8s.io", "v1",
       "validatingwebhookconfigurations", "ValidatingWebhookConfiguration", namespaced=False, columns=_WEBHOOKS),
    _d("k8s_validatingadmissionpolicies", "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies",
       "ValidatingAdmissionPolicy", namespaced=False, columns=(
           Column("failure_policy", S, path("spec", "failurePolicy")),
           Column("param_kind", J, path("spec", "paramKind")),
           Column("match_constraints", J, path("spec", "matchConstraints")),
           Column("validations", J, path("spec", "validations")),
       )),
    _d("k8s_validatingadmissionpolicybindings", "admissionregistration.k8s.io", "v1",
       "validatingadmissionpolicybindings", "ValidatingAdmissionPolicyBinding", namespaced=False, columns=(
           Column("policy_name", S, path("spec", "policyName")),
           Column("validation_actions", SL, path("spec", "validationActions")),
           Column("param_ref", J, path("spec", "paramRef")),
           Column("match_resources", J, path("spec", "matchResources")),
       )),
    # -- certificates, networking, nodes, scheduling
    _d("k8s_certificatesigningrequests", "certificates.k8s.io", "v1", "certificatesigningrequests",
       "CertificateSigningRequest", namespaced=False, columns=(
           Column("signer_name", S, path("spec", "signerName")),
           Column("username", S, path("spec", "username")),
           Column("groups", SL, path("spec", "groups")),
           Column("usages", SL, path("spec", "usages")),
           Column("expiration_seconds", INT, path("spec", "expirationSeconds")),
           Column("approved", B, condition("Approved")),
           Column("denied", B, condition("Denied")),
           Column("certificate_issued", B, lambda o: bool(path("status", "certificate")(o))),
       )),
    _d("k8s_ingressclasses", "networking.k8s.io", "v1", "ingressclasses", "IngressClass", namespaced=False,
       columns=(
           Column("controller", S, path("spec", "controller")),
           Column("is_default", B, lambda o: path("metadata", "annotations", "ingressclass.kubernetes.io/is-default-class")(o) == "true"),
           Column("parameters", J, path("spec", "parameters")),
       )),
    _d("k8s_runtimeclasses", "node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", namespaced=False, columns=(
        Column("handler", S, path("handler")),
        Column("overhead", J, path("overhead")),
        Column("scheduling", J, path("scheduling")),
    )),
    _d("k8s_priorityclasses", "scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", namespaced=False,
       columns=(
           Column("value", INT, path("value")),
           Column("global_default", B, path("globalDefault")),
           Column("preemption_policy", S, path("preemptionPolicy")),
           Column("description", S, path("description")),
       )),
    # -- storage
    _d("k8s_csidrivers", "storage.k8s.io", "v1", "csidrivers", "CSIDriver", namespaced=False, columns=(
        Column("attach_required", B, path("spec", "attachRequired")),
        Column("pod_info_on_mount", B, path("spec", "podInfoOnMount")),
        Column("storage_capacity", B, path("spec", "storageCapacity")),
        Column("requires_republish", B, path("spec", "requiresRepublish")),
        Column("fs_group_policy", S, path("spec", "fsGroupPolicy")),
        Column("volume_lifecycle_modes", SL, path("spec", "volumeLifecycleModes")),
    )),
    _d("k8s_csinodes", "storage.k8s.io", "v1", "csinodes", "CSINode", namespaced=False, columns=(
        Column("drivers", J, path("spec", "drivers")),
        Column("driver_names", SL, each(path("spec", "drivers"), path("name"))),
    )),
    _d("k8s_csistoragecapacities", "storage.k8s.io", "v1", "csistoragecapacities", "CSIStorageCapacity",
       columns=(
           Column("storage_class_name", S, path("storageClassName")),
           Column("capacity", S, path("capacity")),
           Column("maximum_volume_size", S, path("maximumVolumeSize")),
           Column("node_topology", J, path("nodeTopology")),
       )),
    _d("k8s_volumeattachments", "storage.k8s.io", "v1", "volumeattachments", "VolumeAttachment",
       namespaced=False, columns=(
           Column("attacher", S, path("spec", "attacher")),
           Column("node_name", S, path("spec", "nodeName")),
           Column("persistent_volume_name", S, path("spec", "source", "persistentVolumeName")),
           Column("attached", B, path("status", "attached")),
           Column("attach_error", J, path("status", "attachError")),
       )),
    # -- the API server itself
    _d("k8s_apiservices", "apiregistration.k8s.io", "v1", "apiservices", "APIService", namespaced=False,
       columns=(
           Column("group", S, path("spec", "group")),
           Column("version", S, path("spec", "version")),
           Column("service", J, path("spec", "service")),
           Column("insecure_skip_tls_verify", B, path("spec", "insecureSkipTLSVerify")),
           Column("group_priority_minimum", INT, path("spec", "groupPriorityMinimum")),
           Column("version_priority", INT, path("spec", "versionPriority")),
           Column("available", B, condition("Available")),
       )),
    _d("k8s_flowschemas", "flowcontrol.apiserver.k8s.io", "v1", "flowschemas", "FlowSchema", namespaced=False,
       columns=(
           Column("priority_level", S, path("spec", "priorityLevelConfiguration", "name")),
           Column("matching_precedence", INT, path("spec", "matchingPrecedence")),
           Column("distinguisher_method", S, path("spec", "distinguisherMethod", "type")),
           Column("rules", J, path("spec", "rules")),
       )),
    _d("k8s_prioritylevelconfigurations", "flowcontrol.apiserver.k8s.io", "v1", "prioritylevelconfigurations",
       "PriorityLevelConfiguration", namespaced=False, columns=(
           Column("type", S, path("spec", "type")),
           Column("nominal_concurrency_shares", INT, first_of(path("spec", "limited", "nominalConcurrencyShares"),
                                                              path("spec", "exempt", "nominalConcurrencyShares"))),
           Column("lendable_percent", INT, first_of(path("spec", "limited", "lendablePercent"),
                                                    path("spec", "exempt", "lendablePercent"))),
           Column("limit_response", J, path("spec", "limited", "limitResponse")),
       )),
    # -- dynamic resource allocation (resource.k8s.io)
    _d("k8s_deviceclasses", "resource.k8s.io", "v1", "deviceclasses", "DeviceClass", namespaced=False, columns=(
        Column("selectors", J, path("spec", "selectors")),
        Column("config", J, path("spec", "config")),
        Column("extended_resource_name", S, path("spec", "extendedResourceName")),
    )),
    _d("k8s_resourceclaims", "resource.k8s.io", "v1", "resourceclaims", "ResourceClaim", columns=(
        Column("requests", J, path("spec", "devices", "requests")),
        Column("device_class_names", SL, each(path("spec", "devices", "requests"), path("exactly", "deviceClassName"))),
        Column("allocated", B, lambda o: path("status", "allocation")(o) is not None),
        Column("allocated_devices", J, path("status", "allocation", "devices", "results")),
        Column("reserved_for", J, path("status", "reservedFor")),
    )),
    _d("k8s_resourceclaimtemplates", "resource.k8s.io", "v1", "resourceclaimtemplates", "ResourceClaimTemplate",
       columns=(
           Column("requests", J, path("spec", "spec", "devices", "requests")),
           Column("device_class_names", SL,
                  each(path("spec", "spec", "devices", "requests"), path("exactly", "deviceClassName"))),
       )),
    _d("k8s_resourceslices", "resource.k8s.io", "v1", "resourceslices", "ResourceSlice", namespaced=False,
       columns=(
           Column("driver", S, path("spec", "driver")),
           Column("pool_name", S, path("spec", "pool", "name")),
           Column("node_name", S, path("spec", "nodeName")),
           Column("all_nodes", B, path("spec", "allNodes")),
           Column("device_names", SL, each(path("spec", "devices"), path("name"))),
       )),
)  # fmt: skip


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


CUSTOM_OBJECTS_TABLE = "k8s_custom_objects"

#: Top-level fields of an object besides these go to the ``fields`` column of a
#: discovered resource's table (``watcher.discovery``): its typed columns, generically.
_ENVELOPE = ("apiVersion", "kind", "metadata", "spec", "status")
DISCOVERED_COLUMNS = (
    Column("fields", J, lambda o: {k: v for k, v in o.items() if k not in _ENVELOPE} or None),
)


def custom_object_columns(resource_key: str) -> tuple[Column, ...]:
    """Columns of ``k8s_custom_objects``: which custom resource a row is an instance of."""
    return (
        Column("resource", S, lambda _obj: resource_key),
        Column("group", S, lambda o: str(o.get("apiVersion", "")).rpartition("/")[0]),
        Column("version", S, lambda o: str(o.get("apiVersion", "")).rpartition("/")[2]),
        Column("kind", S, path("kind")),
    )


BY_KEY: dict[str, ResourceDescriptor] = {d.key: d for d in RESOURCES}
BY_TABLE: dict[str, ResourceDescriptor] = {d.table: d for d in RESOURCES}
#: Derived tables by name, with the resource whose objects they come from.
DERIVED_BY_TABLE: dict[str, tuple[ResourceDescriptor, DerivedTable]] = {
    x.table: (d, x) for d in RESOURCES for x in d.derived
}


def custom_object_descriptor(crd_row: Mapping[str, Any]) -> ResourceDescriptor | None:
    """The descriptor for instances of a CRD, from its cached ``k8s_custom_resources`` row.

    The version watched is the storage version when it is served (what the API server
    stores, so no conversion webhook is involved), else the first served one.
    """
    served = list(crd_row.get("served_versions") or [])
    if not served:
        return None
    storage = crd_row.get("storage_version")
    version = storage if storage in served else served[0]
    return _custom_descriptor(
        str(crd_row["group"]),
        str(version),
        str(crd_row["plural"]),
        str(crd_row["kind"]),
        crd_row.get("scope") == "Namespaced",
    )


@functools.lru_cache(maxsize=1 << 16)
def _custom_descriptor(
    group: str, version: str, plural: str, kind: str, namespaced: bool
) -> ResourceDescriptor:
    """One descriptor per CRD version for every context that serves it: a fleet's
    contexts mostly run the same operators."""
    return ResourceDescriptor(
        table=CUSTOM_OBJECTS_TABLE,
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        columns=custom_object_columns(f"{plural}.{group}"),
        custom=True,
    )
