"""A test bed that behaves like a cluster: one API server from :mod:`testbed.cluster`
plus kube-controller-manager, kube-scheduler and kwok with N simulated nodes.

Deployments become ReplicaSets and pods, the scheduler binds them to nodes, kwok plays
each node's kubelet (the node turns Ready and renews its Lease every ~10 s, pods turn
Running with container statuses, deleted pods go away), EndpointSlices and Events flow,
a deleted namespace cascades and owner references are garbage-collected. The bare test
bed (``control_planes``) stays for tests that need a quiet server.

Binaries come from ``testbed/build.sh`` (kube-controller-manager and kube-scheduler from
the same k8s.io/kubernetes module as kube-apiserver, kwok from ``testbed/kwok``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.cluster import ControlPlanes, KubeHttp, _Process, binary_dir, control_planes

#: The annotation kwok manages nodes by (as kwokctl's node template sets it).
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
#: What a real kubelet sets: the Lease lasts 40 s and is renewed every quarter of that.
NODE_LEASE_SECONDS = 40
#: Pod IPs kwok hands out (its default /24 holds 254 pods); disjoint from the services' range.
POD_CIDR = "10.0.0.0/10"
LIVE_BINARIES = ("kube-controller-manager", "kube-scheduler", "kwok")
#: kwok renews Leases and plays pod Stages with 4 workers each by default: on a busy
#: 2-core machine 500 Leases every 10 s then fall behind the controller manager's 50 s
#: grace period and nodes flap NotReady. A configuration file sets every worker count
#: (one given leaves the others at 0, which kwok refuses).
KWOK_CONFIGURATION = """\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  nodeLeaseParallelism: 16
  nodePlayStageParallelism: 4
  podPlayStageParallelism: 16
  podsOnNodeSyncParallelism: 1
"""


def versions() -> dict[str, str]:
    """The version line of each live part, named (for the pytest header and BENCHMARKS.md)."""
    out: dict[str, str] = {}
    for name in LIVE_BINARIES:
        try:
            proc = subprocess.run(
                [str(binary_dir() / name), "--version"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            text = (proc.stdout or proc.stderr).strip()
            line = text.splitlines()[0] if text else "?"
            out[name] = line if line.startswith(name) else f"{name} {line}"
        except OSError as exc:
            out[name] = f"unavailable ({exc})"
    return out


def node_manifest(name: str, index: int) -> dict[str, Any]:
    """A node as kwokctl's template makes it: kwok takes it over (annotation), the
    node-initialize Stage turns it Ready; 32 CPUs, 256 GiB and 110 pods allocatable."""
    allocatable = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                "type": "kwok",
            },
        },
        "spec": {},
        "status": {
            "addresses": [{"address": f"192.0.{2 + index // 250}.{1 + index % 250}", "type": "InternalIP"}],
            "allocatable": allocatable,
            "capacity": allocatable,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux"},
        },
    }


def deployment_manifest(
    name: str, replicas: int, image: str, *, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Deployment of one container that asks for little, so many fit on a node."""
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": image,
                            "ports": [{"containerPort": 8080, "name": "http"}],
                            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                        }
                    ],
                    "terminationGracePeriodSeconds": 30,
                },
            },
        },
    }


