"""The Kubernetes resources k8s-watcher watches, as data.

Adding a kind is one :class:`ResourceDescriptor` entry plus, optionally, the typed
columns users filter on. Nothing else in the code base is written per kind: the
informers, the cache, the Arrow schemas and the CloudQuery tables all derive from
this table. Custom resources get descriptors at run time from their CRDs
(:func:`custom_object_descriptor`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

ColumnType = Literal["string", "int64", "bool", "json", "timestamp", "string_list"]
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


def _ready_condition(obj: Obj) -> bool | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return None


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
    )


S, INT, B, J, T, SL = "string", "int64", "bool", "json", "timestamp", "string_list"

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
        Column("ready", B, _ready_condition),
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
        Column("ready", B, _ready_condition),
        Column("start_time", T, path("status", "startTime")),
    )),
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
    _d("k8s_configmaps", "", "v1", "configmaps", "ConfigMap", columns=(
        Column("data_keys", SL, lambda o: sorted((o.get("data") or {}).keys())),
    )),
    # Secrets: metadata only. The body (data, stringData) is never requested.
    _d("k8s_secrets", "", "v1", "secrets", "Secret", metadata_only=True),
    _d("k8s_serviceaccounts", "", "v1", "serviceaccounts", "ServiceAccount", columns=(
        Column("automount_service_account_token", B, path("automountServiceAccountToken")),
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
    _d("k8s_leases", "coordination.k8s.io", "v1", "leases", "Lease", columns=(
        Column("holder_identity", S, path("spec", "holderIdentity")),
        Column("renew_time", T, path("spec", "renewTime")),
    )),
)  # fmt: skip


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


CUSTOM_OBJECTS_TABLE = "k8s_custom_objects"


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
    return ResourceDescriptor(
        table=CUSTOM_OBJECTS_TABLE,
        group=str(crd_row["group"]),
        version=str(version),
        plural=str(crd_row["plural"]),
        kind=str(crd_row["kind"]),
        namespaced=crd_row.get("scope") == "Namespaced",
        columns=custom_object_columns(f"{crd_row['plural']}.{crd_row['group']}"),
        custom=True,
    )
