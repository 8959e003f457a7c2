"""Writes ``watcher/compat/sql/*.sql``: one SELECT per table of CloudQuery's official
Kubernetes source v6.2.4, over this project's tables. A development tool, run when the
mapping changes (the .sql files are committed; installing reads only them)::

    .venv/bin/python -m watcher.compat.generate [--tarball PATH] [--k8s-api DIR]

Why generated: the official tables are its Go structs flattened by CloudQuery's
transformer (``spec``/``status`` unwrapped one level, everything else a column of its
own), 43 tables and about 900 columns. Their names and Arrow types come from the
plugin's own ``docs/tables`` (in the pinned tarball); the JSON key of each column, and
whether its Go field is a pointer, a slice, a map or a value (the SDK writes a value's
zero, ``''``/``0``/``false``/``{}``/``[]``, where the object has nothing), come from the
``k8s.io/api`` v0.29.1 source the plugin was built with (the Go module cache). Where
this project's table keeps a field as a typed column rather than in ``spec``/``status``,
the column is found by probing its extractor.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from watcher.compat import SQL_DIR
from watcher.resources import BY_TABLE, Column

PLUGIN_DIR = "cloudquery-k8s-source-v6.2.4/plugins/source/k8s/"
DEFAULT_TARBALL = Path(__file__).resolve().parents[3] / "shared/third_party/cloudquery/cloudquery-src.tar.gz"

#: official table -> (this project's table, Go package under k8s.io/api, Go type).
TABLES: dict[str, tuple[str, str, str]] = {
    "k8s_admissionregistration_mutating_webhook_configurations": (
        "k8s_mutatingwebhookconfigurations", "admissionregistration/v1", "MutatingWebhookConfiguration"),
    "k8s_admissionregistration_validating_webhook_configurations": (
        "k8s_validatingwebhookconfigurations", "admissionregistration/v1", "ValidatingWebhookConfiguration"),
    "k8s_apps_daemon_sets": ("k8s_daemonsets", "apps/v1", "DaemonSet"),
    "k8s_apps_deployments": ("k8s_deployments", "apps/v1", "Deployment"),
    "k8s_apps_replica_sets": ("k8s_replicasets", "apps/v1", "ReplicaSet"),
    "k8s_apps_stateful_sets": ("k8s_statefulsets", "apps/v1", "StatefulSet"),
    "k8s_autoscaling_hpas": ("k8s_horizontalpodautoscalers", "autoscaling/v1", "HorizontalPodAutoscaler"),
    "k8s_batch_cron_jobs": ("k8s_cronjobs", "batch/v1", "CronJob"),
    "k8s_batch_jobs": ("k8s_jobs", "batch/v1", "Job"),
    "k8s_certificates_signing_requests": (
        "k8s_certificatesigningrequests", "certificates/v1", "CertificateSigningRequest"),
    "k8s_coordination_leases": ("k8s_leases", "coordination/v1", "Lease"),
    "k8s_core_component_statuses": ("k8s_componentstatuses", "core/v1", "ComponentStatus"),
    "k8s_core_config_maps": ("k8s_configmaps", "core/v1", "ConfigMap"),
    "k8s_core_endpoints": ("k8s_endpoints", "core/v1", "Endpoints"),
    "k8s_core_events": ("k8s_events", "core/v1", "Event"),
    "k8s_core_limit_ranges": ("k8s_limitranges", "core/v1", "LimitRange"),
    "k8s_core_namespaces": ("k8s_namespaces", "core/v1", "Namespace"),
    "k8s_core_nodes": ("k8s_nodes", "core/v1", "Node"),
    "k8s_core_pod_templates": ("k8s_podtemplates", "core/v1", "PodTemplate"),
    "k8s_core_pods": ("k8s_pods", "core/v1", "Pod"),
    "k8s_core_pvcs": ("k8s_persistentvolumeclaims", "core/v1", "PersistentVolumeClaim"),
    "k8s_core_pvs": ("k8s_persistentvolumes", "core/v1", "PersistentVolume"),
    "k8s_core_replication_controllers": ("k8s_replicationcontrollers", "core/v1", "ReplicationController"),
    "k8s_core_resource_quotas": ("k8s_resourcequotas", "core/v1", "ResourceQuota"),
    "k8s_core_secrets": ("k8s_secrets", "core/v1", "Secret"),
    "k8s_core_service_accounts": ("k8s_serviceaccounts", "core/v1", "ServiceAccount"),
    "k8s_core_services": ("k8s_services", "core/v1", "Service"),
    "k8s_crds": ("k8s_custom_resources", "apiextensions/v1", "CustomResourceDefinition"),
    "k8s_discovery_endpoint_slices": ("k8s_endpointslices", "discovery/v1", "EndpointSlice"),
    "k8s_networking_ingress_classes": ("k8s_ingressclasses", "networking/v1", "IngressClass"),
    "k8s_networking_ingresses": ("k8s_ingresses", "networking/v1", "Ingress"),
    "k8s_networking_network_policies": ("k8s_networkpolicies", "networking/v1", "NetworkPolicy"),
    "k8s_nodes_runtime_classes": ("k8s_runtimeclasses", "node/v1", "RuntimeClass"),
    "k8s_policy_pod_disruption_budgets": ("k8s_poddisruptionbudgets", "policy/v1", "PodDisruptionBudget"),
    "k8s_rbac_cluster_role_bindings": ("k8s_clusterrolebindings", "rbac/v1", "ClusterRoleBinding"),
    "k8s_rbac_cluster_roles": ("k8s_clusterroles", "rbac/v1", "ClusterRole"),
    "k8s_rbac_role_bindings": ("k8s_rolebindings", "rbac/v1", "RoleBinding"),
    "k8s_rbac_roles": ("k8s_roles", "rbac/v1", "Role"),
    "k8s_storage_csi_drivers": ("k8s_csidrivers", "storage/v1", "CSIDriver"),
    "k8s_storage_csi_nodes": ("k8s_csinodes", "storage/v1", "CSINode"),
    "k8s_storage_csi_storage_capacities": ("k8s_csistoragecapacities", "storage/v1", "CSIStorageCapacity"),
    "k8s_storage_storage_classes": ("k8s_storageclasses", "storage/v1", "StorageClass"),
    "k8s_storage_volume_attachments": ("k8s_volumeattachments", "storage/v1", "VolumeAttachment"),
}  # fmt: skip

#: Arrow type in the plugin's docs -> PostgreSQL type the destination v8.16.0 creates.
PG_TYPES = {
    "utf8": "text",
    "int64": "bigint",
    "bool": "boolean",
    "json": "jsonb",
    "timestamp[us, tz=UTC]": "timestamp",
    "list<item: utf8, nullable>": "text[]",
    "inet": "inet",
    "list<item: inet, nullable>": "inet[]",
    "binary": "bytea",
    "uuid": "uuid",
}

#: Columns whose value this project does not have: what the view gives instead is NULL
#: (a justified difference in docs/compat.md): Secrets are cached as metadata only.
NOT_KEPT: dict[str, set[str]] = {"k8s_core_secrets": {"immutable", "type"}}

#: Fields this project's object has under another JSON key (official table -> the
#: official object's key -> ours). core/v1 Events are served by this project as
#: events.k8s.io/v1, which keeps core/v1's own fields under ``deprecated*`` names.
RENAMED: dict[str, dict[str, str]] = {
    "k8s_core_events": {
        "source": "deprecatedSource",
        "firstTimestamp": "deprecatedFirstTimestamp",
        "lastTimestamp": "deprecatedLastTimestamp",
        "count": "deprecatedCount",
    },
}

#: Columns computed another way than "the JSON key of the same name" (official -> SQL).
#: core/v1 Events are served by this project as events.k8s.io/v1 (the same objects);
#: autoscaling/v1 HPAs as autoscaling/v2 (v1's CPU target is v2's CPU Utilization metric);
#: IPs go through the plugin's resolvers ('' and 'None' are NULL).
_CPU_TARGET = (
    "(SELECT (m->'resource'->'target'->>'averageUtilization')::bigint FROM jsonb_array_elements("
    "CASE jsonb_typeof({0}) WHEN 'array' THEN {0} ELSE '[]' END) m"
    " WHERE m->>'type' = 'Resource' AND m->'resource'->>'name' = 'cpu'"
    " AND m->'resource'->'target'->>'type' = 'Utilization' LIMIT 1)"
)
_CPU_CURRENT = (
    "(SELECT (m->'resource'->'current'->>'averageUtilization')::bigint FROM jsonb_array_elements("
    "CASE jsonb_typeof({0}) WHEN 'array' THEN {0} ELSE '[]' END) m"
    " WHERE m->>'type' = 'Resource' AND m->'resource'->>'name' = 'cpu' LIMIT 1)"
)
SPECIAL: dict[str, dict[str, str]] = {
    "k8s_core_events": {
        "involved_object": "regarding",
        "message": "COALESCE(note, '')",
        "reason": "COALESCE(reason, '')",
        "type": "COALESCE(type, '')",
        "event_time": "COALESCE(to_jsonb(to_char(event_time, 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')), 'null')",
        "reporting_component": "COALESCE(reporting_controller, '')",
    },
    "k8s_autoscaling_hpas": {
        "spec_target_cpu_utilization_percentage": _CPU_TARGET.format("spec->'metrics'"),
        "status_current_cpu_utilization_percentage": _CPU_CURRENT.format("status->'currentMetrics'"),
    },
    "k8s_core_pods": {
        "status_host_ip": "NULLIF(NULLIF(status->>'hostIP', ''), 'None')",
        "status_pod_ip": "NULLIF(NULLIF(status->>'podIP', ''), 'None')",
        "status_pod_ips": "ARRAY(SELECT (p->>'ip')::inet FROM jsonb_array_elements("
        "COALESCE(status->'podIPs', '[]')) WITH ORDINALITY AS e(p, i) ORDER BY i)",
    },
    "k8s_core_nodes": {
        "spec_pod_cidr": "NULLIF(spec->>'podCIDR', '')::cidr",
    },
    # Computed on each request, served without uid and resourceVersion: '' as the official
    # plugin stores them (k8s-watcher's table has its own derived ones, watcher.polling).
    "k8s_core_component_statuses": {"uid": "''::text", "resource_version": "''::text"},
}


@dataclass(frozen=True)
class GoField:
    name: str
    type: str
    json: str  # "" for an inline embedded struct


_STRUCT = re.compile(r"^type (\w+) struct \{\n(.*?)^\}", re.M | re.S)
_FIELD = re.compile(r"^\t(?:(\w+)\s+)?([*\[\]\w.]+(?:\[[\w.]+\][*\w.]+)?)\s+`json:\"([^\",]*)[^`]*`", re.M)
_NAMED = re.compile(r"^type (\w+) (map\[|\[\]|\w+$)", re.M)


def go_package(api_dir: Path, package: str) -> tuple[dict[str, list[GoField]], dict[str, str]]:
    """Structs (field name, Go type, JSON key) and named non-struct types of a package."""
    base = api_dir / package
    if package.startswith("apiextensions"):
        base = (
            api_dir.parent / api_dir.name.replace("api@", "apiextensions-apiserver@") / "pkg/apis" / package
        )
    text = "\n".join(p.read_text() for p in sorted(base.glob("types*.go")) if "swagger" not in p.name)
    structs: dict[str, list[GoField]] = {}
    for name, body in _STRUCT.findall(text):
        fields = []
        for field, type_, key in _FIELD.findall(body):
            fields.append(GoField(field or type_.split(".")[-1], type_, key))
        structs[name] = fields
    named = {name: kind for name, kind in _NAMED.findall(text)}
    return structs, named


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def _go_kind(type_: str, named: dict[str, str]) -> str:
    """pointer, slice, map, time, or value."""
    if type_.startswith("*"):
        return "pointer"
    if type_.startswith("[]"):
        return "slice"
    if type_.startswith("map["):
        return "map"
    base = type_.split(".")[-1]
    if base in ("Time",):
        return "time"
    kind = named.get(base, "")
    return {"map[": "map", "[]": "slice"}.get(kind, "value")


#: Go types holding an ObjectMeta whose ``creationTimestamp`` the plugin's v0.29.1 structs
#: write as null and newer API servers leave out: the paths of those metadata objects.
_TEMPLATE_METADATA = {
    "PodTemplateSpec": ("metadata",),
    "JobTemplateSpec": ("metadata", "spec,template,metadata"),
    "PersistentVolumeClaim": ("metadata",),
}


def with_null_creation(value: str, go_type: str) -> str:
    """``value`` with ``creationTimestamp: null`` in each embedded template's metadata (in
    each element, for a list of templates), as the plugin's Go structs serialize it."""
    base = go_type.lstrip("*[]").split(".")[-1]
    paths = _TEMPLATE_METADATA.get(base)
    if not paths:
        return value

    def fill(v: str) -> str:
        out = v
        for path in paths:
            at = f"'{{{path},creationTimestamp}}'"
            out = f"jsonb_set({out}, {at}, COALESCE({v} #> {at}, 'null'))"
        return out

    if go_type.startswith("[]"):
        return (
            f"(SELECT jsonb_agg({fill('t')} ORDER BY i) FROM jsonb_array_elements("
            f"CASE jsonb_typeof({value}) WHEN 'array' THEN {value} ELSE '[]' END) WITH ORDINALITY AS a(t, i))"
        )
    return fill(value)


