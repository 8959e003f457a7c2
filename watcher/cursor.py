"""The incremental cursor: how far one destination has been sent the cache's changes.

It lives in CloudQuery's state backend, so that it travels with the destination, as
``<cache id>/<lineage>:{"<context>": <seq>, ...}``: the cache it counts in, the
lineage, and per context the change seq sent up to. The lineage names one
destination's chain of cursors: drawn at random when a destination has none, then
carried from each cursor to the next. Two syncs that read the same lineage write the
same destination.

Two such syncs at once would send changes from two snapshots into one destination,
and the older snapshot's rows may land after the newer one's deletions: a deleted
object's row comes back, and no later sync deletes it, since the cursor moved past
its deletion. :class:`CursorGate` lets one sync at a time hold a lineage in this
daemon, and the next one waits, then waits for the cursor the last one handed to its
CLI to reach the state backend. The destination commits that cursor after the rows it
covers, so by then all those rows are written.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from watcher.errors import CacheError
from watcher.messages import StateBackend, SyncCheckpoint, SyncInsert, SyncMigrateTable, SyncOptions

if TYPE_CHECKING:
    from watcher.state import ContextLog

log = logging.getLogger(__name__)

CURSOR_KEY = "k8s-watcher|cursor"


class SyncConflict(CacheError):
    """Another sync holds this destination's cursor (a follow stream, or one that did not end in time)."""


@dataclass(frozen=True)
class StoredCursor:
    """A cursor as read from the state backend."""

    raw: str
    cache_id: str
    lineage: str
    #: context -> seq sent up to; None: malformed, or of an older format.
    sent: dict[str, int] | None


def encode_cursor(cache_id: str, lineage: str, position: Mapping[str, int]) -> str:
    body = orjson.dumps(dict(position), option=orjson.OPT_SORT_KEYS).decode()
    return f"{cache_id}/{lineage}:{body}"


def parse_cursor(raw: str | None) -> StoredCursor | None:
    """The stored cursor, or None when there is none. A cursor without a lineage (one
    written before lineages existed) gets one derived from its text, so that two syncs
    reading it agree."""
    if not raw:
        return None
    head, colon, body = raw.partition(":")
    cache_id, slash, lineage = head.partition("/")
    if not slash or not lineage:
        lineage = hashlib.blake2b(raw.encode(), digest_size=16).hexdigest()
    try:
        sent = orjson.loads(body) if colon else None
    except orjson.JSONDecodeError:
        sent = None
    if not isinstance(sent, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in sent.values()
    ):
        sent = None
    return StoredCursor(raw, cache_id if colon else "", lineage, sent)


def resume_from(
    stored: StoredCursor | None, *, cache_id: str, logs: Mapping[str, ContextLog], contexts: list[str]
) -> dict[str, int | None] | None:
    """Where an incremental sync continues, per context, from the stored cursor: the
    seq after which to send changes, or None for a full snapshot of that context (its
    log was purged past the cursor, or the cursor is ahead of it). A context the cursor
    does not name was never sent: from 0. None overall: a full snapshot of everything.
    The log says why."""
    if stored is None:
        log.info("incremental: no cursor yet, full snapshot")
        return None
    if stored.cache_id and stored.cache_id != cache_id:
        log.info("incremental: the cursor %r belongs to another cache, full snapshot", stored.raw[:80])
        return None
    if stored.sent is None:
        log.info(
            "incremental: the cursor %r is malformed or of an older version, full snapshot", stored.raw[:80]
        )
        return None
    since: dict[str, int | None] = {}
    for ctx in {*contexts, *stored.sent}:
        seq = stored.sent.get(ctx, 0)
        found = logs.get(ctx)
        if found is not None and seq < found.purged_seq:
            log.info(
                "incremental: %s: cursor %d is older than the retained change log (%d), full snapshot of it",
                ctx, seq, found.purged_seq,
            )  # fmt: skip
            since[ctx] = None
        elif seq > (found.seq if found is not None else 0):
            log.info("incremental: %s: cursor %d is ahead of the cache, full snapshot of it", ctx, seq)
            since[ctx] = None
        else:
            since[ctx] = seq
    return since


