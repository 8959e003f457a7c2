"""(c) The official CloudQuery Kubernetes source plugin v6.2.4, measured as a peer.

The plugin runs with its default spec (only ``contexts`` set: its default is the
kubeconfig's current context alone) and reads the kubeconfig from ``$KUBECONFIG``. The
real CLI runs it (``registry: local``, every table) into PostgreSQL through the real
destination. Measured: the wall time of ``cloudquery sync``, the plugin process's peak
RSS (VmHWM of the ``cq-source-k8s`` process the CLI starts, sampled from /proc while
the sync runs), the rows and errors the CLI reports, and the API requests the plugin
made (the API servers' audit logs, told apart by its user agent).

    .venv/bin/python -m bench.peer      # a small test bed, end to end; prints the figures
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from testbed.cluster import ControlPlanes, control_planes, crd_manifest
from testbed.cq import (
    OFFICIAL_K8S_VERSION,
    CqResult,
    destination_config,
    official_k8s_source,
    run_cloudquery,
    source_config,
)
from testbed.postgres import postgres_server

#: The plugin sets no user agent, so client-go sends its default one:
#: ``<binary name>/<client-go version> (<os>/<arch>) kubernetes/<commit>``.
USER_AGENT_PREFIX = "cq-source-k8s/"
CONTEXTS = ["c1", "c2", "c3"]


def official_source_config(contexts: list[str]) -> dict[str, Any]:
    """The official plugin with its default spec, only ``contexts`` set."""
    config = source_config({"contexts": contexts}, path=official_k8s_source())
    config["spec"]["version"] = OFFICIAL_K8S_VERSION
    return config


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the processes started inside (the CLI passes its
    environment on to the plugins it starts)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _descends_from_us(pid: int) -> bool:
    ours = os.getpid()
    while pid > 1:
        pid = _parent(pid)
        if pid == ours:
            return True
    return False


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class PeakRss:
    """The highest VmHWM of any process running ``binary`` started below this one,
    sampled every ``interval`` seconds until the block ends (VmHWM only grows, so the
    last sample of each process is its peak, give or take one interval)."""

    def __init__(self, binary: Path, interval: float = 0.05) -> None:
        self.binary = str(binary.resolve())
        self.interval = interval
        self.peak_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                if pid in self.peak_kb or (
                    os.readlink(entry / "exe") == self.binary and _descends_from_us(pid)
                ):
                    self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), _vm_hwm_kb(pid))
            except OSError:  # gone, or not ours to read
                continue

    @property
    def peak_mb(self) -> float:
        return max(self.peak_kb.values(), default=0) / 1024


def _received(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()


def _final_stage(event: dict[str, Any]) -> bool:
    """One audit event per request: a watch is logged when its response starts, any
    other request when it completes."""
    return event.get("stage") == ("ResponseStarted" if event["verb"] == "watch" else "ResponseComplete")


def plugin_requests(planes: ControlPlanes, since: float, until: float) -> list[dict[str, Any]]:
    """Audit events of the requests the official plugin made in [since, until]."""
    return [
        e
        for server in planes.servers.values()
        for e in server.audit_events()
        if e.get("userAgent", "").startswith(USER_AGENT_PREFIX)
        and _final_stage(e)
        and since <= _received(e) <= until
    ]


def _target(event: dict[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    if not ref:
        return event["requestURI"].split("?")[0]
    resource = ref.get("resource", "")
    return f"{resource}.{ref['apiGroup']}" if ref.get("apiGroup") else resource


def request_summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests by verb, by verb and target (resource or non-resource path), and the
    failed ones by verb, target and HTTP code."""
    failed = [e for e in events if (e.get("responseStatus") or {}).get("code", 200) >= 400]
    return {
        "by_verb": dict(Counter(e["verb"] for e in events)),
        "by_target": dict(Counter(f"{e['verb']} {_target(e)}" for e in events).most_common()),
        "failed": dict(Counter(f"{e['verb']} {_target(e)} {e['responseStatus']['code']}" for e in failed)),
        "user_agents": sorted({e["userAgent"] for e in events}),
    }


