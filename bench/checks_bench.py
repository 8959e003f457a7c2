"""Benchmark: every hardening check over N objects in PostgreSQL (see BENCHMARKS.md).

The tables are created the way users get them: one small real ``cloudquery sync`` of a
test bed context through the real PostgreSQL destination. N synthetic objects (3
contexts, the kinds the checks read, pod specs with a realistic share of violations)
are then COPYed into those tables, ANALYZEd, and ``k8s-watcher check`` runs over them
as a user would run it (a subprocess, results stored in k8s_policy_results).

    .venv/bin/python -m bench.checks_bench --objects 100000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from testbed.cluster import control_planes
from testbed.cq import destination_config, run_cloudquery, source_config
from testbed.postgres import postgres_server
from watcher.checks import load_checks
from watcher.checks.runner import table_names

CONTEXTS = ["c1", "c2", "c3"]
#: Share of N per table: only the kinds the checks read, pods first.
MIX = {
    "pods": 0.50, "replicasets": 0.10, "deployments": 0.08, "daemonsets": 0.01, "statefulsets": 0.02,
    "jobs": 0.03, "cronjobs": 0.01, "services": 0.06, "serviceaccounts": 0.05, "secrets": 0.05,
    "namespaces": 0.02, "networkpolicies": 0.01, "roles": 0.02, "rolebindings": 0.02, "clusterroles": 0.01,
    "clusterrolebindings": 0.01,
}  # fmt: skip
#: Extra typed columns filled per table (besides the common ones).
TYPED = {
    "pods": ("phase", "service_account_name", "images"),
    "services": ("type", "external_ips"),
    "serviceaccounts": ("automount_service_account_token",),
    "networkpolicies": ("pod_selector", "policy_types"),
    "roles": ("rules",),
    "clusterroles": ("rules",),
    "rolebindings": ("role_ref", "subjects"),
    "clusterrolebindings": ("role_ref", "subjects"),
}
COMMON = ("context_name", "uid", "name", "namespace", "labels", "annotations", "spec", "created_at")


def container(rng: random.Random, name: str) -> dict[str, Any]:
    """A container as real clusters have them: most hardened partly, a few badly."""
    c: dict[str, Any] = {
        "name": name,
        "image": rng.choice(
            ["registry.example/app:1.4.2", "nginx:1.27", "nginx", "redis:7@sha256:" + "ab" * 32]
        ),
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": "MODE", "value": "prod"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "terminationMessagePath": "/dev/termination-log",
        "imagePullPolicy": "IfNotPresent",
    }
    if rng.random() < 0.6:
        c["resources"]["limits"] = {"cpu": "500m", "memory": "256Mi"}
    if rng.random() < 0.5:
        c["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": rng.random() < 0.6,
            "capabilities": {"drop": ["ALL"]},
        }
    elif rng.random() < 0.05:
        c["securityContext"] = {"privileged": True, "capabilities": {"add": ["NET_ADMIN"]}}
    if rng.random() < 0.1:
        c["env"].append(
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}
        )
    if rng.random() < 0.02:
        c["ports"][0]["hostPort"] = 8080
    return c


def pod_spec(rng: random.Random) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [container(rng, "app")] + ([container(rng, "sidecar")] if rng.random() < 0.3 else []),
        "volumes": [{"name": "config", "configMap": {"name": "app"}}],
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "schedulerName": "default-scheduler",
        "terminationGracePeriodSeconds": 30,
        "securityContext": {},
    }
    if rng.random() < 0.2:
        spec["initContainers"] = [container(rng, "init")]
    if rng.random() < 0.7:
        spec["serviceAccountName"] = "app"
    if rng.random() < 0.5:
        spec["securityContext"] = {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    if rng.random() < 0.03:
        spec["hostNetwork"] = True
    if rng.random() < 0.05:
        spec["volumes"].append({"name": "host", "hostPath": {"path": "/var/log"}})
    return spec


def _template(rng: random.Random) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "x"}}, "spec": pod_spec(rng)}


def spec_of(table: str, rng: random.Random) -> dict[str, Any] | None:
    if table == "pods":
        return pod_spec(rng)
    if table in ("deployments", "replicasets", "daemonsets", "statefulsets"):
        return {"replicas": 2, "selector": {"matchLabels": {"app": "x"}}, "template": _template(rng)}
    if table == "jobs":
        return {"template": _template(rng)}
    if table == "cronjobs":
        return {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": _template(rng)}}}
    if table == "services":
        return {"ports": [{"port": 80}], "type": "ClusterIP"}
    if table == "networkpolicies":
        return {"podSelector": {}, "policyTypes": ["Ingress"]}
    return None


def typed_values(table: str, rng: random.Random) -> tuple[Any, ...]:
    rule = {
        "apiGroups": [""],
        "resources": rng.choice([["configmaps"], ["secrets"], ["*"]]),
        "verbs": ["get", "list"],
    }
    subject = {"kind": "ServiceAccount", "name": rng.choice(["app", "default"]), "namespace": "ns"}
    values = {
        "phase": "Running",
        "service_account_name": "app",
        "images": ["registry.example/app:1.4.2"],
        "type": rng.choice(["ClusterIP"] * 8 + ["NodePort", "LoadBalancer"]),
        "external_ips": None,
        "automount_service_account_token": rng.choice([True, False, None]),
        "pod_selector": json.dumps({}),
        "policy_types": ["Ingress"],
        "rules": json.dumps([rule]),
        "role_ref": json.dumps(
            {"kind": "ClusterRole", "name": rng.choice(["view", "edit", "cluster-admin"])}
        ),
        "subjects": json.dumps([subject]),
    }
    return tuple(values[c] for c in TYPED.get(table, ()))


def rows(table: str, n: int, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    created = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=30)
    namespaces = max(1, round(MIX["namespaces"] * n / MIX[table] / len(CONTEXTS)))
    for i in range(n):
        ctx = CONTEXTS[i % len(CONTEXTS)]
        spec = spec_of(table, rng)
        name = f"ns-{i // len(CONTEXTS)}" if table == "namespaces" else f"{table}-{i}"
        ns = (
            None if table in ("namespaces", "clusterroles", "clusterrolebindings") else f"ns-{i % namespaces}"
        )
        yield (
            ctx, uuid.uuid4(), name, ns, json.dumps({"app": "x"}), json.dumps({}),
            None if spec is None else json.dumps(spec), created + timedelta(seconds=i), *typed_values(table, rng),
        )  # fmt: skip


def create_tables(dsn: str, workdir: Path) -> None:
    """One real sync of a fresh one-context test bed: the destination creates every table."""
    with control_planes(["schema"], workdir=workdir / "testbed") as planes:
        spec = {
            "kubeconfig": str(planes.kubeconfig),
            "contexts": ["schema"],
            "cache_path": str(workdir / "cache.db"),
        }
        result = run_cloudquery(
            ["sync"], workdir=workdir / "cq", configs=[source_config(spec), destination_config(dsn)]
        )
        if result.returncode != 0:
            raise RuntimeError(result.output[-3000:])


def load(dsn: str, n: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    counts = {table: round(n * share) for table, share in MIX.items()}
    with psycopg.connect(dsn) as conn:
        for table, count in counts.items():
            columns = ", ".join(COMMON + TYPED.get(table, ()))
            with conn.cursor().copy(f"COPY k8s_{table} ({columns}) FROM STDIN") as copy:
                for row in rows(table, count, rng):
                    copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return counts


def time_check_runs(dsn: str, runs: int) -> list[float]:
    exe = Path(sys.executable).parent / "k8s-watcher"
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        out = subprocess.run([str(exe), "check", "--dsn", dsn], capture_output=True, text=True, check=False)
        seconds.append(time.perf_counter() - start)
        if out.returncode not in (0, 1):
            raise RuntimeError(out.stderr)
        print(out.stderr.strip(), file=sys.stderr)
    return seconds


def slowest_checks(dsn: str, top: int = 5) -> list[tuple[str, float, int]]:
    """Each check's query alone (counted, not stored): the ones that cost the most."""
    timed = []
    with psycopg.connect(dsn) as conn:
        conn.execute("SET jit = off")  # as k8s-watcher check runs them
        tables = table_names(conn)
        for check in (c for c in load_checks() if c.tables <= tables):
            start = time.perf_counter()
            found = conn.execute(f"SELECT count(*) FROM (\n{check.sql}\n) AS c").fetchone()
            timed.append((check.id, time.perf_counter() - start, int(found[0]) if found else 0))
    return sorted(timed, key=lambda t: -t[1])[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="checks-bench-") as tmp, postgres_server() as pg:
        dsn = pg.dsn
        create_tables(dsn, Path(tmp))
        start = time.perf_counter()
        counts = load(dsn, args.objects, args.seed)
        print(f"loaded {sum(counts.values())} objects in {time.perf_counter() - start:.1f} s: {counts}")
        seconds = time_check_runs(dsn, args.runs)
        with psycopg.connect(dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            stored = conn.execute("SELECT count(*) FROM k8s_policy_results").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'}; {len(load_checks())} checks")
        print(f"k8s-watcher check: median {statistics.median(seconds):.2f} s over {args.runs} runs "
              f"({', '.join(f'{s:.2f}' for s in seconds)}); {stored[0] if stored else 0} result rows stored in all")  # fmt: skip
        for check_id, s, found in slowest_checks(dsn):
            print(f"  {check_id:<40} {s:6.3f} s  {found} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