def convert(value: str, pg_type: str, go_kind: str) -> str:
    """SQL turning the jsonb ``value`` into the official column's value."""
    scalar = f"({value} #>> '{{}}')"
    zero = go_kind == "value"
    if pg_type == "text":
        return f"COALESCE({scalar}, '')" if zero else scalar
    if pg_type == "bigint":
        return f"COALESCE({scalar}::bigint, 0)" if zero else f"{scalar}::bigint"
    if pg_type == "boolean":
        return f"COALESCE({scalar}::boolean, false)" if zero else f"{scalar}::boolean"
    if pg_type == "timestamp":
        # A metav1.Time value (not a pointer) is Go's zero time when unset, as the SDK writes it.
        at = f"{scalar}::timestamptz AT TIME ZONE 'UTC'"
        return f"COALESCE({at}, '0001-01-01 00:00:00')" if go_kind == "time" else at
    if pg_type == "text[]":
        return (
            f"CASE WHEN jsonb_typeof({value}) = 'array' THEN ARRAY(SELECT e FROM jsonb_array_elements_text({value})"
            " WITH ORDINALITY AS a(e, i) ORDER BY i) END"
        )
    if pg_type == "inet":
        return f"NULLIF(NULLIF({scalar}, ''), 'None')"
    if pg_type == "inet[]":
        return (
            f"CASE WHEN jsonb_typeof({value}) = 'array' THEN ARRAY(SELECT NULLIF(NULLIF(e, ''), 'None')::inet"
            f" FROM jsonb_array_elements_text({value}) WITH ORDINALITY AS a(e, i) ORDER BY i) ELSE '{{}}' END"
        )
    if pg_type == "bytea":
        return f"decode({scalar}, 'base64')"
    if pg_type == "jsonb":
        default = {"map": "'{}'", "slice": "'[]'", "value": "'{}'"}.get(go_kind)
        return f"COALESCE({value}, {default})" if default else value
    raise ValueError(f"no conversion to {pg_type}")


