"""Informers: list, then watch, each resource of each context into the cache.

The layering follows client-go's Reflector and kopf's watching module:

* :meth:`ResourceInformer.run` - the infinite loop. Absorbs every failure: backs
  off on transport errors, 429 and 5xx (re-watching from the same resourceVersion,
  no relist), relists on 410 Gone, parks a forbidden resource and retries it
  slowly. Ends only when asked to stop.
* :meth:`ResourceInformer._sync_once` - one list-then-watch cycle. Lists only when
  there is no resourceVersion to resume from; then watches until the server ends
  the request. Absorbs nothing.
* :meth:`ResourceInformer._watch` / ``_list`` - one request each.

State machine (``InformerStatus.state``): ``starting -> listing -> watching``,
``watching -> listing`` on 410, ``* -> backoff -> watching|listing`` on transient
errors, ``* -> forbidden`` on 401/403, ``* -> error`` on anything else (retried
with backoff), ``stopped`` at the end. ``listed`` is the one-shot state of a relist
outside the daemon (:meth:`ResourceInformer.relist`: listed, not watching).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from watcher.discovery import EXCLUDED, REDISCOVER_SECONDS, Served, discover, plan_builtins, plan_discovered
from watcher.kube import (
    JSON,
    PARTIAL_LIST,
    PARTIAL_OBJECT,
    ApiError,
    KubeClient,
    WatchStream,
    is_expired,
    is_forbidden,
    is_not_found,
    is_retryable,
    is_transport,
    is_unsupported_request,
)
from watcher.resources import CRD, RESOURCES, ResourceDescriptor, custom_object_descriptor
from watcher.state import UNSERVED, CacheStore, InformerStatus

log = logging.getLogger(__name__)

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


class WatchExpired(Exception):
    """HTTP 410 / ERROR 410: the resourceVersion is older than the server keeps."""


class WatchBroken(Exception):
    """An established watch broke (connection cut, reset, server gone) after it had
    delivered events or run for a while: re-watch promptly, without exponential backoff."""


class StreamingListUnsupported(Exception):
    """The server refused sendInitialEvents for this resource (no watch cache, old server)."""


@dataclass
class Backoff:
    """Exponential backoff with jitter, as client-go's (0.8 s doubling to 30 s), reset
    after ``reset_after`` seconds without a failure."""

    initial: float = 0.8
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0
    reset_after: float = 120.0
    _current: float = 0.0
    _last_failure: float = 0.0

    def next_delay(self) -> float:
        now = time.monotonic()
        if not self._current or now - self._last_failure > self.reset_after:
            self._current = self.initial
        else:
            self._current = min(self._current * self.factor, self.cap)
        self._last_failure = now
        # Jitter spreads reconnects of many informers; it never takes a delay past the cap.
        return min(self._current * (1 + random.random() * self.jitter), self.cap)


@dataclass
class InformerOptions:
    page_size: int = 500
    #: Objects of a streaming list's initial state written per transaction: small, so
    #: that few parsed objects are held in memory at once.
    initial_flush: int = 100
    #: Server-side watch timeout is drawn from this range (client-go: 5-10 minutes),
    #: so that thousands of watches do not all reconnect at the same moment.
    watch_timeout_range: tuple[int, int] = (300, 600)
    #: Client read timeout above the server's: only a dead connection exceeds it.
    read_timeout_slack: float = 30.0
    forbidden_retry: float = 300.0
    streaming_list: bool = True
    list_semaphore: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(4))


class ResourceInformer:
    """List-and-watch one resource of one context into the cache."""

    def __init__(
        self,
        *,
        client: KubeClient,
        descriptor: ResourceDescriptor,
        store: CacheStore,
        options: InformerOptions,
        resume_from: str | None = None,
        streaming: bool = True,
    ) -> None:
        self.client = client
        self.descriptor = descriptor
        self.store = store
        self.options = options
        self.streaming = streaming and options.streaming_list
        self.stop_event = threading.Event()
        self.backoff = Backoff()
        self.status = InformerStatus(
            context=client.context, resource=descriptor.key, table_name=descriptor.table, state="starting"
        )
        # Resume: a stored resourceVersion means the cache already equals the server's
        # state as of that RV, so we watch from it and list nothing. Only a 410 on that
        # watch (the RV was compacted away) sends us back to listing.
        self.resource_version: str | None = resume_from
        #: After an expired RV, list with RV "" (a consistent read from etcd), never "0":
        #: the watch cache that served "0" may be just as stale as what expired.
        self._consistent_list = False
        self._thread: threading.Thread | None = None
        self._stream: WatchStream | None = None
        self._relist_requested = False

    @property
    def name(self) -> str:
        return f"{self.client.context}/{self.descriptor.key}"

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"informer {self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _set_state(self, state: str, error: str | None = None) -> None:
        self.status.state = state
        self.status.resource_version = self.resource_version
        if error is not None:
            self.status.last_error = error
        self.status.updated_at = time.time()
        self.store.write_status(self.status)

    def request_relist(self) -> None:
        """Make the running loop relist (a safety net against missed events)."""
        self._relist_requested = True
        stream = self._stream
        if stream is not None:
            stream.close()

    def relist(self) -> None:
        """One consistent paginated LIST into the cache, and no watch: the plugin's
        fallback when no daemon keeps the cache warm."""
        self._consistent_list = True
        self._list()
        self._set_state("listed")

    def record_failure(self, exc: ApiError) -> None:
        self.status.errors += 1
        self._set_state("forbidden" if is_forbidden(exc) else "error", str(exc))

    # -- layer 1: the infinite loop ------------------------------------------

    def run(self) -> None:
        """Keep the cache in step with the server until stopped; absorb every failure."""
        while not self.stop_event.is_set():
            if self._relist_requested:
                self._relist_requested = False
                self.resource_version = None
            try:
                self._sync_once()
            except WatchExpired as exc:
                log.info(
                    "%s: resourceVersion %s expired (%s); relisting", self.name, self.resource_version, exc
                )
                self.resource_version = None
                self._consistent_list = True
                self.status.relists += 1
            except WatchBroken as exc:
                if self.stop_event.is_set():
                    break
                self.status.errors += 1
                delay = random.uniform(0.05, 0.25)
                log.info("%s: %s; re-watching from RV %s", self.name, exc, self.resource_version)
                self._set_state("backoff", str(exc))
                self.stop_event.wait(delay)
            except ApiError as exc:
                if self.stop_event.is_set():
                    break
                self.status.errors += 1
                if is_forbidden(exc):
                    log.warning(
                        "%s: %s; parked as forbidden, retrying in %.0fs",
                        self.name,
                        exc,
                        self.options.forbidden_retry,
                    )
                    self._set_state("forbidden", str(exc))
                    self.stop_event.wait(self.options.forbidden_retry)
                    continue
                if is_not_found(exc) and self.descriptor.custom:
                    # The CRD is gone (or not yet served); the manager stops us.
                    self._set_state("error", str(exc))
                    self.stop_event.wait(self.backoff.next_delay())
                    continue
                delay = self.backoff.next_delay()
                state = "backoff" if is_retryable(exc) else "error"
                log.warning(
                    "%s: %s; %s for %.1fs, then re-watch from RV %s",
                    self.name,
                    exc,
                    state,
                    delay,
                    self.resource_version,
                )
                self._set_state(state, str(exc))
                self.stop_event.wait(delay)
            except Exception as exc:
                self.status.errors += 1
                delay = self.backoff.next_delay()
                log.exception("%s: unexpected failure; retrying in %.1fs", self.name, delay)
                self._set_state("error", f"{type(exc).__name__}: {exc}")
                self.stop_event.wait(delay)
        self._set_state("stopped")

    # -- layer 2: one list-then-watch cycle ----------------------------------

    def _sync_once(self) -> None:
        if self.resource_version is None:
            if self.streaming:
                try:
                    self._watch(streaming_list=True)
                    return
                except StreamingListUnsupported as exc:
                    log.info("%s: streaming list unsupported (%s); using LIST", self.name, exc)
                    self.streaming = False
            self._list()
        self._watch(streaming_list=False)

    # -- layer 3: single requests --------------------------------------------

    def _list(self) -> None:
        """Paginated LIST into the cache; the cache then equals the list (deletions too)."""
        self._set_state("listing")
        desc = self.descriptor
        accept = PARTIAL_LIST if desc.metadata_only else JSON
        # RV "0": any state the API server has (its watch cache) - cheap for the server.
        # RV "": a consistent read, needed after a 410 (see _consistent_list).
        rv = "" if self._consistent_list else "0"
        with self.options.list_semaphore:
            gen = self.store.begin_relist()
            cont: str | None = None
            count = 0
            while True:
                query: dict[str, Any] = {"limit": self.options.page_size}
                if cont:
                    query["continue"] = cont
                else:
                    query["resourceVersion"] = rv
                    if rv == "0":
                        query["resourceVersionMatch"] = "NotOlderThan"
                try:
                    page = self.client.get(desc.collection_path(), query, accept=accept)
                except ApiError as exc:
                    if is_expired(exc) and cont:
                        # The continue token expired (about 5 min): start over, consistently.
                        log.info("%s: continue token expired; restarting the list", self.name)
                        rv, cont, count = "", None, 0
                        gen = self.store.begin_relist()
                        continue
                    if is_expired(exc):
                        raise WatchExpired(str(exc)) from exc
                    raise
                items = page.get("items") or []
                count += len(items)
                self.store.relist_page(self.client.context, desc, items, gen)
                cont = (page.get("metadata") or {}).get("continue")
                if not cont:
                    break
        self.resource_version = page["metadata"]["resourceVersion"]
        self._consistent_list = False
        self.status.lists += 1
        self.status.last_list_at = time.time()
        self.status.resource_version = self.resource_version
        self.store.end_relist(self.client.context, desc, gen, self._status_copy())
        log.info("%s: listed %d objects at RV %s", self.name, count, self.resource_version)

    def _status_copy(self) -> InformerStatus:
        self.status.updated_at = time.time()
        return InformerStatus(**self.status.__dict__)

    def _watch(self, *, streaming_list: bool) -> None:
        """One WATCH request, applied to the cache until the server ends it.

        With ``streaming_list`` the server first sends the whole current state as
        ADDED events, closed by a BOOKMARK annotated ``k8s.io/initial-events-end``;
        that replaces LIST and the same request goes on as an ordinary watch.
        """
        desc = self.descriptor
        low, high = self.options.watch_timeout_range
        timeout = random.randint(low, high)
        query: dict[str, Any] = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout,
        }
        if streaming_list:
            query.update(sendInitialEvents="true", resourceVersionMatch="NotOlderThan", resourceVersion="")
        else:
            query["resourceVersion"] = self.resource_version
        accept = PARTIAL_OBJECT if desc.metadata_only else JSON
        gen = self.store.begin_relist() if streaming_list else None
        initial: list[dict[str, Any]] = []
        self._set_state("listing" if streaming_list else "watching")
        # The initial state of a streaming list takes a listing slot, like a LIST: it
        # bounds how many informers hold pages of parsed objects at once (memory) and
        # how hard a (re)starting daemon hits the API servers.
        slot = self.options.list_semaphore if streaming_list else None
        if slot is not None:
            slot.acquire()
        try:
            try:
                events = self.client.stream(
                    desc.collection_path(),
                    query,
                    accept=accept,
                    read_timeout=timeout + self.options.read_timeout_slack,
                )
            except ApiError as exc:
                if is_expired(exc):
                    raise WatchExpired(str(exc)) from exc
                if streaming_list and is_unsupported_request(exc):
                    raise StreamingListUnsupported(str(exc)) from exc
                raise
            self.status.watches += 1
            self._stream = events
            # A stop or relist asked for while no stream was open (during a LIST, a
            # backoff, or while waiting for a slot) must not wait for this watch's timeout.
            if self.stop_event.is_set() or self._relist_requested:
                events.close()
            opened, delivered = time.monotonic(), 0
            try:
                for batch in events:
                    delivered += len(batch)
                    gen, initial = self._apply_batch(batch, gen, initial)
                    if slot is not None and gen is None:
                        slot.release()
                        slot = None
            except ApiError as exc:
                # A watch that worked and then broke is a network event, not a failing
                # server: back to watching at once. One that broke at once backs off.
                if is_transport(exc) and (delivered or time.monotonic() - opened > 1.0):
                    raise WatchBroken(str(exc)) from exc
                raise
            finally:
                self._stream = None
        finally:
            if slot is not None:
                slot.release()
        # Ended before the initial-events-end bookmark: only a server that does not
        # stream lists does that. We closed it ourselves on stop or on a relist request
        # (the loop then starts a new streaming list): that says nothing about the server.
        if gen is not None and not self.stop_event.is_set() and not self._relist_requested:
            raise StreamingListUnsupported(
                "the server ended the watch before the initial-events-end bookmark"
            )

    def _apply_batch(
        self, batch: list[dict[str, Any]], gen: int | None, initial: list[dict[str, Any]]
    ) -> tuple[int | None, list[dict[str, Any]]]:
        """Apply the events of one network read; returns the streaming-list progress
        (generation and buffered initial objects; ``None`` once the initial state is in)."""
        desc = self.descriptor
        pending: list[tuple[str, dict[str, Any]]] = []
        for ev in batch:
            kind, obj = str(ev.get("type")), ev.get("object") or {}
            if kind == "ERROR":
                self._flush(pending)
                raise self._watch_error(obj, streaming_list=gen is not None)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if gen is None:
                # Every event, BOOKMARK included, advances the RV we resume from.
                if rv:
                    self.resource_version = rv
                if kind != "BOOKMARK":
                    self.status.events += 1
                    self.status.last_event_at = time.time()
                pending.append((kind, obj))
            elif kind == "ADDED":
                initial.append(obj)
                if len(initial) >= self.options.initial_flush:
                    self.store.relist_page(self.client.context, desc, initial, gen)
                    initial = []
            elif (
                kind == "BOOKMARK"
                and (obj["metadata"].get("annotations") or {}).get(INITIAL_EVENTS_END) == "true"
            ):
                # The initial state is complete: the cache equals it as of this RV.
                self.store.relist_page(self.client.context, desc, initial, gen)
                self.resource_version = rv
                self.status.lists += 1
                self.status.last_list_at = time.time()
                self.status.state = "watching"
                self.status.resource_version = rv
                self.store.end_relist(self.client.context, desc, gen, self._status_copy())
                log.info("%s: streamed initial state at RV %s", self.name, rv)
                gen, initial = None, []
        self._flush(pending)
        return gen, initial

    @staticmethod
    def _watch_error(status: dict[str, Any], *, streaming_list: bool) -> Exception:
        """The exception for an ERROR event (a Status object in the stream)."""
        message = str(status.get("message") or status)
        error = ApiError(int(status.get("code") or 0), str(status.get("reason") or "watch error"), message)
        if is_expired(error):
            return WatchExpired(message)
        if streaming_list and is_unsupported_request(error):
            return StreamingListUnsupported(message)
        return error

    def _flush(self, pending: list[tuple[str, dict[str, Any]]]) -> None:
        if not pending:
            return
        self.status.resource_version = self.resource_version
        self.store.apply_events(self.client.context, self.descriptor, pending, self._status_copy())


# --------------------------------------------------------------------------- per context


def _server_minor(version: dict[str, Any]) -> int:
    digits = "".join(ch for ch in str(version.get("minor", "")) if ch.isdigit())
    return int(digits) if digits else 0


def record_cluster_info(client: KubeClient, store: CacheStore) -> tuple[dict[str, Any] | None, str | None]:
    """Write what the kubeconfig says about the context, plus the server's /version (or
    why it could not be read), to the cache. Returns the version document or the error."""
    info = client.info
    values: dict[str, Any] = {
        "cluster_name": info.cluster_name,
        "server": info.server,
        "ca_file": info.ca_file,
        "insecure_skip_verify": info.insecure_skip_verify,
        "namespace": info.namespace,
    }
    version: dict[str, Any] | None = None
    error: str | None = None
    try:
        version = client.get("/version", timeout=10)
        values.update(kubernetes_version=str(version.get("gitVersion")), last_error=None)
    except ApiError as exc:
        log.warning("%s: cannot read server version: %s", client.context, exc)
        error = str(exc)
        values.update(last_error=error)
    store.write_cluster(client.context, **values)
    return version, error


def cached_custom_descriptors(store: CacheStore, context: str) -> list[ResourceDescriptor]:
    """Descriptors for the instances of every CRD cached for ``context``."""
    crds = store.live_rows(context, CRD)
    return [d for d in (custom_object_descriptor(c) for c in crds) if d is not None]


def watchable_builtins(
    client: KubeClient,
    store: CacheStore,
    descriptors: Iterable[ResourceDescriptor],
    exclude: Iterable[str] = (),
) -> tuple[list[ResourceDescriptor], dict[str, Served] | None]:
    """The descriptors the context's server serves (all when its discovery cannot be
    read), and what it serves. Each one skipped is logged once; one the server does not
    serve gets an ``unserved`` checkpoint, so that a sync does not take it for cold."""
    descriptors = list(descriptors)
    served = discover(client)
    if served is None:
        return descriptors, None
    run, skipped = plan_builtins(served, descriptors, exclude)
    tables = {d.key: d.table for d in descriptors}
    for key, why in skipped.items():
        log.info("%s: %s %s; skipped", client.context, key, why)
        if why != EXCLUDED:
            store.write_status(
                InformerStatus(context=client.context, resource=key, table_name=tables[key], state=UNSERVED)
            )
    return run, served


class ContextInformers:
    """Every informer of one kubeconfig context, plus custom-resource discovery.

    The built-in descriptors the server serves are watched from the start (discovery
    says which). CRDs are themselves watched into the cache; :meth:`reconcile` reads the
    cached CRDs and starts an informer for each one's instances, and, with ``discovery``,
    one for every other served resource without a descriptor; it stops the informer and
    tombstones the objects of a CRD or resource that is gone. Reading the cache rather
    than hooking the CRD informer keeps the data flowing one way.
    """

    def __init__(
        self,
        *,
        client: KubeClient,
        store: CacheStore,
        descriptors: tuple[ResourceDescriptor, ...],
        options: InformerOptions,
        watch_custom_objects: bool = True,
        discovery: bool = True,
    ) -> None:
        self.client = client
        self.store = store
        self.options = options
        self.descriptors = descriptors
        self.watch_custom_objects = watch_custom_objects
        self.discovery = discovery
        self.informers: dict[str, ResourceInformer] = {}
        self.streaming = False
        self.kubernetes_version: str | None = None
        self._resume = store.resource_versions(client.context)
        self._served: dict[str, Served] | None = None
        self._served_at = 0.0
        self._skips_logged: set[str] = set()
        self._crd_versions: dict[str, str] = {}
        #: Set by the first reconcile that saw the CRDs listed: from then on every custom
        #: and discovered resource has its informer (until then the context is starting).
        self.complete = False

    @property
    def context(self) -> str:
        return self.client.context

    def refresh_cluster_info(self) -> None:
        """Record the server's version (and whether it can stream lists) in the cache."""
        version, _error = record_cluster_info(self.client, self.store)
        if version is not None:
            self.kubernetes_version = str(version.get("gitVersion"))
            # Streaming lists (WatchList) are served by default from 1.34 on.
            self.streaming = _server_minor(version) >= 34

    def start(self) -> None:
        self.refresh_cluster_info()
        builtins, self._served = watchable_builtins(self.client, self.store, self.descriptors)
        self._served_at = time.monotonic()
        for desc in builtins:
            self._start_informer(desc)
        # Custom and discovered resources cached by an earlier run resume at once too.
        self.reconcile()

    def _start_informer(self, desc: ResourceDescriptor) -> None:
        informer = ResourceInformer(
            client=self.client,
            descriptor=desc,
            store=self.store,
            options=self.options,
            resume_from=self._resume.get(desc.key),
            streaming=self.streaming,
        )
        self.informers[desc.key] = informer
        informer.start()

    def reconcile(self) -> None:
        """Start informers for new CRDs and newly served resources, stop and tombstone
        those of deleted CRDs and of resources no longer served."""
        if self.kubernetes_version is None:
            self.refresh_cluster_info()
        if not self.watch_custom_objects or CRD.key not in self.informers:
            self.complete = True  # nothing more will be started
            return
        if self.informers[CRD.key].status.lists == 0 and CRD.key not in self._resume:
            return  # CRDs not listed yet: absence of a CRD means nothing so far
        # The list's pages were queued before it counted: once committed, the cached CRDs
        # are complete (a custom resource missing here would pass for a discovered one).
        self.store.flush()
        crds = self.store.live_rows(self.context, CRD)
        wanted = {d.key: d for d in (custom_object_descriptor(c) for c in crds) if d is not None}
        self._follow_crd_changes(
            {f"{c['plural']}.{c['group']}": str(c["resource_version"]) for c in crds}, wanted
        )
        if self.discovery:
            discovered = self._discovered(set(wanted))
            if discovered is None:
                self.complete = True  # unknown what else the server serves: nothing to wait for
                return  # change nothing
            wanted.update((d.key, d) for d in discovered)
        builtin = {d.key for d in self.descriptors}
        running = set(self.informers) - builtin
        for key in running - wanted.keys():
            log.info("%s: %s is no longer served (CRD deleted?); stopping its informer", self.context, key)
            self.informers.pop(key).stop()
            self.store.drop_resource(self.context, key)
        for key in wanted.keys() - running:
            log.info("%s: watching %s", self.context, key)
            self._start_informer(wanted[key])
        # Resources cached by an earlier run that are gone meanwhile.
        for key in set(self._resume) - wanted.keys() - builtin:
            self.store.drop_resource(self.context, key)
            self._resume.pop(key)
        self.complete = True

    def _follow_crd_changes(self, versions: dict[str, str], wanted: dict[str, ResourceDescriptor]) -> None:
        """A changed CRD: its objects are relisted (the API server serves them from new
        storage, and a watch on the old one may hear of nothing more until it times out),
        through a new informer if the version to watch changed."""
        for key, informer in list(self.informers.items()):
            if not informer.descriptor.custom or self._crd_versions.get(
                key, versions.get(key)
            ) == versions.get(key):
                continue
            if key in wanted and wanted[key] != informer.descriptor:
                log.info("%s: CRD for %s changed its version; restarting its informer", self.context, key)
                self.informers.pop(key).stop()
                self._start_informer(wanted[key])
            elif key in wanted:
                log.info("%s: CRD for %s changed; relisting its objects", self.context, key)
                informer.request_relist()
        self._crd_versions = versions

    def _discovered(self, custom: set[str]) -> list[ResourceDescriptor] | None:
        """Descriptors for the served resources that have none and are not custom
        resources; discovery is read again every REDISCOVER_SECONDS (a tenth of it while
        it cannot be read). None while what the server serves is unknown."""
        wait = REDISCOVER_SECONDS if self._served is not None else REDISCOVER_SECONDS / 10
        if time.monotonic() - self._served_at > wait:
            self._served = discover(self.client) or self._served
            self._served_at = time.monotonic()
        if self._served is None:
            return None
        found, skipped = plan_discovered(self._served, self.descriptors, custom)
        for key in skipped.keys() - self._skips_logged:
            log.info("%s: %s %s; skipped", self.context, key, skipped[key])
        self._skips_logged.update(skipped)
        return found

    def statuses(self) -> list[InformerStatus]:
        return [inf.status for inf in list(self.informers.values())]

    @property
    def starting(self) -> bool:
        """The CRDs are listed but the informers of custom and discovered resources are
        not started yet (the next reconcile starts them): not synced."""
        crd = self.informers.get(CRD.key)
        listed = crd is not None and (crd.status.lists > 0 or CRD.key in self._resume)
        return listed and not self.complete

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    def join(self, timeout: float = 10) -> None:
        for informer in self.informers.values():
            informer.join(timeout)


