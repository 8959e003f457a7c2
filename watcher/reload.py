"""Noticing an edited kubeconfig while the daemon runs.

:class:`KubeconfigWatch` keeps what the daemon's contexts were built from (each
context's cluster and user entries, fingerprinted) and, when asked, says which
contexts were added, removed or changed; it only reads. :class:`KubeconfigReloader`
asks it on SIGHUP and periodically, and hands the answer to a :class:`ContextTarget`.
A lone daemon's target (:class:`WatchedContexts`) starts informers for a new context,
stops them for a removed one (whose objects are tombstoned, so incremental syncs
delete them) and rebuilds them for a changed one (resuming from the stored RVs); a
replica's (``watcher.replicas``) lets the Leases decide who watches what.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from watcher.informers import InformerManager
from watcher.kube import KubeClient
from watcher.kubeconfig import KubeconfigError, context_entries, read_kubeconfig
from watcher.state import CacheStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextChanges:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    #: Contexts whose cluster, user or namespace changed: rebuilt, resuming from their RVs.
    changed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def _stamp(path: Path) -> str:
    """Changes when the file's content may have: mtime and size, then a hash of the
    bytes (an editor that restores the mtime, or a ConfigMap's symlink swap, is caught
    by the hash on the next forced check). A missing file (in-cluster) hashes what
    stands in for it."""
    try:
        data = path.read_bytes()
        stat = path.stat()
        return f"{stat.st_mtime_ns}:{stat.st_size}:{hashlib.sha256(data).hexdigest()}"
    except FileNotFoundError:
        return "missing:" + hashlib.sha256(repr(read_kubeconfig(path)).encode()).hexdigest()


class KubeconfigWatch:
    """The contexts of ``path`` the daemon watches (``wanted``: names, or ``["*"]``)."""

    def __init__(self, path: Path, wanted: list[str], contexts: list[str]) -> None:
        self.path = path
        self.wanted = wanted
        self.stamp = _stamp(path)
        entries = context_entries(path)
        self.fingerprints = {name: entries[name].fingerprint for name in contexts}
        #: Bumped by every reload that changed the watched contexts.
        self.generation = 1

    @property
    def contexts(self) -> list[str]:
        return list(self.fingerprints)

    def selected(self, available: list[str]) -> list[str]:
        if "*" in self.wanted:
            return available
        return [c for c in self.wanted if c in available]

    def check(self) -> ContextChanges:
        """What changed since the last check (raises KubeconfigError when the file
        cannot be used: the daemon keeps watching what it watches and says so)."""
        stamp = _stamp(self.path)
        if stamp == self.stamp:
            return ContextChanges()
        entries = context_entries(self.path)
        new = {name: entries[name].fingerprint for name in self.selected(list(entries))}
        old = self.fingerprints
        changes = ContextChanges(
            added=tuple(c for c in new if c not in old),
            removed=tuple(c for c in old if c not in new),
            changed=tuple(c for c in new if c in old and new[c] != old[c]),
        )
        self.stamp, self.fingerprints = stamp, new
        if changes:
            self.generation += 1
        return changes


class ContextTarget(Protocol):
    """What a kubeconfig change is applied to."""

    def apply(self, changes: ContextChanges, contexts: list[str]) -> None:
        """Apply ``changes``; ``contexts`` are all the contexts to watch from now on."""


def client_or_report(
    ctx: str, *, store: CacheStore, make_client: Callable[[str], KubeClient]
) -> KubeClient | None:
    """``ctx``'s client, or None when its kubeconfig entries cannot make one (a bad
    server URL, CA, certificate data, exec or auth-provider entry): then the reason is
    logged and recorded in its k8s_clusters row, which ``status`` and syncs show.

    The one policy for a bad entry, at daemon start as on every reload: that context is
    not watched, the others are (a fixed entry is a changed context at the next reload).
    """
    try:
        return make_client(ctx)
    except KubeconfigError as exc:
        log.error("%s: cannot be watched: %s", ctx, exc)
        store.write_cluster(ctx, last_error=str(exc))
        return None


def start_clients(
    contexts: list[str], *, store: CacheStore, make_client: Callable[[str], KubeClient]
) -> list[KubeClient]:
    """The clients the daemon starts with: one per context whose entries are good."""
    clients = [client_or_report(ctx, store=store, make_client=make_client) for ctx in contexts]
    return [c for c in clients if c is not None]


def start_watching(
    ctx: str,
    what: str,
    *,
    manager: InformerManager,
    store: CacheStore,
    make_client: Callable[[str], KubeClient],
) -> None:
    """Start ``ctx``'s informers, unless its entries are bad (:func:`client_or_report`)."""
    client = client_or_report(ctx, store=store, make_client=make_client)
    if client is not None:
        manager.add(client)
        log.info("%s: %s", ctx, what)


