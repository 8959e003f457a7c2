"""What an API server serves, from its discovery documents, and what to watch of it.

Aggregated discovery (``/api`` and ``/apis`` as ``APIGroupDiscoveryList``, Kubernetes
>= 1.26, on by default from 1.30) answers in two requests; an older server is walked
group by group (legacy discovery). From what is served:

* :func:`plan_builtins`: the descriptors of ``watcher.resources`` the server serves at
  their version; the others are skipped with the reason (one log line each).
* :func:`plan_discovered`: every other resource that can be listed and watched and is not
  a custom resource (those come from their CRDs): a descriptor with generic columns,
  into a table named from its group and plural (:func:`discovered_table`).

Either takes ``exclude``: kinds the user does not want, by resource name, key or table.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from watcher.catalog import ALL_TABLES, excluded
from watcher.kube import ApiError, KubeClient
from watcher.resources import DISCOVERED_COLUMNS, ResourceDescriptor

log = logging.getLogger(__name__)

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"

#: Resources that are other resources served through a second group: inventoried once.
ALIASES = {"events": "events.events.k8s.io"}

EXCLUDED = "is excluded by the spec"
#: How often a daemon reads discovery again (aggregated APIs come and go).
REDISCOVER_SECONDS = 300.0
#: PostgreSQL truncates identifiers longer than this.
_MAX_TABLE = 63


@dataclass(frozen=True)
class Served:
    """One resource an API server serves, at its preferred version."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: frozenset[str]

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


def discover(client: KubeClient) -> dict[str, Served] | None:
    """:func:`served_resources`, or None (logged) when the server's discovery cannot be read."""
    try:
        return served_resources(client)
    except ApiError as exc:
        log.warning("%s: cannot read the API server's discovery: %s", client.context, exc)
        return None


def served_resources(client: KubeClient) -> dict[str, Served]:
    """Every resource the server serves (subresources left out), by key, at the first
    version that serves it in the server's order of preference."""
    found: dict[str, Served] = {}
    for root in ("/api", "/apis"):
        doc = client.get(root, accept=AGGREGATED, timeout=30)
        if doc.get("kind") == "APIGroupDiscoveryList":
            for group in doc.get("items") or []:
                name = (group.get("metadata") or {}).get("name") or ""
                for version in group.get("versions") or []:
                    _add(
                        found,
                        name,
                        version.get("version", ""),
                        version.get("resources") or [],
                        aggregated=True,
                    )
        else:
            _legacy(client, root, doc, found)
    return found


def _legacy(client: KubeClient, root: str, doc: Mapping[str, Any], found: dict[str, Served]) -> None:
    """Discovery of a server without aggregated discovery: one request per group version."""
    if root == "/api":
        versions = [("", v, f"/api/{v}") for v in doc.get("versions") or []]
    else:
        versions = [
            (g["name"], v["version"], f"/apis/{v['groupVersion']}")
            for g in doc.get("groups") or []
            for v in g.get("versions") or []
        ]
    for group, version, path in versions:
        try:
            listing = client.get(path, timeout=30)
        except ApiError as exc:  # an aggregated API whose server is down: the rest still counts
            log.warning(
                "%s: discovery of %s failed (%s); its resources are skipped", client.context, path, exc
            )
            continue
        _add(found, group, version, listing.get("resources") or [], aggregated=False)


def _add(
    found: dict[str, Served],
    group: str,
    version: str,
    resources: Iterable[Mapping[str, Any]],
    *,
    aggregated: bool,
) -> None:
    for res in resources:
        plural = str(res.get("resource") if aggregated else res.get("name") or "")
        if not plural or "/" in plural:
            continue
        served = Served(
            group=group,
            version=version,
            plural=plural,
            kind=str((res.get("responseKind") or {}).get("kind") if aggregated else res.get("kind") or ""),
            namespaced=(res.get("scope") == "Namespaced") if aggregated else bool(res.get("namespaced")),
            verbs=frozenset(res.get("verbs") or ()),
        )
        found.setdefault(served.key, served)


def plan_builtins(
    served: Mapping[str, Served], descriptors: Iterable[ResourceDescriptor], exclude: Iterable[str] = ()
) -> tuple[list[ResourceDescriptor], dict[str, str]]:
    """The descriptors to watch on this server, and why each other one is skipped."""
    exclude = tuple(exclude)
    run: list[ResourceDescriptor] = []
    skipped: dict[str, str] = {}
    for desc in descriptors:
        found = served.get(desc.key)
        if excluded(exclude, desc.plural, desc.key, desc.table):
            skipped[desc.key] = EXCLUDED
        elif found is None:
            skipped[desc.key] = "is not served by this API server"
        elif not ({"list"} if desc.list_only else {"list", "watch"}) <= found.verbs:
            skipped[desc.key] = f"is served without list and watch ({', '.join(sorted(found.verbs))})"
        else:
            run.append(desc)
    return run, skipped


def discovered_table(group: str, plural: str) -> str:
    """``k8s_<group>_<plural>``; a Kubernetes group loses its ``.k8s.io``, the core group
    is ``core``; names too long for PostgreSQL end in a hash of the whole name."""
    short = group.removesuffix(".k8s.io") if group.endswith(".k8s.io") else (group or "core")
    name = "k8s_" + re.sub(r"[^a-z0-9]+", "_", f"{short}_{plural}".lower())
    if len(name) > _MAX_TABLE:
        digest = hashlib.sha256(f"{group}/{plural}".encode()).hexdigest()[:8]
        name = f"{name[: _MAX_TABLE - 9]}_{digest}"
    return name


def plan_discovered(
    served: Mapping[str, Served],
    descriptors: Iterable[ResourceDescriptor],
    custom: Iterable[str],
    exclude: Iterable[str] = (),
) -> tuple[list[ResourceDescriptor], dict[str, str]]:
    """Descriptors with generic columns for what the server serves beyond ``descriptors``
    and the custom resources (keys in ``custom``), and why each other one is skipped."""
    exclude = tuple(exclude)
    known = {d.key for d in descriptors} | set(custom)
    taken = {d.table for d in descriptors} | set(ALL_TABLES)
    run: list[ResourceDescriptor] = []
    skipped: dict[str, str] = {}
    for key, res in sorted(served.items()):
        if key in known:
            continue
        table = discovered_table(res.group, res.plural)
        if ALIASES.get(key) in served:
            continue  # the same objects, inventoried under their other group
        if not {"list", "watch"} <= res.verbs:
            if "list" in res.verbs:  # read-only or computed kinds (componentstatuses, metrics)
                skipped[key] = f"can be listed but not watched ({', '.join(sorted(res.verbs))})"
            continue
        if excluded(exclude, res.plural, key, table):
            skipped[key] = EXCLUDED
        elif table in taken:
            skipped[key] = f"would go to table {table}, which is taken"
        else:
            taken.add(table)
            run.append(generic_descriptor(res, table))
    return run, skipped


def generic_descriptor(res: Served, table: str) -> ResourceDescriptor:
    return ResourceDescriptor(
        table=table,
        group=res.group,
        version=res.version,
        plural=res.plural,
        kind=res.kind,
        namespaced=res.namespaced,
        columns=DISCOVERED_COLUMNS,
    )
