"""Informers: list, then watch, each resource of each context into the cache.

The layering follows client-go's Reflector and kopf's watching module:

* :meth:`ResourceInformer.run` - the infinite loop, one request a turn: a watch from
  the resourceVersion, or without one a streaming list or a LIST. Absorbs every
  failure (:meth:`ResourceInformer._after_failure`): backs off on transport errors,
  429 and 5xx (re-watching from the same resourceVersion, no relist; a
  ``Retry-After`` is a floor), relists on 410 Gone, parks a forbidden resource and
  retries it slowly. Ends only when asked to stop.
* :meth:`ResourceInformer._watch` / ``_list`` - one request each. Absorb nothing.

An informer is a coroutine on the process's I/O loop (``watcher.eventloop``), not a
thread: a fleet's 25,000 watches are 25,000 small tasks, and the watches of a context
are streams on one HTTP/2 connection (``watcher.kube``). It sees the world through
three seams, as client-go's reflector does: a :class:`ListerWatcher` (the API side:
``KubeClient``, or a scripted fake), a :class:`Sink` (the cache side: ``CacheStore``)
and a :class:`Clock` (waits and timestamps: a fake one makes the backoff schedule a
list of numbers in a unit test).

States are :class:`~watcher.state.InformerState`: ``starting -> listing -> watching``,
``watching -> listing`` on 410, ``* -> backoff -> watching|listing`` on transient
errors, ``* -> forbidden`` on 401/403, ``* -> error`` on anything else (retried with
backoff), ``stopped`` at the end; ``listed`` is the one-shot relist outside the daemon
(:meth:`ResourceInformer.relist`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from watcher.discovery import EXCLUDED, REDISCOVER_SECONDS, Served, discover, plan_builtins, plan_discovered
from watcher.eventloop import IoLoop, io_loop
from watcher.kube import (
    JSON,
    PARTIAL_LIST,
    PARTIAL_OBJECT,
    ApiError,
    KubeClient,
    is_expired,
    is_forbidden,
    is_not_found,
    is_retryable,
    is_transport,
    is_unsupported_request,
)
from watcher.polling import lister_for
from watcher.resources import CRD, RESOURCES, ResourceDescriptor, custom_object_descriptor
from watcher.state import UNSERVED, CacheStore, InformerState, InformerStatus, informer_state

log = logging.getLogger(__name__)

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


class WatchExpired(Exception):
    """HTTP 410 / ERROR 410: the resourceVersion is older than the server keeps."""


class WatchBroken(Exception):
    """An established watch broke (connection cut, reset, server gone) after it had
    delivered events or run for a while: re-watch promptly, without exponential backoff."""


class StreamingListUnsupported(Exception):
    """The server refused sendInitialEvents for this resource (no watch cache, old server)."""


# --------------------------------------------------------------------------- seams


class EventStream(Protocol):
    """An open watch: batches of events (one network read each); ``close`` ends it."""

    def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]: ...

    def close(self) -> None: ...

    def resumable(self) -> None:
        """Past the initial state: the stream may be ended early (the informer then
        re-watches from its RV), e.g. to let other watches take a turn."""


class ListerWatcher(Protocol):
    """The API side of an informer (``KubeClient``)."""

    context: str

    @property
    def server_key(self) -> str:
        """The API server: its informers share its list slots."""

    @property
    def crowded(self) -> bool:
        """Watches wait for a connection (HTTP/1.1): a watch should take a short turn."""

    async def aget(
        self, path: str, query: Mapping[str, Any] | None = None, *, accept: str = JSON, timeout: float = 60
    ) -> Any: ...

    async def awatch(
        self, path: str, query: Mapping[str, Any], *, accept: str = JSON, read_timeout: float
    ) -> EventStream: ...


class Sink(Protocol):
    """The cache side of an informer (``CacheStore``): every call only enqueues a write.
    A status passed in stays the informer's, which goes on changing it: the sink copies
    what it keeps before the call returns."""

    def begin_relist(self) -> int: ...

    def relist_page(
        self, context: str, desc: ResourceDescriptor, items: list[dict[str, Any]], gen: int
    ) -> None: ...

    def end_relist(
        self, context: str, desc: ResourceDescriptor, gen: int, status: InformerStatus
    ) -> None: ...

    def apply_events(
        self,
        context: str,
        desc: ResourceDescriptor,
        events: Iterable[tuple[str, dict[str, Any]]],
        status: InformerStatus,
    ) -> None: ...

    def write_status(self, status: InformerStatus) -> None: ...

    def write_statuses(self, statuses: Sequence[InformerStatus]) -> None: ...


class Clock:
    """Time as an informer sees it. Unit tests pass a fake that records the sleeps and
    returns at once. (A stop from another thread cancels a sleeping informer's task.)"""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = Clock()


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter, as client-go's (0.8 s doubling to 30 s), reset
    after ``reset_after`` seconds without a failure."""

    initial: float = 0.8
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0
    reset_after: float = 120.0
    clock: Clock = SYSTEM_CLOCK
    _current: float = 0.0
    _last_failure: float = 0.0

    def next_delay(self) -> float:
        now = self.clock.monotonic()
        if not self._current or now - self._last_failure > self.reset_after:
            self._current = self.initial
        else:
            self._current = min(self._current * self.factor, self.cap)
        self._last_failure = now
        # Jitter spreads reconnects of many informers; it never takes a delay past the cap.
        return min(self._current * (1 + random.random() * self.jitter), self.cap)


class ListSlots:
    """Initial lists (a LIST, or a streaming list's initial state) in progress at once,
    per API server: bounds the memory of parsed pages and how hard a (re)starting fleet
    hits each server. Used on the I/O loop only."""

    def __init__(self, per_server: int = 8) -> None:
        self.per_server = per_server
        self._slots: dict[str, asyncio.Semaphore] = {}

    def of(self, server: str) -> asyncio.Semaphore:
        slot = self._slots.get(server)
        if slot is None:
            slot = self._slots[server] = asyncio.Semaphore(self.per_server)
        return slot


class BookmarkCheckpoints:
    """Checkpoints that only bookmarks moved, written together every ``interval``
    seconds instead of one write per bookmark: a fleet's 25,000 watches each get a
    bookmark a minute, and the stored resourceVersion only serves a restart, for which
    a few seconds behind is as good (the watch replays what followed). The status
    written is the informer's *current* one, taken on the loop when the timer fires:
    every event up to its resourceVersion was enqueued before, so a deferred write
    never takes a checkpoint back. Used on the I/O loop only."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._pending: dict[int, ResourceInformer] = {}
        self._timer: asyncio.TimerHandle | None = None

    def defer(self, informer: ResourceInformer) -> None:
        self._pending[id(informer)] = informer
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        self._timer = None
        informers, self._pending = list(self._pending.values()), {}
        by_store: dict[int, tuple[Sink, list[InformerStatus]]] = {}
        for informer in informers:
            if informer.stopping:
                continue  # its stop writes its last checkpoint (and its context may be gone)
            _, statuses = by_store.setdefault(id(informer.store), (informer.store, []))
            # The informer's own status, not a copy: the sink copies what it keeps before
            # write_statuses returns (as for write_status), and a second copy of 2,000
            # statuses every 5 s was about 15 % of an idle fleet's loop time (py-spy).
            statuses.append(informer._current_status())
        for store, statuses in by_store.values():
            store.write_statuses(statuses)


class HeldSlot:
    """A list slot taken from its server's semaphore, given back once."""

    __slots__ = ("_semaphore",)

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore: asyncio.Semaphore | None = semaphore

    def give_back(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()
            self._semaphore = None


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
    list_slots: ListSlots = field(default_factory=ListSlots)
    #: A watch's server timeout while watches queue for HTTP/1.1 connections.
    crowded_watch_seconds: int = 15
    #: Where bookmark-only checkpoints wait to be written together (None: at once).
    bookmarks: BookmarkCheckpoints | None = None


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None  # not on a loop


class ResourceInformer:
    """List-and-watch one resource of one context into the cache."""

    # Slots: a fleet holds tens of thousands of these (a dict each would be ~1 KB).
    __slots__ = (
        "_consistent_list", "_finished", "_loop", "_relist_requested",
        "_started", "_stopping", "_stream", "_task", "backoff", "client", "clock", "descriptor",
        "options", "resource_version", "status", "store", "streaming",
    )  # fmt: skip

    def __init__(
        self,
        *,
        client: ListerWatcher,
        descriptor: ResourceDescriptor,
        store: Sink,
        options: InformerOptions,
        resume_from: str | None = None,
        streaming: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.client = client
        self.descriptor = descriptor
        self.store = store
        self.options = options
        self.clock = clock
        self.streaming = streaming and options.streaming_list
        self.backoff = Backoff(clock=clock)
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
        self._stream: EventStream | None = None
        self._relist_requested = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # Plain flags, not threading.Events: a fleet has tens of thousands of informers.
        self._started = self._finished = False

    @property
    def name(self) -> str:
        return f"{self.client.context}/{self.descriptor.key}"

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- lifecycle (any thread) ------------------------------------------------

    def start(self, io: IoLoop) -> None:
        """Run on ``io`` until stopped (its task: no concurrent future per informer)."""
        self._started = True
        io.call(self._create_task)

    def _create_task(self) -> None:
        # The task is kept by the loop until it runs, then by ``self._task`` (run sets it).
        asyncio.get_running_loop().create_task(self.run(), name=self.name)

    def stop(self) -> None:
        self._stopping = True
        self._poke()

    def join(self, timeout: float | None = None) -> None:
        """Wait (from another thread) until the loop ended, at most ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._started and not self._finished:
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.01)

    def request_relist(self) -> None:
        """Make the running loop relist (a safety net against missed events)."""
        self._relist_requested = True
        self._poke()

    def _poke(self) -> None:
        """Interrupt a wait or a running watch, on the informer's loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._interrupt()  # not running (yet): only the flags matter
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._interrupt()
        else:
            loop.call_soon_threadsafe(self._interrupt)

    def _interrupt(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._stopping:
            # Waiting for a list slot, a page or a connection: a stop from outside
            # cancels that wait. (A stop from the informer's own task - a scripted API
            # in a unit test - only sets the flag, which the loop reads next.)
            task = self._task
            if task is not None and not task.done() and task is not _current_task() and stream is None:
                task.cancel()

    def _set_state(self, state: str, error: str | None = None) -> None:
        unchanged = state == self.status.state and error is None
        self.status.state = state
        self.status.resource_version = self.resource_version
        if error is not None:
            self.status.last_error = error
        self.status.updated_at = self.clock.time()
        bookmarks = self.options.bookmarks
        if unchanged and bookmarks is not None:
            # A watch re-opened after its timeout (every 5-10 minutes, 55 a second at
            # 25,000 watches): only the RV moved, which the next grouped write carries.
            bookmarks.defer(self)
            return
        self.store.write_status(self.status)

    async def relist(self) -> None:
        """One consistent paginated LIST into the cache, and no watch: the plugin's
        fallback when no daemon keeps the cache warm."""
        self._consistent_list = True
        await self._list()
        self._set_state(InformerState.LISTED)

    def record_failure(self, exc: ApiError) -> None:
        self.status.errors += 1
        self._set_state(InformerState.FORBIDDEN if is_forbidden(exc) else InformerState.ERROR, str(exc))

    async def _wait(self, seconds: float) -> None:
        if not self._stopping:
            await self.clock.sleep(seconds)

    # -- layer 1: the infinite loop ------------------------------------------

    async def run(self) -> None:
        """Keep the cache in step with the server until stopped; absorb every failure.

        Each turn sends one request: a watch from the resourceVersion, or, without one, a
        streaming list (whose request goes on as the watch) or a LIST (the next turn
        watches from its resourceVersion). One coroutine for the loop and one for the
        request (:meth:`_watch`): a fleet's idle watches are 25,000 of these chains."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            while not self._stopping:
                if self._relist_requested:
                    self._relist_requested = False
                    self.resource_version = None
                try:
                    if self.resource_version is not None:
                        await self._watch(streaming_list=False)
                    elif self.streaming:
                        await self._watch(streaming_list=True)
                    else:
                        await self._list()
                except StreamingListUnsupported as exc:
                    log.info("%s: streaming list unsupported (%s); using LIST", self.name, exc)
                    self.streaming = False
                except (WatchExpired, WatchBroken, ApiError) as exc:
                    if self._stopping and not isinstance(exc, WatchExpired):
                        break
                    await self._after_failure(exc)
                except Exception as exc:
                    self.status.errors += 1
                    delay = self.backoff.next_delay()
                    log.exception("%s: unexpected failure; retrying in %.1fs", self.name, delay)
                    self._set_state(InformerState.ERROR, f"{type(exc).__name__}: {exc}")
                    await self._wait(delay)
        except asyncio.CancelledError:
            if not self._stopping:
                raise  # the loop is going away, not a stop of ours
        finally:
            if self._stopping:
                self._set_state(InformerState.STOPPED)
            self._finished = True

    async def _after_failure(self, exc: WatchExpired | WatchBroken | ApiError) -> None:
        """What a failed request means: relist, re-watch at once, or wait and retry."""
        if isinstance(exc, WatchExpired):
            log.info("%s: resourceVersion %s expired (%s); relisting", self.name, self.resource_version, exc)
            self.resource_version = None
            self._consistent_list = True
            self.status.relists += 1
        elif isinstance(exc, WatchBroken):
            self.status.errors += 1
            log.info("%s: %s; re-watching from RV %s", self.name, exc, self.resource_version)
            self._set_state(InformerState.BACKOFF, str(exc))
            await self._wait(random.uniform(0.05, 0.25))
        else:
            await self._after_api_error(exc)

    async def _after_api_error(self, exc: ApiError) -> None:
        self.status.errors += 1
        if is_forbidden(exc):
            log.warning(
                "%s: %s; parked as forbidden, retrying in %.0fs", self.name, exc, self.options.forbidden_retry
            )
            self._set_state(InformerState.FORBIDDEN, str(exc))
            await self._wait(self.options.forbidden_retry)
            return
        if is_not_found(exc) and self.descriptor.custom:
            # The CRD is gone (or not yet served); the manager stops us.
            self._set_state(InformerState.ERROR, str(exc))
            await self._wait(self.backoff.next_delay())
            return
        # API Priority and Fairness says how long to stay away: never less.
        delay = max(self.backoff.next_delay(), exc.retry_after or 0.0)
        state = InformerState.BACKOFF if is_retryable(exc) else InformerState.ERROR
        log.warning(
            "%s: %s; %s for %.1fs, then re-watch from RV %s",
            self.name,
            exc,
            state,
            delay,
            self.resource_version,
        )
        self._set_state(state, str(exc))
        await self._wait(delay)

    # -- layer 2: single requests --------------------------------------------

    async def _list(self) -> None:
        """Paginated LIST into the cache; the cache then equals the list (deletions too)."""
        self._set_state(InformerState.LISTING)
        async with self.options.list_slots.of(self.client.server_key):
            page, gen = await self._list_pages()
        self.resource_version = page["metadata"]["resourceVersion"]
        self._consistent_list = False
        self.status.lists += 1
        self.status.last_list_at = self.clock.time()
        self.status.resource_version = self.resource_version
        self.store.end_relist(self.client.context, self.descriptor, gen, self._status_copy())

    async def _list_pages(self) -> tuple[dict[str, Any], int]:
        """Every page into the cache; the last page and the list's generation."""
        desc = self.descriptor
        accept = PARTIAL_LIST if desc.metadata_only else JSON
        # RV "0": any state the API server has (its watch cache) - cheap for the server.
        # RV "": a consistent read, needed after a 410 (see _consistent_list).
        rv = "" if self._consistent_list else "0"
        gen = self.store.begin_relist()
        cont: str | None = None
        count = 0
        while True:
            query: dict[str, Any] = {"limit": self.options.page_size}
            if desc.field_selector:
                query["fieldSelector"] = desc.field_selector
            if cont:
                query["continue"] = cont
            else:
                query["resourceVersion"] = rv
                if rv == "0":
                    query["resourceVersionMatch"] = "NotOlderThan"
            try:
                page: dict[str, Any] = await self.client.aget(desc.collection_path(), query, accept=accept)
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
                log.info(
                    "%s: listed %d objects at RV %s", self.name, count, page["metadata"]["resourceVersion"]
                )
                return page, gen

    def _current_status(self) -> InformerStatus:
        """The status itself, stamped now: for a sink that copies it at once."""
        self.status.updated_at = self.clock.time()
        return self.status

    def _status_copy(self) -> InformerStatus:
        return dataclasses.replace(self._current_status())

    async def _watch(self, *, streaming_list: bool) -> None:
        """One WATCH request, applied to the cache until the server ends it.

        With ``streaming_list`` the server first sends the whole current state as
        ADDED events, closed by a BOOKMARK annotated ``k8s.io/initial-events-end``;
        that replaces LIST and the same request goes on as an ordinary watch.
        """
        query, accept, timeout = self._watch_request(streaming_list)
        self._set_state(InformerState.LISTING if streaming_list else InformerState.WATCHING)
        # The initial state of a streaming list takes a listing slot, like a LIST: it
        # bounds how many informers hold pages of parsed objects at once (memory) and
        # how hard a (re)starting daemon hits the API servers. It goes back as soon as
        # the initial state is in.
        slot: HeldSlot | None = None
        if streaming_list:
            semaphore = self.options.list_slots.of(self.client.server_key)
            await semaphore.acquire()
            slot = HeldSlot(semaphore)
        try:
            gen = self.store.begin_relist() if streaming_list else None
            initial: list[dict[str, Any]] = []
            events = await self._open_watch(query, accept, timeout, streaming_list=streaming_list)
            opened, delivered = self.clock.monotonic(), 0
            # Bookmarks while the watch waits are taken off the stream without waking
            # this task (WatchStream.follow_bookmarks), once past any initial state: a
            # stream that cannot (a scripted one, a poller) yields them as batches.
            follow = getattr(events, "follow_bookmarks", None) if self.options.bookmarks else None
            if follow is not None and gen is None:
                follow(self._bookmarked)
            try:
                async for batch in events:
                    delivered += len(batch)
                    had_initial_state = gen is not None
                    gen, initial = self._apply_batch(batch, gen, initial)
                    batch = []
                    if had_initial_state and gen is None:
                        events.resumable()
                        if follow is not None:
                            follow(self._bookmarked)
                        if slot is not None:
                            slot.give_back()
            except ApiError as exc:
                delivered += getattr(events, "bookmarks_taken", 0)
                # A watch that worked and then broke is a network event, not a failing
                # server: back to watching at once. One that broke at once backs off.
                if is_transport(exc) and (delivered or self.clock.monotonic() - opened > 1.0):
                    raise WatchBroken(str(exc)) from exc
                raise
            finally:
                self._stream = None
            # Ended before the initial-events-end bookmark: only a server that does not
            # stream lists does that. We closed it ourselves on stop or on a relist request
            # (the loop then starts a new streaming list): that says nothing about the server.
            if gen is not None and not self._stopping and not self._relist_requested:
                raise StreamingListUnsupported(
                    "the server ended the watch before the initial-events-end bookmark"
                )
        finally:
            if slot is not None:
                slot.give_back()

    def _watch_request(self, streaming_list: bool) -> tuple[dict[str, Any], str, int]:
        """A watch's query, its Accept header and its server-side timeout."""
        desc = self.descriptor
        low, high = self.options.watch_timeout_range
        timeout = random.randint(low, high)
        if self.client.crowded:
            # More watches than HTTP/1.1 connections (a server or proxy without HTTP/2):
            # they take turns; events wait for a turn, none is lost (each resumes from its RV).
            timeout = min(timeout, self.options.crowded_watch_seconds)
        query: dict[str, Any] = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout,
        }
        if streaming_list:
            query.update(sendInitialEvents="true", resourceVersionMatch="NotOlderThan", resourceVersion="")
        else:
            query["resourceVersion"] = self.resource_version
        if desc.field_selector:
            query["fieldSelector"] = desc.field_selector
        return query, PARTIAL_OBJECT if desc.metadata_only else JSON, timeout

    async def _open_watch(
        self, query: dict[str, Any], accept: str, timeout: int, *, streaming_list: bool
    ) -> EventStream:
        """Send the watch request; its stream, which :meth:`stop` and
        :meth:`request_relist` close from now on."""
        try:
            events = await self.client.awatch(
                self.descriptor.collection_path(),
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
        if self._stopping or self._relist_requested:
            events.close()
        if not streaming_list:
            events.resumable()
        return events

    def _bookmarked(self, rv: str | None) -> None:
        """A BOOKMARK taken off the stream while this task waited for the next batch,
        every event before it applied: what :meth:`_apply_batch` does with a batch of
        bookmarks alone (the RV moves; :meth:`_flush` defers the checkpoint), on the
        loop, without waking the task."""
        if rv:
            self.resource_version = rv
        self._flush([("BOOKMARK", {})])

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
                    self.status.last_event_at = self.clock.time()
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
                self.status.last_list_at = self.clock.time()
                self.status.state = InformerState.WATCHING
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
        bookmarks = self.options.bookmarks
        if bookmarks is not None and all(kind == "BOOKMARK" for kind, _ in pending):
            bookmarks.defer(self)
            return
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


class _SharedDiscovery:
    """One copy of each distinct answer to discovery. Contexts of one API server (and
    clusters of one version with the same CRDs) get equal answers, about 400 KB each
    in memory for 250 kinds: 40 MB for a fleet of 100 such contexts, kept for
    rediscovery. The few most recent distinct answers are remembered."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._known: list[dict[str, Served]] = []
        self._lock = threading.Lock()  # contexts start on several threads

    def __call__(self, served: dict[str, Served] | None) -> dict[str, Served] | None:
        if served is None:
            return None
        with self._lock:
            for known in self._known:
                if known == served:
                    return known
            self._known = [served, *self._known[: self.keep - 1]]
        return served


shared_discovery = _SharedDiscovery()


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
    served = shared_discovery(discover(client))
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
        io: IoLoop | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.options = options
        self.io = io or io_loop()
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
        #: The CRD informer's (lists, events, relists) at the last reconcile that read
        #: the cached CRDs: unchanged means no CRD changed, so nothing is read again.
        self._crds_seen: tuple[int, int, int] | None = None
        #: The custom resources' descriptors, by key, as of that reconcile.
        self._custom: dict[str, ResourceDescriptor] = {}
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
            client=lister_for(self.client, desc),
            descriptor=desc,
            store=self.store,
            options=self.options,
            resume_from=self._resume.get(desc.key),
            streaming=self.streaming,
        )
        self.informers[desc.key] = informer
        informer.start(self.io)

    def reconcile(self) -> None:
        """Start informers for new CRDs and newly served resources, stop and tombstone
        those of deleted CRDs and of resources no longer served."""
        if self.kubernetes_version is None:
            self.refresh_cluster_info()
        if not self.watch_custom_objects or CRD.key not in self.informers:
            self.complete = True  # nothing more will be started
            return
        crd_status = self.informers[CRD.key].status
        if crd_status.lists == 0 and CRD.key not in self._resume:
            return  # CRDs not listed yet: absence of a CRD means nothing so far
        seen = (crd_status.lists, crd_status.events, crd_status.relists)
        if seen == self._crds_seen and not self._discovery_due():
            return  # a fleet of idle contexts costs no reads of the cache
        if seen != self._crds_seen:
            # The list's pages were queued before it counted: once committed, the cached
            # CRDs are complete (a custom resource missing here would pass for a discovered
            # one). Read again only when a CRD changed, not for each rediscovery (every 5
            # minutes: 18,500 CRD rows decoded for a fleet of 100 contexts x 185 CRDs).
            self.store.flush(history=False)
            self._crds_seen = seen
            crds = self.store.live_rows(self.context, CRD)
            self._custom = {d.key: d for d in (custom_object_descriptor(c) for c in crds) if d is not None}
            self._follow_crd_changes(
                {f"{c['plural']}.{c['group']}": str(c["resource_version"]) for c in crds}, self._custom
            )
        wanted = dict(self._custom)
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

    def _discovery_due(self) -> bool:
        """Discovery is read again every REDISCOVER_SECONDS (a tenth of it while it
        cannot be read)."""
        if not self.discovery:
            return False
        wait = REDISCOVER_SECONDS if self._served is not None else REDISCOVER_SECONDS / 10
        return time.monotonic() - self._served_at > wait

    def _discovered(self, custom: set[str]) -> list[ResourceDescriptor] | None:
        """Descriptors for the served resources that have none and are not custom
        resources. None while what the server serves is unknown."""
        if self._discovery_due():
            self._served = shared_discovery(discover(self.client)) or self._served
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


#: Threads that start contexts (server version, discovery) at once.
START_THREADS = 16


def _start_context(ctx: ContextInformers) -> str | None:
    try:
        ctx.start()
        return None
    except Exception as exc:  # one context's failure must not stop the others
        log.exception("%s: start failed", ctx.context)
        return f"{type(exc).__name__}: {exc}"


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
        io: IoLoop | None = None,
    ) -> None:
        self.store = store
        self.options = options or InformerOptions(bookmarks=BookmarkCheckpoints())
        self.io = io or io_loop()
        self.contexts = [
            ContextInformers(
                client=c,
                store=store,
                descriptors=descriptors,
                options=self.options,
                watch_custom_objects=watch_custom_objects,
                io=self.io,
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
        # Contexts start in parallel (their version and discovery requests wait on the
        # network, not on us): an unreachable one (connect timeouts) must not delay the
        # others. A few threads do it for a fleet; the informers themselves are tasks.
        with ThreadPoolExecutor(max_workers=START_THREADS, thread_name_prefix="start") as pool:
            for ctx, error in zip(self.contexts, pool.map(_start_context, self.contexts), strict=True):
                if error is not None:
                    log.error("%s: failed to start: %s", ctx.context, error)
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
        self.store.flush(history=False)  # the checkpoints of a context just removed are committed
        ctx = ContextInformers(
            client=client,
            store=self.store,
            descriptors=self._descriptors,
            options=self.options,
            watch_custom_objects=self._watch_custom_objects,
            io=self.io,
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
            if not self.contexts_starting() and all(informer_state(s.state).synced for s in self.statuses()):
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
        self.store.flush(history=False)
