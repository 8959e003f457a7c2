"""Replicas: daemons sharing the contexts by Lease and writing one PostgreSQL cache.

:class:`~watcher.leases.LeaseCoordinator` decides which contexts this replica holds;
:class:`ReplicaContexts` turns its decisions into cache ownership and informers:

- acquired: claim the context in the cache first (a previous owner that may still be
  writing is fenced off at its next write), then start its informers, which resume
  from the resourceVersions the previous owner committed: no relist unless they
  expired meanwhile;
- released (handed over, lost, or the daemon stopping): stop its informers, commit
  their queued writes, tombstone it if it left the kubeconfig, give up ownership;
  only then does the coordinator release the Lease.

Starting a context's informers talks to its API server (version, discovery) and may
wait for connect timeouts: it runs on a thread of its own, so the coordinator's
rounds (and lease renewals) never wait for a slow cluster.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from watcher.informers import InformerManager
from watcher.kube import KubeClient
from watcher.leases import LeaseCoordinator
from watcher.reload import ContextChanges, start_watching
from watcher.state import CacheStore

log = logging.getLogger(__name__)


class ReplicaContexts:
    """The contexts this replica holds by Lease (the coordinator's callbacks), and the
    kubeconfig changes that reach them (a :class:`~watcher.reload.ContextTarget`)."""

    def __init__(
        self,
        *,
        manager: InformerManager,
        store: CacheStore,
        make_client: Callable[[str], KubeClient],
        contexts: list[str],
    ) -> None:
        self.manager = manager
        self.store = store
        self.make_client = make_client
        self.coordinator: LeaseCoordinator | None = None
        self._configured = set(contexts)
        self._held: set[str] = set()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, ctx: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(ctx, threading.Lock())

    # -- the coordinator's callbacks ------------------------------------------------

    def acquired(self, ctx: str) -> None:
        self.store.claim_context(ctx)
        self.store.unretire_context(ctx)
        with self._guard:
            self._held.add(ctx)
        threading.Thread(target=self._start, args=(ctx,), name=f"start {ctx}", daemon=True).start()

    def _start(self, ctx: str) -> None:
        with self._lock(ctx):
            with self._guard:
                if ctx not in self._held:
                    return  # released before it could start
            what = "watching it (Lease held)"
            start_watching(ctx, what, manager=self.manager, store=self.store, make_client=self.make_client)

    def released(self, ctx: str) -> None:
        with self._guard:
            self._held.discard(ctx)
            removed = ctx not in self._configured
        with self._lock(ctx):  # a start in progress finishes first
            self.manager.remove(ctx)
        self.store.flush(history=False)
        if removed:
            self.store.drop_context(ctx)
            log.info("%s: removed from the kubeconfig; objects tombstoned", ctx)
        self.store.release_context(ctx)
        log.info("%s: informers stopped, writes committed, Lease given back", ctx)

    # -- kubeconfig changes ---------------------------------------------------------

    def apply(self, changes: ContextChanges, contexts: list[str]) -> None:
        """Added and removed contexts go to the coordinator (whoever holds a removed one
        tombstones it as it lets go); a changed one held here is rebuilt."""
        with self._guard:
            self._configured = set(contexts)
            rebuild = [ctx for ctx in changes.changed if ctx in self._held]
        for ctx in rebuild:
            with self._lock(ctx):
                self.manager.remove(ctx)
            self._start(ctx)
        if self.coordinator is not None:
            self.coordinator.set_contexts(contexts)

    def held(self) -> list[str]:
        with self._guard:
            return sorted(self._held)