_PROBE = object()


def typed_column(table: str, key: str) -> Column | None:
    """This project's column of ``table`` that holds the top-level field ``key`` as is."""
    for column in BY_TABLE[table].columns:
        try:
            if column.extract({"metadata": {}, key: _PROBE}) is _PROBE:
                return column
        except (AttributeError, TypeError, KeyError):
            continue
    return None


def _as_jsonb(column: Column) -> str:
    return column.name if column.type == "json" else f"to_jsonb({column.name})"


_METADATA = {
    "context": "context_name",
    "kind": "''::text",
    "api_version": "''::text",
    "name": "COALESCE(name, '')",
    "namespace": "COALESCE(namespace, '')",
    "uid": "uid::text",
    "resource_version": "COALESCE(resource_version, '')",
    "generation": "COALESCE(generation, 0)",
    "deletion_grace_period_seconds": "deletion_grace_period_seconds",
    "labels": "COALESCE(labels, '{}')",
    "annotations": "COALESCE(annotations, '{}')",
    "owner_references": "COALESCE(owner_references, '[]')",
    "finalizers": "finalizers",
    "_cq_id": "md5(context_name || '/' || uid::text)",
    "_cq_parent_id": "NULL::uuid",
}


def view_sql(official: str, columns: list[tuple[str, str]], api_dir: Path) -> str:
    """The SELECT of one compat view (columns in the official order, official types)."""
    ours, package, go_type = TABLES[official]
    structs, named = go_package(api_dir, package)
    top = {f.name: f for f in structs[go_type]}
    by_column: dict[str, tuple[str, GoField]] = {}
    for part in ("Spec", "Status"):
        if part in top:
            for field in structs[top[part].type.split(".")[-1]]:
                by_column[f"{part.lower()}_{_norm(field.name)}"] = (part.lower(), field)
    for field in top.values():
        if field.name not in ("Spec", "Status", "TypeMeta", "ObjectMeta"):
            by_column[_norm(field.name)] = ("", field)
    not_kept = NOT_KEPT.get(official, set())
    special = SPECIAL.get(official, {})
    select = ["_cq_sync_time", "_cq_source_name"]
    names = ["_cq_sync_time", "_cq_source_name"]
    for name, arrow in columns:
        if name in ("_cq_source_name", "_cq_sync_time"):
            continue
        pg_type = PG_TYPES[arrow]
        if name in not_kept:
            expr = f"NULL::{pg_type}"
        elif name in special:
            expr = special[name]
        elif name in _METADATA:
            expr = _METADATA[name]
        else:
            prefix, _, rest = name.partition("_")
            key = (
                f"{prefix}_{_norm(rest)}"
                if prefix in ("spec", "status") and f"{prefix}_{_norm(rest)}" in by_column
                else _norm(name)
            )
            if key not in by_column:
                raise KeyError(f"{official}.{name}: no Go field")
            part, field = by_column[key]
            kind = _go_kind(field.type, named)
            if part and field.json:
                value = f"{part}->'{field.json}'"
            elif part:  # an inline struct: its fields are the part's keys
                inner = structs[field.type.split(".")[-1]]
                keys = ", ".join(f"'{f.json}'" for f in inner)
                value = (
                    f"(SELECT jsonb_object_agg(k, v) FROM jsonb_each({part}) AS e(k, v) WHERE k IN ({keys}))"
                )
            else:
                our_key = RENAMED.get(official, {}).get(field.json, field.json)
                column = typed_column(ours, our_key)
                if column is None:
                    raise KeyError(f"{official}.{name}: {ours} has no column for {our_key!r}")
                value = _as_jsonb(column)
            if pg_type == "jsonb":
                value = with_null_creation(value, field.type)
            expr = convert(value, pg_type, kind)
        bare = re.fullmatch(r"NULL::[\w\[\]]+|\w+|\w+::" + re.escape(pg_type), expr)
        select.append(expr if bare else f"({expr})::{pg_type}")
        names.append(name)
    lines = ",\n".join(f"  {expr} AS {name}" for expr, name in zip(select, names, strict=True))
    header = f"-- {official}: the official CloudQuery k8s source v6.2.4's table, over {ours}\n"
    return f"{header}SELECT\n{lines}\nFROM {ours}\n"