def sync_summary(result: CqResult) -> dict[str, int]:
    """Rows, errors and warnings from the CLI's sync summary (its ``summary={...}`` log line)."""
    match = re.search(r"summary=(\{.*\})$", result.output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no sync summary in the CLI output:\n{result.output[-3000:]}")
    summary = json.loads(match.group(1))
    keys = ("resources", "source_errors", "source_warnings", "destination_errors", "destination_warnings")
    return {key: int(summary[key]) for key in keys}


def table_stats(result: CqResult) -> dict[str, dict[str, float]]:
    """Per table, from the plugin's ``table sync finished`` log lines (one per table and
    context, or namespace): rows sent, errors, and the seconds its resolvers ran (summed)."""
    stats: dict[str, dict[str, float]] = {}
    for line in result.output.splitlines():
        if "table sync finished" not in line:
            continue
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        table = stats.setdefault(fields["table"], {"resources": 0, "errors": 0, "resolver_s": 0.0})
        table["resources"] += int(fields["resources"])
        table["errors"] += int(fields["errors"])
        table["resolver_s"] += float(fields["duration_ms"]) / 1000
    return stats


def rows_in_postgres(dsn: str) -> int:
    """Rows the destination holds in every ``k8s_*`` table."""
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_name LIKE 'k8s\\_%'"
        ).fetchall()
        return sum(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for (t,) in tables)


def official_sync(planes: ControlPlanes, dsn: str, work: Path) -> dict[str, Any]:
    """One ``cloudquery sync`` of the official plugin over every context of ``planes``
    into ``dsn`` (a fresh database) with the default write and migrate modes."""
    assert planes.kubeconfig is not None
    configs = [official_source_config(planes.names), destination_config(dsn)]
    since = time.time()
    with environment(KUBECONFIG=str(planes.kubeconfig)), PeakRss(official_k8s_source()) as rss:
        started = time.monotonic()
        result = run_cloudquery(["sync"], workdir=work, configs=configs, timeout=3600)
        wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"official plugin sync failed:\n{result.output[-3000:]}")
    return {
        "wall_s": wall,
        "plugin_peak_rss_mb": rss.peak_mb,
        "plugin_processes": len(rss.peak_kb),
        **sync_summary(result),
        "rows_in_postgres": rows_in_postgres(dsn),
        "tables": table_stats(result),
        "requests": request_summary(plugin_requests(planes, since, time.time())),
        "log_errors_and_warnings": [
            line for line in result.output.splitlines() if " ERR " in line or " WRN " in line
        ],
    }


# --------------------------------------------------------------------------- test bed


def seed(planes: ControlPlanes, namespaces: int = 2) -> None:
    """A few objects of common kinds per context: namespaces with a pod, a ConfigMap,
    a Secret, a Service, a Deployment, a PodDisruptionBudget and an Event each, and a CRD."""
    labels = {"app": "peer"}
    pod_spec = {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    for ctx in planes.names:
        admin = planes.servers[ctx].admin()
        admin.create(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd_manifest("peer.k8s-watcher.io", "gadgets", kind="Gadget"),
        )
        for i in range(namespaces):
            ns = f"peer-{i}"
            admin.create("/api/v1/namespaces", {"metadata": {"name": ns}})
            meta = {"name": f"obj-{i}", "labels": labels}
            core, apps = f"/api/v1/namespaces/{ns}", f"/apis/apps/v1/namespaces/{ns}"
            admin.create(f"{core}/pods", {"metadata": meta, "spec": pod_spec})
            admin.create(f"{core}/configmaps", {"metadata": meta, "data": {"k": "v"}})
            admin.create(f"{core}/secrets", {"metadata": meta, "stringData": {"password": "s"}})
            admin.create(f"{core}/services", {"metadata": meta, "spec": {"ports": [{"port": 80}]}})
            admin.create(
                f"{apps}/deployments",
                {
                    "metadata": meta,
                    "spec": {
                        "selector": {"matchLabels": labels},
                        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                    },
                },
            )
            admin.create(
                f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
                {"metadata": meta, "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}}},
            )
            admin.create(f"/apis/events.k8s.io/v1/namespaces/{ns}/events", _event(meta, ns))


def _event(meta: dict[str, Any], ns: str) -> dict[str, Any]:
    return {
        "metadata": meta,
        "eventTime": "2026-11-26T00:00:00.000000Z",
        "reason": "Scheduled",
        "note": "peer",
        "type": "Normal",
        "action": "Binding",
        "reportingController": "peer",
        "reportingInstance": "peer-1",
        "regarding": {"kind": "Pod", "namespace": ns, "name": meta["name"]},
    }


def create_database(dsn: str, name: str) -> str:
    """A fresh database on the server of ``dsn``; returns its DSN."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return dsn.replace("/postgres?", f"/{name}?")


def main() -> int:
    with (
        tempfile.TemporaryDirectory(prefix="k8s-watcher-peer-") as tmp,
        control_planes(CONTEXTS, workdir=Path(tmp) / "kube") as planes,
        postgres_server() as pg,
    ):
        seed(planes)
        figures = official_sync(planes, create_database(pg.dsn, "official"), Path(tmp) / "c")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
