"""Demo: two local control planes -> k8s-watcher daemon -> cloudquery sync -> PostgreSQL.
``prod`` is a live cluster (testbed/live.py): controllers, a scheduler and three kwok
nodes, so its pods are bound to nodes and Running, and a Deployment rolls out.

Run through ``scripts/demo.sh``. Everything runs on loopback and is removed at the end
(``--keep`` leaves it running until Ctrl-C so you can poke at it).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from testbed.cluster import control_planes
from testbed.cq import destination_config, run_cloudquery, source_config
from testbed.daemon import DaemonProcess
from testbed.live import LiveCluster, deployment_manifest
from testbed.postgres import postgres_server

QUERY = (
    "SELECT c.context_name, c.kubernetes_version, n.name, p.name FROM k8s_clusters c "
    "JOIN k8s_namespaces n ON c.context_name = n.context_name "
    "JOIN k8s_pods p ON n.name = p.namespace AND c.context_name = p.context_name ORDER BY 1, 3, 4"
)
NODES_QUERY = "SELECT context_name, kubernetes_version, node_count FROM k8s_clusters ORDER BY 1"
PHASES_QUERY = (
    "SELECT context_name, coalesce(phase, '(none)'), count(*) AS pods, count(node_name) AS bound "
    "FROM k8s_pods GROUP BY 1, 2 ORDER BY 1, 2"
)


def _populate(admin: object, context: str) -> None:
    for team in ("payments", "search"):
        admin.create("/api/v1/namespaces", {"metadata": {"name": team, "labels": {"team": team}}})  # type: ignore[attr-defined]
        for i in range(3):
            admin.create(  # type: ignore[attr-defined]
                f"/api/v1/namespaces/{team}/pods",
                {
                    "metadata": {"name": f"{team}-{i}", "labels": {"app": team}},
                    "spec": {
                        "containers": [{"name": "app", "image": f"registry.example/{team}:{context}-{i}"}]
                    },
                },
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="k8s-watcher-demo-"))
    print(f"demo: working in {work}")
    with control_planes(["dev", "prod"], workdir=work / "kube") as planes, postgres_server() as pg:
        for name, server in planes.servers.items():
            _populate(server.admin(), name)
        live = LiveCluster(planes, "prod", work / "live")
        daemon = DaemonProcess(planes.kubeconfig, work / "cache.db", work / "daemon.log", "dev,prod")
        try:
            live.start(node_count=3)
            live.admin().create(
                "/apis/apps/v1/namespaces/payments/deployments",
                deployment_manifest("checkout", 4, "registry.example/checkout:1"),
            )
            live.wait_settled("payments", "checkout")
            print("demo: prod runs kube-controller-manager, kube-scheduler and kwok with 3 nodes")
            daemon.start()
            print(f"demo: daemon healthy: {daemon.http('/healthz')[1].strip()}")
            started = time.monotonic()
            result = run_cloudquery(
                ["sync"],
                workdir=work / "cq",
                configs=[
                    source_config({}, registry="grpc", path=daemon.grpc_address),
                    destination_config(pg.dsn),
                ],
            )
            print(f"demo: cloudquery sync exited {result.returncode} in {time.monotonic() - started:.1f}s")
            if result.returncode != 0:
                print(result.output[-4000:])
                return 1
            with psycopg.connect(pg.dsn) as conn:
                print("demo: " + QUERY)
                for row in conn.execute(QUERY).fetchall():
                    print("   ", row)
                for query in (NODES_QUERY, PHASES_QUERY):
                    print("demo: " + query)
                    for row in conn.execute(query).fetchall():
                        print("   ", row)
                counts = conn.execute(
                    "SELECT 'k8s_namespaces', count(*) FROM k8s_namespaces UNION ALL SELECT 'k8s_pods', count(*) FROM k8s_pods "
                    "UNION ALL SELECT 'k8s_configmaps', count(*) FROM k8s_configmaps UNION ALL SELECT 'k8s_clusterroles', count(*) FROM k8s_clusterroles"
                ).fetchall()
                print("demo: rows per table:", dict(counts))
            if args.keep:
                print(
                    f"demo: kubeconfig {planes.kubeconfig}; PostgreSQL {pg.dsn}; metrics http://127.0.0.1:{daemon.http_port}/metrics"
                )
                print("demo: Ctrl-C to stop")
                done = threading.Event()
                signal.signal(signal.SIGINT, lambda *_: done.set())
                done.wait()
        finally:
            daemon.stop()
            live.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
