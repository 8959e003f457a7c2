"""Before a sync reads the cache: make sure what it reads is there and current.

Two ways, one per place the plugin runs:

* :class:`Relister` (``registry: local``, no daemon keeping the cache warm): relists
  whatever (context, resource) is cold (never listed) or stale (older than
  ``max_staleness`` with no live watch) into the cache, and is then the cache's only
  writer. A cache that a running daemon writes is refused by the cache itself
  (``CacheLocked``); with a live daemon nothing is stale, so that only happens when a
  daemon runs with fewer contexts than the sync asks for.
* :class:`DaemonInformers` (``registry: grpc``, inside the daemon): the daemon's own
  informers and store are the writer; a sync waits for informers that have not listed
  yet and reports contexts the daemon does not watch, and relists nothing itself.

Both return the contexts that could not be made current, with the reason; the sync
still sends what the cache holds for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

from watcher.catalog import ALL_TABLES, HISTORY_TABLES, needed_resources
from watcher.discovery import plan_discovered
from watcher.informers import (
    InformerOptions,
    ListSlots,
    ResourceInformer,
    cached_custom_descriptors,
    record_cluster_info,
    watchable_builtins,
)
from watcher.kube import ApiError, KubeClient, probe_contexts
from watcher.kubeconfig import KubeconfigError
from watcher.polling import lister_for
from watcher.resources import (
    CRD,
    CUSTOM_OBJECTS_TABLE,
    RESOURCES,
    ResourceDescriptor,
)
from watcher.snapshot import Freshness, SnapshotReader
from watcher.spec import Spec
from watcher.state import UNSERVED, CacheStore, CacheUnusable, informer_state

if TYPE_CHECKING:
    from watcher.informers import InformerManager

log = logging.getLogger(__name__)


class Refresher(Protocol):
    """What the plugin asks of whoever keeps its cache current."""

    def refresh(self, spec: Spec, contexts: list[str], tables: tuple[str, ...]) -> dict[str, str]:
        """Make the cache current for these tables; returns {context: why it is not}."""
        ...

    def test_connection(self, spec: Spec, contexts: list[str]) -> list[str]:
        """One line per context whose API server cannot be used."""
        ...


def stale_resources(
    fresh: Iterable[Freshness],
    contexts: list[str],
    resources: list[ResourceDescriptor],
    *,
    heartbeat: float,
    max_staleness: float,
    now: float,
) -> dict[str, list[ResourceDescriptor]]:
    """The (context, resource) pairs a sync must relist first, logged with the reason."""
    daemon_alive = now - heartbeat < max_staleness
    by_key = {(f.context, f.resource): f for f in fresh}
    todo: dict[str, list[ResourceDescriptor]] = {}
    for ctx in contexts:
        for desc in resources:
            f = by_key.get((ctx, desc.key))
            if (
                f is not None
                and f.state == UNSERVED
                and (daemon_alive or now - f.updated_at <= max_staleness)
            ):
                continue  # the server does not serve it: nothing to list
            if f is None or not f.listed:
                reason = "cold (never listed)"
            elif informer_state(f.state).synced and daemon_alive:
                continue
            elif now - f.updated_at > max_staleness:
                reason = f"stale ({now - f.updated_at:.0f}s old, no live watch)"
            else:
                continue
            log.info("cache for %s/%s is %s: relisting", ctx, desc.key, reason)
            todo.setdefault(ctx, []).append(desc)
    return todo


class Relister:
    """The fallback relist outside the daemon: the cache's only writer while it runs."""

    def refresh(self, spec: Spec, contexts: list[str], tables: tuple[str, ...]) -> dict[str, str]:
        resources = needed_resources(tables, discovery=spec.discovery)
        try:
            with SnapshotReader.open(spec.cache) as snap:
                todo = stale_resources(
                    snap.freshness(),
                    contexts,
                    resources,
                    heartbeat=snap.daemon_heartbeat(),
                    max_staleness=spec.max_staleness,
                    now=time.time(),
                )
        except CacheUnusable as exc:
            log.info("no usable cache (%s): relisting everything", exc)
            todo = {ctx: resources for ctx in contexts}
        if not todo:
            return {}
        return self._relist(spec, todo, with_custom_objects=CUSTOM_OBJECTS_TABLE in tables)

    def test_connection(self, spec: Spec, contexts: list[str]) -> list[str]:
        return probe_contexts(spec.kubeconfig, contexts)

    def _relist(
        self, spec: Spec, todo: dict[str, list[ResourceDescriptor]], *, with_custom_objects: bool
    ) -> dict[str, str]:
        failures: dict[str, str] = {}
        store = CacheStore(spec.cache)
        options = InformerOptions(list_slots=ListSlots(spec.concurrency))
        try:
            with ThreadPoolExecutor(max_workers=max(1, min(8, len(todo)))) as pool:
                pending = {
                    ctx: pool.submit(_relist_context, spec, store, ctx, descs, options, with_custom_objects)
                    for ctx, descs in todo.items()
                }
                for ctx, fut in pending.items():
                    error = fut.result()
                    if error:
                        failures[ctx] = error
        finally:
            store.close()
        return failures


