"""The long-running daemon: informers, gRPC plugin server, health and metrics, jobs.

``k8s-watcher serve`` keeps the cache warm with informers and serves the plugin for
``registry: grpc`` from the same process; ``registry: local`` plugins may read the
same cache file concurrently. Scheduled jobs (APScheduler): a heartbeat that tells
readers the cache is live, tombstone retention, WAL checkpoints and an optional
periodic relist as a safety net.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from watcher import state
from watcher.credentials import DEFAULT_EXEC_TIMEOUT
from watcher.errors import ConfigError
from watcher.history import HistoryPolicy
from watcher.informers import InformerManager
from watcher.kube import KubeClient, connection_stats
from watcher.kubeconfig import (
    entries_of,
    in_cluster_config,
    in_cluster_context_name,
    resolve_contexts,
    service_account_dir,
)
from watcher.leases import KubeLeaseApi, LeaseCoordinator, default_identity
from watcher.plugin import FollowStatus, Plugin
from watcher.refresh import DaemonInformers, ReplicaGroup
from watcher.reload import ContextTarget, KubeconfigReloader, KubeconfigWatch, WatchedContexts, start_clients
from watcher.replicas import ReplicaContexts
from watcher.server import ServerTls, serve_plugin
from watcher.state import CacheLocation, CacheStore

log = logging.getLogger(__name__)


@dataclass
class DaemonConfig:
    kubeconfig: Path
    contexts: list[str]
    cache_path: Path
    #: Port 0 in either address: the system chooses one (written to ``ready_file``).
    grpc_address: str = "127.0.0.1:7777"
    http_address: str = "127.0.0.1:9464"
    #: Once both listen, their addresses are written here (JSON), for a launcher.
    ready_file: Path | None = None
    #: Tombstones older than this are purged; an incremental cursor older than the
    #: purge point falls back to a full snapshot.
    tombstone_retention: float = 24 * 3600
    #: Periodic full relist as a safety net against missed events (0 = off).
    relist_interval: float = 0
    heartbeat_interval: float = 5
    #: An exec credential plugin still running after this long is killed.
    exec_timeout: float = DEFAULT_EXEC_TIMEOUT
    #: Serve gRPC over TLS with this certificate and key (both or neither).
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    #: Seconds between checks of the kubeconfig for changes (0: on SIGHUP only).
    kubeconfig_check_interval: float = 30
    #: The cache as a database URL (PostgreSQL: shared by replicas); wins over cache_path.
    cache_url: str | None = None
    #: Replicas: hold one Lease per watched context in this namespace (None: a lone daemon).
    replicas_lease_namespace: str | None = None
    #: The kubeconfig context of the cluster the Leases live on (None: the pod's own).
    replicas_lease_context: str | None = None
    #: Independent replica groups may share a namespace.
    replicas_group: str = "default"
    #: A replica that stops renewing loses its contexts to the others after this long.
    lease_duration: float = 15.0
    #: Which kinds keep a history of their changes, and for how long (``watcher.history``).
    history: HistoryPolicy = field(default_factory=HistoryPolicy)

    @property
    def cache(self) -> CacheLocation:
        return CacheLocation.of(self.cache_url or self.cache_path)


#: The retention job never runs less often than this (seconds).
MAX_PURGE_INTERVAL = 600.0


def purge_interval(retention: float) -> float:
    """Seconds between runs of the tombstone retention job for ``retention`` seconds.

    Each run samples (time, seq) and purges up to the newest sample older than the
    retention, so a tombstone lives at least ``retention`` and at most ``retention`` +
    two intervals. A quarter of the retention bounds that to 1.5x the retention;
    10 minutes caps it for long retentions (a run is one cheap DELETE, but there is
    no point waking more often than that when the retention is a day); 1 second keeps
    a tiny retention (tests) from spinning the scheduler.
    """
    return min(MAX_PURGE_INTERVAL, max(1.0, retention / 4))


_CONNECTION_HELP = {
    "pools": "Connection pools to API servers (one per server and TLS identity)",
    "connections": "Open TCP connections to API servers",
    "streams": "Requests in flight to API servers (every watch is one)",
    "http2_pools": "Connection pools speaking HTTP/2",
}


class _MetricsCollector:
    """Prometheus metrics computed from the informers' statuses and the cache."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Any]:
        statuses = self.daemon.manager.statuses()
        labels = ["context", "resource"]
        state_g = GaugeMetricFamily(
            "k8s_watcher_informer_state", "1 for the informer's current state", labels=[*labels, "state"]
        )
        families = {
            name: CounterMetricFamily(f"k8s_watcher_{name}", help_, labels=labels)
            for name, help_ in (
                ("events", "Watch events applied to the cache"),
                ("lists", "Full lists (LIST or streaming list) completed"),
                ("relists", "Relists caused by an expired resourceVersion (410)"),
                ("watches", "Watch requests opened"),
                ("errors", "Failed requests"),
            )
        }
        for s in statuses:
            state_g.add_metric([s.context, s.resource, s.state], 1)
            for name, family in families.items():
                family.add_metric([s.context, s.resource], getattr(s, name))
        yield state_g
        yield from families.values()
        rows = GaugeMetricFamily("k8s_watcher_cache_rows", "Live objects in the cache", labels=["table"])
        with self.daemon.store.engine.connect() as conn:
            for table, n in state.count_rows(conn).items():
                rows.add_metric([table], n)
        yield rows
        seqs = GaugeMetricFamily(
            "k8s_watcher_cache_seq",
            "Newest change sequence number of each context written here",
            labels=["context"],
        )
        for ctx, seq in self.daemon.store.owned_positions().items():
            seqs.add_metric([ctx], seq)
        yield seqs
        yield GaugeMetricFamily(
            "k8s_watcher_history_backlog",
            "Object versions logged for the history, not yet derived into change rows",
            value=self.daemon.store.history_backlog,
        )
        yield GaugeMetricFamily(
            "k8s_watcher_history_lag_seconds",
            "Age of the oldest logged version not yet derived (0: none)",
            value=self.daemon.store.history_lag_seconds(),
        )
        if self.daemon.leases is not None:
            yield GaugeMetricFamily(
                "k8s_watcher_leases_held",
                "Context Leases this replica holds",
                value=len(self.daemon.leases.held),
            )
        for name, value in connection_stats(self.daemon.manager.io).items():
            yield GaugeMetricFamily(f"k8s_watcher_api_{name}", _CONNECTION_HELP[name], value=value)
        yield from _stream_metrics(self.daemon.plugin.follow_status)