class InformerManager:
    """All contexts' informers, and the periodic CRD reconcile."""

    def __init__(
        self,
        *,
        clients: list[KubeClient],
        store: CacheStore,
        descriptors: tuple[ResourceDescriptor, ...] = RESOURCES,
        options: InformerOptions | None = None,
        watch_custom_objects: bool = True,
        reconcile_interval: float = 2.0,
    ) -> None:
        self.store = store
        self.options = options or InformerOptions()
        self.contexts = [
            ContextInformers(
                client=c,
                store=store,
                descriptors=descriptors,
                options=self.options,
                watch_custom_objects=watch_custom_objects,
            )
            for c in clients
        ]
        self.reconcile_interval = reconcile_interval
        self._descriptors = descriptors
        self._watch_custom_objects = watch_custom_objects
        #: Held while reconciling and while the context list changes (a kubeconfig
        #: reload), so a removed context is never reconciled after it stopped.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Contexts start in parallel: an unreachable one (connect timeouts) must not
        # delay the others.
        starters = [threading.Thread(target=ctx.start, name=f"start {ctx.context}") for ctx in self.contexts]
        for t in starters:
            t.start()
        for t in starters:
            t.join()
        self._thread = threading.Thread(target=self._reconcile_loop, name="informer-reconcile", daemon=True)
        self._thread.start()

    def _reconcile_loop(self) -> None:
        relisted_for = 0
        while not self._stop.wait(self.reconcile_interval):
            if self.store.dropped_batches > relisted_for:
                relisted_for = self.store.dropped_batches
                log.error("cache writes were dropped: relisting every informer to resynchronise")
                self.request_relist_all()
            with self._lock:
                for ctx in self.contexts:
                    try:
                        ctx.reconcile()
                    except Exception:
                        log.exception("%s: reconcile failed", ctx.context)

    def add(self, client: KubeClient) -> None:
        """Start watching one more context (a kubeconfig reload); its informers resume
        from the resourceVersions stored for it, if any."""
        self.store.flush()  # the checkpoints of a context just removed are committed
        ctx = ContextInformers(
            client=client,
            store=self.store,
            descriptors=self._descriptors,
            options=self.options,
            watch_custom_objects=self._watch_custom_objects,
        )
        ctx.start()
        with self._lock:
            self.contexts = [*self.contexts, ctx]

    def remove(self, name: str) -> bool:
        """Stop watching a context and wait for its informers to end; False if not watched."""
        with self._lock:
            found = [c for c in self.contexts if c.context == name]
            self.contexts = [c for c in self.contexts if c.context != name]
        for ctx in found:
            ctx.stop()
        for ctx in found:
            ctx.join()
            ctx.client.close()
        return bool(found)

    def request_relist_all(self) -> None:
        for ctx in self.contexts:
            for informer in list(ctx.informers.values()):
                informer.request_relist()

    def statuses(self) -> list[InformerStatus]:
        return [s for ctx in self.contexts for s in ctx.statuses()]

    def contexts_starting(self) -> int:
        """Contexts whose custom and discovered resources are not all watched yet."""
        return sum(1 for ctx in self.contexts if ctx.starting)

    def wait_synced(self, timeout: float = 60) -> bool:
        """Wait until every informer has listed (or resumed) and is watching."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.contexts_starting() and all(s.state == "watching" for s in self.statuses()):
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        for ctx in self.contexts:
            ctx.stop()
        for ctx in self.contexts:
            ctx.join()
        self.store.flush()