def _relist_context(
    spec: Spec,
    store: CacheStore,
    ctx: str,
    descs: list[ResourceDescriptor],
    options: InformerOptions,
    with_custom: bool,
) -> str | None:
    try:
        client = KubeClient(spec.kubeconfig, ctx)
    except KubeconfigError as exc:
        return str(exc)
    errors: list[str] = []
    try:
        _version, error = record_cluster_info(client, store)
        if error is not None:
            # The server does not answer /version (unreachable, hanging, bad TLS or
            # credentials): listing 30 resources would fail 30 times more slowly.
            return error
        descs, served = watchable_builtins(client, store, descs, spec.exclude)

        def relist_all(todo: list[ResourceDescriptor]) -> list[str]:
            # Every resource at once on the I/O loop (the context's one connection);
            # the list slots bound how many lists run together.
            async def relist() -> list[str | None]:
                return await asyncio.gather(*(_relist_one(client, store, d, options) for d in todo))

            results = client.io.run(relist())
            return [f"{d.key}: {e}" for d, e in zip(todo, results, strict=True) if e]

        builtin_errors = relist_all(descs)
        errors += builtin_errors
        store.flush(history=False)
        custom = cached_custom_descriptors(store, ctx)
        if with_custom and CRD in descs:
            errors += relist_all(custom)
        if spec.discovery and served is not None:
            discovered, skipped = plan_discovered(served, RESOURCES, {d.key for d in custom}, spec.exclude)
            for key, why in skipped.items():
                log.info("%s: %s %s; skipped", ctx, key, why)
            errors += relist_all(discovered)
    finally:
        client.close()
    store.flush()
    if builtin_errors and len(builtin_errors) == len(descs):
        return "; ".join(builtin_errors[:3])
    for e in errors:
        log.warning("%s: relist failed for %s", ctx, e)
    return None


async def _relist_one(
    client: KubeClient, store: CacheStore, desc: ResourceDescriptor, options: InformerOptions
) -> str | None:
    informer = ResourceInformer(
        client=lister_for(client, desc), descriptor=desc, store=store, options=options, streaming=False
    )
    try:
        await informer.relist()
        return None
    except ApiError as exc:
        informer.record_failure(exc)
        return str(exc)


class DaemonInformers:
    """Inside the daemon: its informers keep the cache current, so a sync only waits
    (at most ``wait``) for informers still making their first list."""

    def __init__(self, manager: InformerManager, *, wait: float = 60.0) -> None:
        self.manager = manager
        self.wait = wait

    def refresh(self, spec: Spec, contexts: list[str], tables: tuple[str, ...]) -> dict[str, str]:
        watched = {ctx.context: ctx for ctx in self.manager.contexts}
        failures = {
            ctx: f"context {ctx} is not watched by this daemon (it watches {', '.join(watched) or 'none'})"
            for ctx in contexts
            if ctx not in watched
        }
        wanted = {d.key for d in needed_resources(tables)}
        static = set(ALL_TABLES)
        deadline = time.monotonic() + self.wait
        for ctx in (c for c in contexts if c in watched):
            while True:
                cold = [
                    s.resource
                    for s in watched[ctx].statuses()
                    if (s.resource in wanted or (spec.discovery and s.table_name not in static))
                    and not s.resource_version
                    and not informer_state(s.state).failing
                ]
                if not cold or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if cold:
                failures[ctx] = f"still listing {', '.join(sorted(cold))} after {self.wait:.0f}s"
        if any(t in HISTORY_TABLES for t in tables):
            # The writer derives the history from its log when it has nothing else to
            # write: what was logged until now is derived before the sync reads it.
            self.manager.store.flush()
        return failures

    def test_connection(self, spec: Spec, contexts: list[str]) -> list[str]:
        return probe_contexts(spec.kubeconfig, contexts)


class ReplicaGroup:
    """In a replica: the group's informers keep the shared cache current, each context
    watched by the replica holding its Lease (maybe another one), so a sync only waits
    (at most ``wait``) until the resources it needs are listed in the cache."""

    def __init__(self, *, wait: float = 60.0) -> None:
        self.wait = wait

    def refresh(self, spec: Spec, contexts: list[str], tables: tuple[str, ...]) -> dict[str, str]:
        wanted = {d.key for d in needed_resources(tables)}
        deadline = time.monotonic() + self.wait
        while True:
            with SnapshotReader.open(spec.cache) as snap:
                known = {(f.context, f.resource): f for f in snap.freshness()}
            cold = {
                ctx: sorted(
                    key
                    for key in wanted
                    if not ((f := known.get((ctx, key))) and (f.listed or informer_state(f.state).settled))
                )
                for ctx in contexts
            }
            cold = {ctx: keys for ctx, keys in cold.items() if keys}
            if not cold or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return {
            ctx: f"not listed by any replica after {self.wait:.0f}s: {', '.join(keys)}"
            for ctx, keys in cold.items()
        }

    def test_connection(self, spec: Spec, contexts: list[str]) -> list[str]:
        return probe_contexts(spec.kubeconfig, contexts)
