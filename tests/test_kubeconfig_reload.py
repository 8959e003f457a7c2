"""The daemon follows its kubeconfig: contexts added, removed and changed while it runs
(SIGHUP and the periodic check), against the session's real API servers."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from testbed.cluster import ApiServer, ControlPlanes
from testbed.daemon import DaemonProcess, watcher_status
from tests.audit import list_requests, watcher_events
from tests.conftest import CMS, NSS, cached, configmap, eventually, namespace, pg_uids, sync, unique

TABLES = ["k8s_clusters", "k8s_namespaces", "k8s_configmaps"]


def write_kubeconfig(path: Path, contexts: dict[str, tuple[ApiServer, str]]) -> Path:
    """A kubeconfig of ``name: (server, server URL)`` contexts, each with the admin token."""
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [],
        "users": [],
        "contexts": [],
    }
    for name, (server, url) in contexts.items():
        config["clusters"].append(
            {"name": name, "cluster": {"server": url, "certificate-authority": str(server.ca_file)}}
        )
        config["users"].append({"name": name, "user": {"token": server.admin_token}})
        config["contexts"].append({"name": name, "context": {"cluster": name, "user": name}})
    path.write_text(yaml.safe_dump(config))
    return path


def informer_states(daemon: DaemonProcess) -> dict[str, set[str]]:
    states: dict[str, set[str]] = {}
    for i in daemon.status()["informers"]:
        states.setdefault(i["context"], set()).add(i["state"])
    return states


def watching(daemon: DaemonProcess, context: str) -> bool:
    return informer_states(daemon).get(context) == {"watching"}


def pg_contexts(dsn: str, table: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute(f"SELECT DISTINCT context_name FROM {table}").fetchall()}


def test_sighup_starts_an_added_context_and_tombstones_a_removed_one_down_to_postgres(
    planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    prod, dev = planes.servers["prod"], planes.servers["dev"]
    ns = namespace(prod.admin(), unique("reload"))
    configmap(prod.admin(), ns, "in-first")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"first": (prod, prod.url)})
    cache = tmp_path / "cache.db"
    daemon = start_daemon(kubeconfig, cache)
    eventually(lambda: cached(cache, "first", CMS, ns), what="first's configmap cached")
    source = {
        "registry": "grpc",
        "path": daemon.grpc_address,
        "with_state_backend": True,
        "write_mode": "overwrite",
    }
    spec = {"incremental": True, "tables": TABLES}
    first_sync = sync(tmp_path, dsn, spec, **source)
    assert first_sync.returncode == 0, first_sync.output[-3000:]
    assert pg_contexts(dsn, "k8s_configmaps") == {"first"}

    write_kubeconfig(kubeconfig, {"second": (dev, dev.client_url)})
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_until(lambda: watching(daemon, "second"), timeout=60, what="the added context watched")
    status = daemon.status()
    assert "first" not in informer_states(daemon)
    assert [r["context"] for r in status["removed_contexts"]] == ["first"]
    assert status["kubeconfig"]["generation"] == "2" and not status["kubeconfig"]["error"]
    eventually(
        lambda: not cached(cache, "first", CMS) and not cached(cache, "first", NSS), what="first tombstoned"
    )

    second_sync = sync(tmp_path, dsn, spec, **source)
    assert second_sync.returncode == 0, second_sync.output[-3000:]
    for table in TABLES:
        assert pg_contexts(dsn, table) == {"second"}, table
    assert pg_uids(dsn, "k8s_namespaces", "second")

    text = watcher_status(cache)
    assert f"kubeconfig {kubeconfig}: generation 2" in text
    assert "first                removed from the kubeconfig" in text
    assert "second" in text and dev.client_url in text


def test_a_changed_cluster_is_rebuilt_from_the_periodic_check_resuming_without_a_list(
    planes: ControlPlanes, tmp_path: Path, start_daemon: Any
) -> None:
    dev = planes.servers["dev"]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"moving": (dev, dev.url)})
    cache = tmp_path / "cache.db"
    daemon = start_daemon(kubeconfig, cache, extra_args=["--kubeconfig-check-interval", "1s"])
    # The same server, now through the proxy: a changed cluster entry.
    changed_at = time.time()
    write_kubeconfig(kubeconfig, {"moving": (dev, dev.client_url)})
    eventually(lambda: daemon.status()["kubeconfig"]["generation"] == "2", timeout=20, what="reloaded")
    daemon.wait_until(lambda: watching(daemon, "moving"), timeout=60, what="rebuilt context watching")
    assert "moving: rebuilt with its new cluster/user entries" in daemon.log.read_text()
    ns = namespace(dev.admin(), unique("moved"))
    configmap(dev.admin(), ns, "after-move")
    eventually(lambda: cached(cache, "moving", CMS, ns), what="configmap after the rebuild cached")
    events = watcher_events(dev, changed_at)
    assert [e for e in events if e["verb"] == "watch"], "the rebuilt informers issued no watch"
    assert list_requests(events) == []

    # A kubeconfig that cannot be read leaves the running contexts alone, and says so.
    kubeconfig.write_text("contexts: [unclosed\n")
    eventually(lambda: daemon.status()["kubeconfig"]["error"], timeout=20, what="reload error reported")
    assert "not valid YAML" in daemon.status()["kubeconfig"]["error"]
    assert watching(daemon, "moving")