class WatchedContexts:
    """A lone daemon's contexts: it watches every one of them itself."""

    def __init__(
        self, *, manager: InformerManager, store: CacheStore, make_client: Callable[[str], KubeClient]
    ) -> None:
        self.manager = manager
        self.store = store
        self.make_client = make_client

    def apply(self, changes: ContextChanges, contexts: list[str]) -> None:
        for ctx in changes.removed:
            self.manager.remove(ctx)
            self.store.drop_context(ctx)
            log.info("%s: removed from the kubeconfig; informers stopped, objects tombstoned", ctx)
        for ctx in changes.changed:
            self.manager.remove(ctx)
            self.start(ctx, "rebuilt with its new cluster/user entries")
        for ctx in changes.added:
            self.store.unretire_context(ctx)
            self.start(ctx, "added: watching it")

    def start(self, ctx: str, what: str) -> None:
        start_watching(ctx, what, manager=self.manager, store=self.store, make_client=self.make_client)


class KubeconfigReloader:
    """Applies kubeconfig changes to the daemon's contexts, on :meth:`request`
    (SIGHUP) and every ``interval`` seconds (0: on request only). A kubeconfig that
    cannot be read leaves everything running as it is, and says so in ``status``."""

    def __init__(
        self,
        watch: KubeconfigWatch,
        *,
        target: ContextTarget,
        store: CacheStore,
        on_contexts: Callable[[list[str]], None],
        interval: float,
    ) -> None:
        self.watch = watch
        self.target = target
        self.store = store
        self.on_contexts = on_contexts
        self.interval = interval
        self._requested = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._record(error="")
        self._thread = threading.Thread(target=self._loop, name="kubeconfig-reload", daemon=True)
        self._thread.start()

    def request(self) -> None:
        """Check now (signal-handler safe: only sets an event)."""
        self._requested.set()

    def stop(self) -> None:
        self._stopped.set()
        self._requested.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        while not self._stopped.is_set():
            forced = self._requested.wait(self.interval if self.interval > 0 else None)
            self._requested.clear()
            if self._stopped.is_set():
                return
            try:
                self.reload(reason="SIGHUP" if forced else "periodic check")
            except Exception:
                log.exception("kubeconfig reload failed")

    def reload(self, *, reason: str) -> ContextChanges:
        try:
            changes = self.watch.check()
        except KubeconfigError as exc:
            log.error(
                "kubeconfig not reloaded (%s): %s; the %d watched contexts go on",
                reason,
                exc,
                len(self.watch.contexts),
            )
            self._record(error=str(exc))
            return ContextChanges()
        if not changes:
            self._record(error="")
            return changes
        log.info(
            "kubeconfig %s changed (%s): added %s, removed %s, changed %s",
            self.watch.path, reason, list(changes.added), list(changes.removed), list(changes.changed),
        )  # fmt: skip
        self.target.apply(changes, self.watch.contexts)
        self.on_contexts(self.watch.contexts)
        self._record(error="", loaded=True)
        return changes

    def _record(self, *, error: str, loaded: bool = False) -> None:
        now = str(time.time())
        values = {
            "kubeconfig_path": str(self.watch.path),
            "kubeconfig_checked_at": now,
            "kubeconfig_error": error,
        }
        values["kubeconfig_generation"] = str(self.watch.generation)
        if loaded or self._thread is None:
            values["kubeconfig_loaded_at"] = now
        self.store.write_meta(**values)
