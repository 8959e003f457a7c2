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


def cluster_errors(daemon: DaemonProcess) -> dict[str, str]:
    return {c["context"]: c["last_error"] or "" for c in daemon.status()["contexts"]}


def test_a_bad_entry_at_start_or_on_reload_is_reported_and_the_other_contexts_run(
    planes: ControlPlanes, dsn: str, tmp_path: Path, start_daemon: Any
) -> None:
    """One policy for a context whose entries cannot make a client, at start as on a
    reload: it is not watched, `status` and k8s_clusters.last_error say why (naming the
    context and the field), the others run; fixed, it is watched at the next reload."""
    prod, dev = planes.servers["prod"], planes.servers["dev"]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"good": (prod, prod.url), "oidc": (dev, dev.url)})
    config = yaml.safe_load(kubeconfig.read_text())
    good_user, oidc_user = (u["user"] for u in config["users"])
    oidc_user.clear()
    oidc_user["auth-provider"] = {
        "name": "oidc",
        "config": {
            "idp-issuer-url": "https://issuer.invalid",
            "idp-certificate-authority-data": "not base64!",
        },
    }
    kubeconfig.write_text(yaml.safe_dump(config))
    cache = tmp_path / "cache.db"
    daemon = start_daemon(kubeconfig, cache)
    assert watching(daemon, "good") and "oidc" not in informer_states(daemon)
    expected = "context oidc: auth-provider oidc idp-certificate-authority-data is not valid base64"
    eventually(lambda: expected in cluster_errors(daemon).get("oidc", ""), what="the bad entry reported")
    assert expected in watcher_status(cache)

    source = {"registry": "grpc", "path": daemon.grpc_address}
    synced = sync(tmp_path, dsn, {"tables": ["k8s_clusters", "k8s_namespaces"]}, **source)
    assert synced.returncode == 0, synced.output[-3000:]
    with psycopg.connect(dsn) as conn:
        rows = dict(conn.execute("SELECT context_name, last_error FROM k8s_clusters").fetchall())
    assert expected in (rows["oidc"] or "") and not rows["good"]
    assert pg_contexts(dsn, "k8s_namespaces") == {"good"}

    # The fixed entry is watched; an entry broken by the same reload is reported.
    oidc_user.clear()
    oidc_user["token"] = dev.admin_token
    good_user["client-certificate-data"], good_user["client-key-data"] = "%%%", "%%%"
    kubeconfig.write_text(yaml.safe_dump(config))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_until(lambda: watching(daemon, "oidc"), timeout=60, what="the fixed context watched")
    eventually(lambda: not cluster_errors(daemon)["oidc"], what="the fixed context's error cleared")
    assert "context good: client-certificate-data is not valid base64" in cluster_errors(daemon)["good"]
    assert "good: cannot be watched: context good: client-certificate-data" in daemon.log.read_text()