def official_columns(tarball: Path) -> dict[str, list[tuple[str, str]]]:
    """Each official table's (column, Arrow type), from the plugin's docs/tables."""
    row = re.compile(r"^\|([a-z_0-9]+)(?: \(PK\))?\|`([^`]+)`\|$")
    out: dict[str, list[tuple[str, str]]] = {}
    with tarfile.open(tarball) as tar:
        for member in tar:
            _, _, name = member.name.partition("/")
            match = re.fullmatch(re.escape(PLUGIN_DIR) + r"docs/tables/(k8s_\w+)\.md", name)
            handle = tar.extractfile(member) if match else None
            if match and handle is not None:
                lines = handle.read().decode().splitlines()
                out[match.group(1)] = [(m.group(1), m.group(2)) for m in map(row.match, lines) if m]
    return out


def default_api_dir() -> Path:
    """k8s.io/api v0.29.1 in the Go module cache (the official plugin's build puts it there)."""
    cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout
    return Path(cache.strip()) / "k8s.io/api@v0.29.1"


def generate(out: Path, tarball: Path = DEFAULT_TARBALL, api_dir: Path | None = None) -> int:
    """Write every view's SQL into ``out``; returns how many."""
    tables = official_columns(tarball)
    if set(tables) != set(TABLES):
        raise ValueError(f"the plugin's tables and TABLES differ: {sorted(set(tables) ^ set(TABLES))}")
    out.mkdir(parents=True, exist_ok=True)
    for official, columns in sorted(tables.items()):
        (out / f"{official}.sql").write_text(view_sql(official, columns, api_dir or default_api_dir()))
    return len(tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", type=Path, default=DEFAULT_TARBALL)
    parser.add_argument("--k8s-api", type=Path, help="k8s.io/api@v0.29.1 (default: from the Go module cache)")
    parser.add_argument("--out", type=Path, default=SQL_DIR)
    args = parser.parse_args()
    print(f"wrote {generate(args.out, args.tarball, args.k8s_api)} views to {args.out}")


if __name__ == "__main__":
    main()