def service_manifest(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


@dataclass
class LiveCluster:
    """kube-controller-manager, kube-scheduler and kwok beside ``planes``' API server ``context``."""

    planes: ControlPlanes
    context: str
    workdir: Path
    #: The controller manager's client rate: its default (20/s, burst 30) takes ~17 min to
    #: create 20,000 pods; a busy cluster's controllers are given more.
    kube_api_qps: int = 200
    processes: list[_Process] = field(default_factory=list)
    #: The nodes that exist now (``drain_and_remove`` takes one out; names are never reused).
    nodes: list[str] = field(default_factory=list)
    created_nodes: int = 0

    def admin(self) -> KubeHttp:
        return self.planes.servers[self.context].admin()

    def start(self, node_count: int) -> LiveCluster:
        bindir = binary_dir()
        pki = self.planes.pki
        assert pki is not None and self.planes.kubeconfig is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        kubeconfig = self._component_kubeconfig()
        qps = [f"--kube-api-qps={self.kube_api_qps}", f"--kube-api-burst={2 * self.kube_api_qps}"]
        self._start(
            "kube-controller-manager",
            [
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--service-account-private-key-file={pki.sa_key_file}",
                f"--root-ca-file={pki.ca_file}",
                f"--cluster-name={self.context}",
                "--controllers=*",
                *qps,
                "--v=1",
            ],
        )
        self._start(
            "kube-scheduler",
            [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--secure-port=0", *qps, "--v=1"],
        )
        config = self.workdir / "kwok.yaml"
        config.write_text(KWOK_CONFIGURATION + (bindir / "kwok-stages.yaml").read_text())
        self._start(
            "kwok",
            [
                f"--kubeconfig={kubeconfig}",
                f"--config={config}",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
                f"--cidr={POD_CIDR}",
                "--node-ip=192.0.2.1",
                # At INFO kwok logs a JSON line for every Lease renewal and pod patch (50
                # Lease lines a second at 500 nodes), which nobody reads.
                "--v=WARN",
            ],
        )
        self._wait(lambda: self.admin().get("/api/v1/namespaces/default/serviceaccounts/default"), 120, "kcm")
        self.add_nodes(node_count)
        return self

    def _component_kubeconfig(self) -> Path:
        """The test bed's kubeconfig with ``context`` (the admin) as current context."""
        assert self.planes.kubeconfig is not None
        config = yaml.safe_load(self.planes.kubeconfig.read_text())
        config["current-context"] = self.context
        path = self.workdir / "components.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _start(self, name: str, args: list[str]) -> None:
        process = _Process(name, [str(binary_dir() / name), *args], self.workdir / f"{name}.log")
        process.start()
        self.processes.append(process)

    def _wait(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if not process.alive():
                    raise RuntimeError(f"{process.name} exited:\n{process.log_tail()}")
            result = predicate()
            if result:
                return result
            time.sleep(0.5)
        raise TimeoutError(f"{what}: not after {timeout}s")

    # -- nodes ------------------------------------------------------------------

    def add_nodes(self, count: int, *, timeout: float = 300) -> list[str]:
        """Create ``count`` kwok nodes and wait until every node is Ready."""
        admin = self.admin()
        new = []
        for _ in range(count):
            index, self.created_nodes = self.created_nodes, self.created_nodes + 1
            name = f"kwok-node-{index}"
            admin.create("/api/v1/nodes", node_manifest(name, index))
            self.nodes.append(name)
            new.append(name)
        self._wait(lambda: self.ready_nodes() >= len(self.nodes), timeout, f"{len(self.nodes)} nodes Ready")
        return new

    def ready_nodes(self) -> int:
        items = self.admin().list("/api/v1/nodes")["items"]
        return sum(
            1
            for n in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        )

    def drain_and_remove(self, node: str) -> list[str]:
        """What an operator does to retire a node: cordon it, evict each of its pods
        through the Eviction API (their controllers recreate them elsewhere), delete it.
        Returns the names of the evicted pods."""
        admin = self.admin()
        admin.patch(f"/api/v1/nodes/{node}", {"spec": {"unschedulable": True}})
        pods = admin.list(f"/api/v1/pods?fieldSelector=spec.nodeName={node}")["items"]
        for pod in pods:
            meta = pod["metadata"]
            admin.create(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/eviction",
                {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": meta["name"]}},
            )
        self._wait(
            lambda: not admin.list(f"/api/v1/pods?fieldSelector=spec.nodeName={node}")["items"],
            120,
            f"pods of {node} gone",
        )
        admin.delete(f"/api/v1/nodes/{node}")
        self.nodes.remove(node)
        return [p["metadata"]["name"] for p in pods]

    # -- workloads --------------------------------------------------------------

    def settled(self, namespace: str, deployment: str) -> bool:
        """The Deployment's rollout is complete: every replica updated, ready and
        available, and no pod of an older ReplicaSet is left (not even terminating)."""
        admin = self.admin()
        d = admin.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}")
        if d is None:
            return False
        want, status = d["spec"]["replicas"], d.get("status", {})
        if status.get("observedGeneration", 0) < d["metadata"]["generation"]:
            return False
        if any(
            status.get(k, 0) != want
            for k in ("updatedReplicas", "readyReplicas", "availableReplicas", "replicas")
        ):
            return False
        selector = ",".join(f"{k}={v}" for k, v in d["spec"]["selector"]["matchLabels"].items())
        pods = admin.list(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")["items"]
        return len(pods) == want and all(
            p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
            for p in pods
        )

    def wait_settled(self, namespace: str, deployment: str, timeout: float = 180) -> None:
        self._wait(
            lambda: self.settled(namespace, deployment), timeout, f"deployment {namespace}/{deployment}"
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@contextmanager
def live_cluster(
    node_count: int = 3,
    *,
    context: str = "live",
    workdir: Path | None = None,
    audit: bool = True,
    kube_api_qps: int = 200,
) -> Iterator[LiveCluster]:
    """An API server (``context`` in the kubeconfig) with controllers, a scheduler and
    ``node_count`` Ready kwok nodes; everything is stopped on exit, error or not."""
    tmp = Path(tempfile.mkdtemp(prefix="k8s-watcher-live-")) if workdir is None else workdir
    try:
        with control_planes([context], workdir=tmp / "kube", audit=audit) as planes:
            live = LiveCluster(planes, context, tmp / "live", kube_api_qps=kube_api_qps)
            try:
                live.start(node_count)
                yield live
            finally:
                live.stop()
    finally:
        if workdir is None and not os.environ.get("K8S_WATCHER_KEEP_TESTBED"):
            shutil.rmtree(tmp, ignore_errors=True)