@dataclass
class Hold:
    """One sync's hold on a lineage."""

    follow: bool
    #: The sync's stop (set when its CLI goes away): a hold whose stop is set is over
    #: even if its generator was never closed.
    stop: threading.Event | None
    released: bool = False
    #: Whether the sync sent all it had to (its CLI then commits its last cursor); not
    #: when it failed or its CLI went away (a cancelled CLI drops what it buffered).
    completed: bool = False
    #: The last cursor value this sync handed to its CLI.
    issued: str | None = None

    def active(self) -> bool:
        return not self.released and not (self.stop is not None and self.stop.is_set())


class CursorGate:
    """One incremental sync at a time per lineage, in this daemon (see the module's doc).
    A sync that finds a follow stream holding its lineage fails at once: the stream
    never ends by itself, and it already sends every change. One that finds another
    sync waits for it, up to ``wait_seconds``."""

    #: Lineages remembered; the oldest released ones are forgotten past this.
    LIMIT = 1024

    def __init__(
        self,
        *,
        wait_seconds: float = 600.0,
        poll_seconds: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.wait_seconds, self.poll_seconds = wait_seconds, poll_seconds
        self._clock, self._sleep = clock, sleep
        self._holds: OrderedDict[tuple[str, ...], Hold] = OrderedDict()
        self._lock = threading.Lock()

    def enter(
        self, key: tuple[str, ...], *, follow: bool, stop: threading.Event | None
    ) -> tuple[Hold, str | None]:
        """This sync's hold on ``key`` once no other sync holds it, and the cursor the
        last holder handed to its CLI, to wait for (None: no holder before, it handed
        none, or it did not complete)."""
        deadline = self._clock() + self.wait_seconds
        waited = False
        while True:
            with self._lock:
                before = self._holds.get(key)
                if before is None or not before.active():
                    hold = self._holds[key] = Hold(follow, stop)
                    self._holds.move_to_end(key)
                    self._forget_old()
                    return hold, before.issued if before is not None and before.completed else None
                if before.follow:
                    raise SyncConflict(
                        "a follow sync is streaming into this destination (the same cursor lineage): "
                        "it already sends every change, and a second sync would race with it"
                    )
            if not waited:
                log.info("incremental: another sync of this destination is under way, waiting for it to end")
                waited = True
            if self._clock() > deadline:
                raise SyncConflict(
                    f"another sync of this destination (the same cursor lineage) did not end in "
                    f"{self.wait_seconds:.0f}s; run incremental syncs of one destination one at a time"
                )
            if stop is not None and stop.is_set():
                raise SyncConflict(
                    "the CLI went away while its sync waited for another sync of its destination"
                )
            self._sleep(self.poll_seconds)

    def await_cursor(self, read: Callable[[], str | None], before: str, *, seconds: float) -> str | None:
        """The stored cursor once it is ``before`` (the last holder's), or once it moved
        to anything else, or after ``seconds``; the log says when it never came."""
        first = now = read()
        if now != before:
            log.info(
                "incremental: waiting for the cursor of the sync before this one to reach the destination"
            )
        deadline = self._clock() + seconds
        while now == first and now != before and self._clock() < deadline:
            self._sleep(self.poll_seconds)
            now = read()
        if now != before:
            log.warning(
                "incremental: the cursor the sync before this one sent has not reached the destination "
                "(that sync failed after its last rows, or is still writing them); continuing from the stored one"
            )
        return now

    def _forget_old(self) -> None:
        for key in [k for k, h in self._holds.items() if not h.active()][
            : max(0, len(self._holds) - self.LIMIT)
        ]:
            del self._holds[key]


def _state_client(backend: StateBackend) -> Any:
    # Imported here: the SDK's state client pulls in pandas (~60 MB), which a daemon
    # serving snapshot syncs never needs.
    from cloudquery.sdk.plugin.plugin import BackendOptions
    from cloudquery.sdk.stateclient.stateclient import StateClientBuilder

    return StateClientBuilder.build(
        backend_options=BackendOptions(connection=backend.connection, table_name=backend.table_name)
    )


class Cursor:
    """This sync's cursor, kept in CloudQuery's state backend (see the module's doc):
    read once at the start, under the gate's hold on its lineage, and advanced by
    :meth:`commit`."""

    #: How long a sync waits for the cursor the sync before it handed to its CLI to
    #: reach the state backend (that CLI writing its last rows).
    SETTLE_SECONDS = 30.0

    def __init__(self, options: SyncOptions, *, on_stream: bool = True, client: Any = None) -> None:
        #: Whether the cursor goes on the sync stream (see commit), or through the state
        #: client: a destination in write_mode append cannot take the state table's rows.
        self.on_stream = on_stream
        # A shard's tables move on their own: each shard keeps a cursor of its own.
        self.key = CURSOR_KEY if options.shard is None else f"{CURSOR_KEY}|shard {options.shard}"
        backend = options.backend or StateBackend(connection="", table_name="")
        self.table_name = backend.table_name
        #: The SDK's state client (``get_key``, ``set_key``, ``flush``, ``table.record``).
        self.client = client if client is not None else _state_client(backend)
        self.enabled = bool(backend.table_name)
        self.supports_checkpoints = options.supports_checkpoints
        self.stop = options.stop
        self.stored: StoredCursor | None = None
        self.lineage = uuid.uuid4().hex
        self._hold: Hold | None = None
        if not self.enabled:
            log.warning(
                "incremental mode without a state backend (backend_options): every sync is a full snapshot"
            )

    @contextmanager
    def held(self, gate: CursorGate, *, follow: bool) -> Iterator[None]:
        """Read the stored cursor while this sync holds its lineage: after the sync
        before it ended, and once the cursor that one handed to its CLI arrived."""
        if not self.enabled:
            yield
            return
        self.stored = parse_cursor(self.client.get_key(self.key))
        if self.stored is not None:
            self.lineage = self.stored.lineage
        self._hold, before = gate.enter(
            (self.table_name, self.key, self.lineage), follow=follow, stop=self.stop
        )
        try:
            if before is not None:
                self.stored = parse_cursor(
                    gate.await_cursor(self._read_again, before, seconds=self.SETTLE_SECONDS)
                )
            yield
            self._hold.completed = True
        finally:
            self._hold.released = True

    def _read_again(self) -> str | None:
        """The stored cursor as the backend holds it now (the state client reads all
        keys once, when it is built, and answers from memory after that)."""
        self.client.read_all_state()
        return self.client.get_key(self.key)  # type: ignore[no-any-return]

    def since(
        self, cache_id: str, logs: Mapping[str, ContextLog], contexts: list[str]
    ) -> dict[str, int | None] | None:
        return resume_from(self.stored, cache_id=cache_id, logs=logs, contexts=contexts)

    def in_band_table(self) -> SyncMigrateTable | None:
        """The state table, for a sync that writes its cursor as a row of the sync stream
        (a CLI without checkpoint support: CLI 6.21.1 has none)."""
        if not self.enabled or self.supports_checkpoints or not self.on_stream:
            return None
        return SyncMigrateTable(self.client.table.arrow_schema())

    def commit(self, cache_id: str, position: Mapping[str, int]) -> SyncCheckpoint | SyncInsert | None:
        """Advance the cursor to ``position``, after every row and deletion it covers.
        With checkpoint support: a checkpoint, which the CLI persists once the
        destination committed everything before it. Otherwise, by default (``cursor:
        stream``): a row of the state table on the stream, which the destination commits
        in stream order, with the rows before it or later. ``cursor: backend`` (for
        write_mode append, whose syncs cannot carry the state table) writes it through
        the state client instead, at the end of the sync: that commits at once, while the
        destination may still buffer rows, so a sync that fails after it (a destination
        that could not write its last batch, a CLI interrupted, a daemon killed) leaves
        the cursor past rows that never arrived (docs/configuration.md)."""
        if not self.enabled:
            return None
        value = encode_cursor(cache_id, self.lineage, position)
        if self._hold is not None:
            self._hold.issued = value
        record = self.client.table.record([(self.key, value)])
        if self.supports_checkpoints:
            return SyncCheckpoint(record)
        if self.on_stream:
            return SyncInsert(record)
        self.client.set_key(self.key, value)
        self.client.flush()
        return None
