"""Demo: two local control planes -> k8s-watcher daemon -> cloudquery sync -> PostgreSQL.
``prod`` is a live cluster (testbed/live.py): controllers, a scheduler and three kwok
nodes, so its pods are bound to nodes and Running, and a Deployment rolls out. Then a
second rollout by a named tool, a second sync, and the history: what changed, who
changed it, and the image as of before the rollout.

Run through ``scripts/demo.sh``. Everything runs on loopback and is removed at the end
(``--keep`` leaves it running until Ctrl-C so you can poke at it).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from testbed.cluster import control_planes
from testbed.cq import destination_config, history_configs, run_cloudquery, source_config
from testbed.daemon import DaemonProcess, console_script
from testbed.live import LiveCluster, deployment_manifest
from testbed.postgres import postgres_server

QUERY = (
    "SELECT c.context_name, c.kubernetes_version, n.name, p.name FROM k8s_clusters c "
    "JOIN k8s_namespaces n ON c.context_name = n.context_name "
    "JOIN k8s_pods p ON n.name = p.namespace AND c.context_name = p.context_name ORDER BY 1, 3, 4"
)
NODES_QUERY = "SELECT context_name, kubernetes_version, node_count FROM k8s_clusters ORDER BY 1"
#: History: what changed in prod's Deployments, and who changed it.
CHANGES_QUERY = (
    "SELECT to_char(observed_at, 'HH24:MI:SS'), kind, namespace || '/' || name, change_type, "
    "(SELECT string_agg(m->>'manager', ', ') FROM jsonb_array_elements(managers::jsonb) m), "
    "array_to_string(paths, ' ') FROM k8s_object_changes "
    "WHERE context_name = 'prod' AND kind = 'Deployment' ORDER BY change_seq"
)
#: The fleet as of a time (before the rollout, and now).
AS_OF_QUERY = (
    "SELECT object #>> '{spec,template,spec,containers,0,image}' FROM k8s_objects_as_of(%s, ARRAY['Deployment']) "
    "WHERE context_name = 'prod' AND namespace = 'payments' AND name = 'checkout'"
)
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
            # As examples/grpc-snapshot.yml: the history through a destination entry of its
            # own that never deletes stale rows (docs/history.md).
            configs = [
                source_config({}, registry="grpc", path=daemon.grpc_address),
                destination_config(pg.dsn),
                *history_configs(pg.dsn, path=daemon.grpc_address),
            ]
            started = time.monotonic()
            result = run_cloudquery(["sync"], workdir=work / "cq", configs=configs)
            print(f"demo: cloudquery sync exited {result.returncode} in {time.monotonic() - started:.1f}s")
            if result.returncode != 0:
                print(result.output[-4000:])
                return 1
            # History: a rollout by a named tool, then a second sync carries its changes.
            before = datetime.now(UTC)
            time.sleep(1)
            live.admin().request(
                "PATCH",
                "/apis/apps/v1/namespaces/payments/deployments/checkout?fieldManager=demo-deployer&force=true",
                deployment_manifest("checkout", 4, "registry.example/checkout:2"),
                content_type="application/apply-patch+yaml",
            )
            live.wait_settled("payments", "checkout")
            print(
                "demo: rolled payments/checkout to registry.example/checkout:2 (server-side apply by demo-deployer)"
            )
            time.sleep(2)  # the last status updates reach the cache
            result = run_cloudquery(["sync"], workdir=work / "cq", configs=configs)
            if result.returncode != 0:
                print(result.output[-4000:])
                return 1
            installed = subprocess.run(
                [console_script("k8s-watcher"), "history", "install", "--dsn", pg.dsn],
                capture_output=True,
                text=True,
            )
            if installed.returncode != 0:
                print(installed.stderr)
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
                print("demo: " + CHANGES_QUERY)
                for row in conn.execute(CHANGES_QUERY).fetchall():
                    print("   ", row)
                for label, when in (("before the rollout", before), ("now", datetime.now(UTC))):
                    image = conn.execute(AS_OF_QUERY, (when,)).fetchone()
                    print(
                        f"demo: payments/checkout's image as of {label} ({when:%H:%M:%S}): {image[0] if image else None}"
                    )
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