def _stream_metrics(status: FollowStatus) -> Iterator[Any]:
    """The follow syncs (``follow: true``) this daemon serves."""
    yield GaugeMetricFamily("k8s_watcher_stream_active", "Follow syncs open", value=status.streams)
    sent = GaugeMetricFamily(
        "k8s_watcher_stream_seq",
        "Change seq the last follow batch (and its cursor) carried",
        labels=["context"],
    )
    for ctx, seq in status.sent.items():
        sent.add_metric([ctx], seq)
    yield sent
    yield GaugeMetricFamily(
        "k8s_watcher_stream_lag_seconds",
        "Age of the oldest change committed to the cache and not yet sent on a follow sync",
        value=status.lag_seconds(),
    )
    error = GaugeMetricFamily(
        "k8s_watcher_stream_last_error", "Time of the last follow sync failure, by message", labels=["error"]
    )
    if status.last_error:
        error.add_metric([status.last_error[:200]], status.last_error_at)
    yield error


def _http_handler(daemon: Daemon) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/healthz":
                ok, detail = daemon.health()
                self._send(200 if ok else 503, detail.encode(), "text/plain; charset=utf-8")
            elif self.path == "/metrics":
                self._send(200, generate_latest(daemon.registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

    return Handler


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "127.0.0.1", int(port)


def write_ready_file(path: Path, **addresses: str) -> None:
    """Tell a launcher the addresses listened on (with port 0, the ports the system
    chose, so no launcher has to guess a free one and race for it): one JSON object,
    renamed into place so that a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**addresses, "pid": os.getpid()}))
    os.replace(tmp, path)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def tune_memory() -> None:
    """Keep a long-running, many-threaded daemon's footprint flat.

    glibc gives every thread that allocates its own malloc arena (up to 8 per core)
    and each keeps what it freed: with one informer thread per resource and context,
    that alone doubled RSS at 100k objects. Two arenas are plenty for I/O-bound threads.
    A fixed mmap threshold keeps every block of 1 MB or more (a sync's record batches
    and their serialised copies) in its own mapping, unmapped when freed: glibc's
    default threshold rises after the first such free and later big blocks then stay
    in the heap (a sync raised peak RSS by 57 MB at 100k objects; 44 MB with this).
    Arrow buffers go through the same allocator so that ``malloc_trim`` returns them.
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    pa.set_memory_pool(pa.system_memory_pool())


def trim_memory() -> None:
    """Return freed heap pages to the OS (a scheduled job, and after big syncs)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def lease_client(config: DaemonConfig) -> KubeClient:
    """A client of the cluster the replicas' Leases live on: a named kubeconfig context,
    or the pod's own cluster through its service account."""
    if config.replicas_lease_context:
        return KubeClient(config.kubeconfig, config.replicas_lease_context, exec_timeout=config.exec_timeout)
    own = in_cluster_config()
    if own is None:
        raise ConfigError(
            "--replicas-lease-namespace: the Leases live on the cluster this pod runs in, and this is "
            "not a pod (no service account); name a kubeconfig context with --replicas-lease-context"
        )
    name = in_cluster_context_name()
    entry = entries_of(own, service_account_dir())[name]  # its file names are absolute
    return KubeClient(service_account_dir(), name, exec_timeout=config.exec_timeout, entry=entry)


def grpc_tls(config: DaemonConfig) -> ServerTls | None:
    """The gRPC server's TLS certificate and key, if given (both, or neither)."""
    if (config.grpc_tls_cert is None) != (config.grpc_tls_key is None):
        raise ConfigError("--grpc-tls-cert and --grpc-tls-key go together")
    if config.grpc_tls_cert is None or config.grpc_tls_key is None:
        return None
    try:
        return ServerTls(config.grpc_tls_cert, config.grpc_tls_key)
    except OSError as exc:
        raise ConfigError(f"gRPC TLS certificate or key cannot be read: {exc}") from exc


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        tune_memory()
        self.config = config
        contexts = resolve_contexts(config.kubeconfig, config.contexts)
        if not config.kubeconfig.exists():
            log.info(
                "no kubeconfig at %s: watching the cluster this pod runs in, with its service account (%s), as context %s",
                config.kubeconfig, service_account_dir(), in_cluster_context_name(),
            )  # fmt: skip
        replicated = config.replicas_lease_namespace is not None
        if replicated and config.cache.is_sqlite:
            raise ConfigError(
                "--replicas-lease-namespace: replicas share one PostgreSQL cache; give it with "
                "--cache-url postgresql://... (a SQLite file has one writer)"
            )
        identity = default_identity()
        self.store = CacheStore(
            config.cache,
            shared=replicated,
            group=config.replicas_group,
            identity=identity,
            history=config.history,
        )

        def make_client(ctx: str) -> KubeClient:
            return KubeClient(config.kubeconfig, ctx, exec_timeout=config.exec_timeout)

        # A replica starts with no context: the Leases it acquires bring them.
        self.manager = InformerManager(
            clients=[] if replicated else start_clients(contexts, store=self.store, make_client=make_client),
            store=self.store,
        )
        self.replicas: ReplicaContexts | None = None
        self.leases: LeaseCoordinator | None = None
        target: ContextTarget
        if replicated:
            self.replicas = ReplicaContexts(
                manager=self.manager, store=self.store, make_client=make_client, contexts=contexts
            )
            self.leases = LeaseCoordinator(
                KubeLeaseApi(lease_client(config), str(config.replicas_lease_namespace)),
                identity=identity,
                group=config.replicas_group,
                lease_duration=config.lease_duration,
                on_acquired=self.replicas.acquired,
                on_released=self.replicas.released,
            )
            self.replicas.coordinator = self.leases
            self.leases.set_contexts(contexts)
            target = self.replicas
        else:
            target = WatchedContexts(manager=self.manager, store=self.store, make_client=make_client)
        self.registry = CollectorRegistry()
        self.registry.register(_MetricsCollector(self))
        self.sync_seconds = Histogram(
            "k8s_watcher_sync_duration_seconds", "Duration of plugin syncs served", registry=self.registry
        )
        # The daemon's informers and store are the cache's one writer (or, in a replica,
        # the group's): a sync served here waits for them and never relists by itself.
        self._plugin_defaults: dict[str, Any] = {
            "kubeconfig": str(config.kubeconfig),
            **(
                {"cache_url": config.cache_url}
                if config.cache_url
                else {"cache_path": str(config.cache_path)}
            ),
            "contexts": contexts,
        }
        self.plugin = Plugin(
            ReplicaGroup() if replicated else DaemonInformers(self.manager),
            defaults=self._plugin_defaults,
            on_sync_done=self._sync_done,
        )
        self.reloader = KubeconfigReloader(
            KubeconfigWatch(config.kubeconfig, config.contexts, contexts),
            target=target,
            store=self.store,
            on_contexts=self._contexts_changed,
            interval=config.kubeconfig_check_interval,
        )
        self.grpc_tls = grpc_tls(config)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._seq_samples: deque[tuple[float, dict[str, int]]] = deque()
        self._stopped = threading.Event()

    def _contexts_changed(self, contexts: list[str]) -> None:
        """A kubeconfig reload changed the watched contexts: syncs default to them."""
        self._plugin_defaults["contexts"] = contexts

    def _sync_done(self, seconds: float, _rows: int) -> None:
        self.sync_seconds.observe(seconds)
        trim_memory()

    # -- health --------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        statuses = self.manager.statuses()
        by_state: dict[str, int] = {}
        for s in statuses:
            by_state[s.state] = by_state.get(s.state, 0) + 1
        # A context whose CRDs are listed but whose custom and discovered resources have
        # no informers yet is still starting, whatever its other informers say.
        if pending := self.manager.contexts_starting():
            by_state["starting"] = by_state.get("starting", 0) + pending
        idle = self.leases is not None and not self.manager.contexts
        # A replica may hold no context at all (more replicas than contexts): idle, not starting.
        detail = ", ".join(f"{k}={v}" for k, v in sorted(by_state.items())) or (
            "idle" if idle else "starting"
        )
        # Healthy while the process works: the writer is alive. A forbidden or
        # unreachable cluster is reported, not fatal (the others still sync).
        if self.leases is not None:
            detail += f", leases_held={len(self.leases.held)}"
        if self.store.unreachable_since is not None:
            detail += f", cache_unreachable_for={time.time() - self.store.unreachable_since:.0f}s"
        if self.store.dropped_batches:
            detail += f", dropped_write_batches={self.store.dropped_batches}"
        ok = self.store.writer_alive()
        return ok, f"{'ok' if ok else 'cache writer stopped'}: {detail}\n"

    # -- jobs ----------------------------------------------------------------

    def _purge_tombstones(self) -> None:
        """Purge, per context, the tombstones older than the retention: the samples say
        which seq each context had reached that long ago."""
        now = time.time()
        self._seq_samples.append((now, self.store.owned_positions()))
        cutoffs: dict[str, int] | None = None
        while self._seq_samples and now - self._seq_samples[0][0] > self.config.tombstone_retention:
            cutoffs = self._seq_samples.popleft()[1]
        if cutoffs:
            purged = self.store.purge_tombstones(cutoffs)
            log.log(
                logging.INFO if purged else logging.DEBUG,
                "purged %d tombstones up to %s",
                purged,
                ", ".join(f"{c}@{s}" for c, s in sorted(cutoffs.items())),
            )

    def _purge_history(self) -> None:
        purged = self.store.purge_history()
        log.log(logging.INFO if purged else logging.DEBUG, "purged %d history rows", purged)

    def _relist_all(self) -> None:
        log.info("periodic safety-net relist of every informer")
        self.manager.request_relist_all()

    def _start_jobs(self) -> None:
        self.scheduler.add_job(
            self.store.heartbeat, "interval", seconds=self.config.heartbeat_interval, id="heartbeat"
        )
        self.scheduler.add_job(
            self._purge_tombstones,
            "interval",
            seconds=purge_interval(self.config.tombstone_retention),
            id="tombstones",
        )
        self.scheduler.add_job(
            self._purge_history,
            "interval",
            seconds=purge_interval(self.config.history.retention_seconds),
            id="history",
        )
        self.scheduler.add_job(self.store.checkpoint_wal, "interval", minutes=5, id="wal-checkpoint")
        self.scheduler.add_job(trim_memory, "interval", seconds=30, id="trim-memory")
        if self.config.relist_interval > 0:
            self.scheduler.add_job(
                self._relist_all, "interval", seconds=self.config.relist_interval, id="relist"
            )
        # The first (time, seq) sample, taken before the scheduler's thread can run the
        # same job: the samples are not shared between threads.
        self._purge_tombstones()
        self.scheduler.start()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        # Health first: /healthz answers (with "starting") while contexts connect.
        self.http = ThreadingHTTPServer(_split(self.config.http_address), _http_handler(self))
        http_address = "{}:{}".format(*self.http.server_address[:2])
        threading.Thread(target=self.http.serve_forever, name="http", daemon=True).start()
        self.manager.start()
        if self.leases is not None:
            self.leases.start()
        self.store.heartbeat()
        self._start_jobs()
        self.reloader.start()

        # The initial lists parse every object once; hand that memory back as soon as
        # they are in, not at the next periodic trim.
        def trim_when_synced() -> None:
            if self.manager.wait_synced(3600):
                trim_memory()

        threading.Thread(
            target=trim_when_synced,
            name="trim-after-sync",
            daemon=True,
        ).start()
        host, port = _split(self.config.grpc_address)
        listening: list[str] = []
        self.grpc = serve_plugin(
            self.plugin, f"{host}:{port}", tls=self.grpc_tls, on_listening=listening.append
        )
        log.info(
            "k8s-watcher daemon: %d contexts, cache %s, plugin on %s, health/metrics on http://%s",
            len(self.manager.contexts), self.config.cache, listening[0], http_address,
        )  # fmt: skip
        if self.config.ready_file is not None:
            write_ready_file(self.config.ready_file, grpc_address=listening[0], http_address=http_address)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping: closing watches and flushing the cache")
        self.scheduler.shutdown(wait=False)
        self.reloader.stop()
        self.grpc.stop(grace=5).wait(10)
        self.http.shutdown()
        if self.leases is not None:
            # Each held context: informers stopped, writes committed, Lease released, so
            # the other replicas take over at their next round instead of after expiry.
            self.leases.stop(release=True)
        self.manager.stop()
        self.store.close()
        log.info("stopped cleanly")

    def run_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then stop with everything flushed; SIGHUP
        reloads the kubeconfig."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reloader.request())
        self.start()
        done.wait()
        self.stop()
