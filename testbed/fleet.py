"""A fleet's shape on a test bed: many CRDs on an API server, a few objects each, and a
kubeconfig with many contexts pointing at the same servers.

Contexts that point at one API server load the daemon exactly as many clusters
would (one watch per context and kind, one set of lists each), while the machine runs
only as many control planes as it can afford. They share the server's user too, so
they may share connections, as contexts of one cluster with one identity do.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.cluster import ControlPlanes, KubeHttp, crd_manifest
from watcher.discovery import discovered_table

#: A typed schema (three columns a CRD's typed table gets) for the fleet's CRDs.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "size": {"type": "integer"},
                "color": {"type": "string"},
                "enabled": {"type": "boolean"},
            },
        }
    },
}


@dataclass(frozen=True)
class FleetCrd:
    group: str
    plural: str
    kind: str

    @property
    def table(self) -> str:
        """The typed table this project makes of it (``watcher.crdtables``)."""
        return discovered_table(self.group, self.plural)

    def collection(self, namespace: str) -> str:
        return f"/apis/{self.group}/v1/namespaces/{namespace}/{self.plural}"


def fleet_crds(count: int, *, prefix: str = "fleet") -> list[FleetCrd]:
    """``count`` CRDs, one group each (as operators ship them: cert-manager, istio...)."""
    return [
        FleetCrd(group=f"{prefix}{i:04d}.k8s-watcher.io", plural=f"gadget{i:04d}s", kind=f"Gadget{i:04d}")
        for i in range(count)
    ]


def create_crds(admin: KubeHttp, crds: list[FleetCrd], *, timeout: float = 600, workers: int = 8) -> None:
    """Create the CRDs and wait until the server serves each of them."""

    def create(crd: FleetCrd) -> None:
        manifest = crd_manifest(crd.group, crd.plural, SCHEMA, kind=crd.kind)
        if (
            admin.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd.plural}.{crd.group}")
            is None
        ):
            admin.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", manifest)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(create, crds))
    wait_served(admin, crds, timeout=timeout)


def wait_served(admin: KubeHttp, crds: Iterable[FleetCrd], *, timeout: float) -> None:
    """Until aggregated discovery lists every CRD's group."""
    wanted = {c.group for c in crds}
    deadline = time.monotonic() + timeout
    missing = wanted
    while time.monotonic() < deadline:
        groups = admin.get("/apis") or {}
        missing = wanted - {g["name"] for g in groups.get("groups") or []}
        if not missing:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{len(missing)} CRDs not served after {timeout:.0f}s, e.g. {sorted(missing)[:3]}")


def create_objects(
    admin: KubeHttp, crds: list[FleetCrd], namespace: str, *, per_crd: int = 3, workers: int = 8
) -> int:
    """``per_crd`` objects of every CRD in ``namespace``; returns how many."""

    def create(crd: FleetCrd) -> int:
        for n in range(per_crd):
            body = {
                "apiVersion": f"{crd.group}/v1",
                "kind": crd.kind,
                "metadata": {"name": f"g{n}"},
                "spec": {"size": n, "color": f"c{n}", "enabled": n % 2 == 0},
            }
            for attempt in range(60):
                try:
                    admin.create(crd.collection(namespace), body)
                    break
                except RuntimeError:  # served in discovery, not established yet
                    if attempt == 59:
                        raise
                    time.sleep(0.5)
        return per_crd

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(create, crds))


def fleet_kubeconfig(
    planes: ControlPlanes, path: Path, contexts: int, *, server: str | None = None
) -> list[str]:
    """A kubeconfig of ``contexts`` contexts named ``c000``... on the test bed's servers
    (round robin, or all on ``server``), each with that server's admin user."""
    base = yaml.safe_load(planes.kubeconfig.read_text())
    names = sorted(planes.servers) if server is None else [server]
    by_name = {c["name"]: c["context"] for c in base["contexts"]}
    made = []
    for i in range(contexts):
        made.append({"name": f"c{i:03d}", "context": dict(by_name[names[i % len(names)]])})
    path.write_text(yaml.safe_dump({**base, "contexts": made, "current-context": made[0]["name"]}))
    return [c["name"] for c in made]
