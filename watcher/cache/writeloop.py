"""The cache's writer thread: :class:`WriteLoop` takes queued operations in batches,
commits each batch in one transaction (the commit itself is the store's), and decides
what a failure means: a database out of reach is waited for (nothing is dropped), a
context another writer took is dropped from the batch (fencing), a write that keeps
failing is dropped and counted (the informers then relist). Between batches it runs
the store's background work (the history's derivation) a step at a time: while nothing
is queued, and after each batch when the store says it has fallen behind.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from watcher.cache import backend
from watcher.cache.backend import CacheLocation, CacheLocked, CacheUnusable
from watcher.cache.transaction import ContextFenced, WriteTransaction

log = logging.getLogger(__name__)

#: How long a write waits at most between two attempts while the database is unreachable.
MAX_RETRY_DELAY = 30.0
#: How long the writer waits for a write before it turns to its background work: longer
#: than the gaps within a burst of watch events.
IDLE_AFTER = 0.05
#: How long background work rests after it failed.
BACKGROUND_PAUSE = 30.0


@dataclass
class Operation:
    """One queued write; ``apply`` runs on the writer thread inside a transaction.
    ``context``: the context it writes (its owner is checked first), or None."""

    apply: Callable[[WriteTransaction], object]
    context: str | None = None
    done: threading.Event | None = None
    #: Writes only through the coalesced statements (object upserts and tombstones,
    #: checkpoints): they share executemany calls with the operations around it. Any
    #: other operation first sends what is pending, so statements still run in order.
    coalesced: bool = False


#: How the writer is doing when it asks for background work: ``idle`` (no write came for
#: ``IDLE_AFTER``), ``light`` or ``heavy`` (just after a batch of writes, having spent
#: less or more than half of the last second writing).
Load = Literal["idle", "light", "heavy"]
#: The store's background work: given the writer's load, the next step to run, or None.
Background: TypeAlias = Callable[[Load], Callable[[WriteTransaction], object] | None]


class BusyShare:
    """The share of the last ``window`` seconds the writer spent committing writes."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._spans: collections.deque[tuple[float, float]] = collections.deque()

    def add(self, start: float, end: float) -> None:
        self._spans.append((start, end))

    def share(self, now: float) -> float:
        cutoff = now - self.window
        while self._spans and self._spans[0][1] < cutoff:
            self._spans.popleft()
        return sum(end - max(start, cutoff) for start, end in self._spans) / self.window


class WriteLoop:
    """The one writer thread of a cache store."""

    def __init__(
        self,
        commit: Callable[[list[Operation]], None],
        *,
        location: CacheLocation,
        lock: backend.FileWriterLock | backend.AdvisoryWriterLock,
        batch_max: int,
        batch_wait: float,
        background: Background | None = None,
    ) -> None:
        self._commit = commit
        self._background = background
        self._background_paused_until = 0.0
        self._busy = BusyShare()
        self.location = location
        self._lock = lock
        self._batch_max = batch_max
        self._batch_wait = batch_wait
        # Bounded: when the database falls behind (or is down), informers wait here
        # instead of piling up parsed objects in memory (a relist page holds up to 500).
        self._queue: queue.Queue[Operation | None] = queue.Queue(maxsize=4)
        #: Contexts another writer took over: their writes are skipped (context -> owner).
        self.fenced: dict[str, str | None] = {}
        self.dropped_batches = 0
        #: Since when (wall clock) the database has been unreachable, or None.
        self.unreachable_since: float | None = None
        self._closing = threading.Event()
        self._lock_lost = False
        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(
        self,
        fn: Callable[[WriteTransaction], None],
        *,
        context: str | None = None,
        wait: bool = False,
        coalesced: bool = False,
    ) -> None:
        if not self._thread.is_alive():
            raise CacheUnusable(f"cache {self.location} is closed")
        done = threading.Event() if wait else None
        self._queue.put(Operation(fn, context, done, coalesced))
        if done is not None:
            done.wait()

    def close(self, timeout: float) -> None:
        """Commit what is queued and stop. A database still unreachable after
        ``timeout`` loses the queued writes."""
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._closing.set()  # stop retrying the unreachable database
            self._thread.join(MAX_RETRY_DELAY + 5)
            log.error("cache %s closed with writes not committed (database unreachable)", self.location)

    def _run(self) -> None:
        while not self._lock_lost:
            first = self._next()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self._batch_wait
            stop = False
            while len(batch) < self._batch_max:
                try:
                    op = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                batch.append(op)
            started = time.monotonic()
            self._apply(batch)
            ended = time.monotonic()
            self._busy.add(started, ended)
            if stop:
                return
            self._run_background_due(ended)

    def _next(self) -> Operation | None:
        """The next queued operation. While there is background work, it runs a step at
        a time once no operation has come for ``IDLE_AFTER`` (a burst of writes is not
        slowed by it), then between steps as long as none comes."""
        wait = IDLE_AFTER
        while not self._lock_lost:
            step = self._background_step("idle")
            if step is None:
                return self._queue.get()
            try:
                return self._queue.get(timeout=wait)
            except queue.Empty:
                self._run_step(step)
                wait = 0
        return None

    def _run_background_due(self, now: float) -> None:
        """After a batch: background work that must not wait for the writer to be idle."""
        step = self._background_step("heavy" if self._busy.share(now) > 0.5 else "light")
        if step is not None:
            self._run_step(step)

    def _background_step(self, load: Load) -> Callable[[WriteTransaction], object] | None:
        if self._background is None or time.monotonic() < self._background_paused_until:
            return None
        return self._background(load)

    def _run_step(self, step: Callable[[WriteTransaction], object]) -> None:
        """One step of background work, in a transaction of its own. Nobody waits for
        it: a failure is logged and pauses the work (``BACKGROUND_PAUSE``); it is not
        retried at once (the writes would wait) or counted as a dropped batch (the
        informers would relist, which does not help it)."""
        try:
            self._commit([Operation(step)])
        except ContextFenced as exc:
            self._fence(exc)
        except CacheLocked as exc:
            self._stop_writing(exc)
        except Exception:
            log.exception(
                "cache %s: background work (the history's derivation) failed; paused for %.0fs",
                self.location, BACKGROUND_PAUSE,
            )  # fmt: skip
            self._background_paused_until = time.monotonic() + BACKGROUND_PAUSE

    def _fence(self, exc: ContextFenced) -> None:
        """Another writer owns the context now: its writes are skipped from here on."""
        self.fenced[exc.context] = exc.owner
        log.error("%s; its writes are dropped here", exc)

    def _stop_writing(self, exc: CacheLocked) -> None:
        """Another lone writer took the database while it was down: two writers would
        hand out the same seqs. Stop; /healthz fails and the pod restarts."""
        log.error("%s: this process stops writing", exc)
        self._lock_lost = True

    def _apply(self, batch: list[Operation]) -> None:
        failures = 0
        delay = 0.5
        while True:
            try:
                if self.unreachable_since is not None:
                    # Before any write: the lock may have gone with the database's restart.
                    self._lock.ensure()
                self._commit([op for op in batch if op.context not in self.fenced])
                if self.unreachable_since is not None:
                    self.unreachable_since = None
                    log.info("cache database %s reachable again; writes resumed", self.location)
                break
            except CacheLocked as exc:
                self._stop_writing(exc)
                break
            except ContextFenced as exc:
                # Not an error of the batch: drop that context's writes, keep the rest.
                self._fence(exc)
            except Exception as exc:
                if backend.is_connection_error(self.location, exc) and not self._closing.is_set():
                    # The database is down or out of reach: keep the batch (and, through
                    # the bounded queue, the informers) waiting until it is back; the
                    # watches resume from the resourceVersions nothing has moved past.
                    self.unreachable_since = self.unreachable_since or time.time()
                    log.warning(
                        "cache database %s unreachable (%s); retrying %d writes in %.1fs",
                        self.location, str(exc.__cause__ or exc).strip().splitlines()[0], len(batch), delay,
                    )  # fmt: skip
                    time.sleep(delay)
                    delay = min(MAX_RETRY_DELAY, delay * 2)
                    continue
                failures += 1
                log.exception("cache write of %d operations failed (attempt %d)", len(batch), failures)
                if failures >= 5:
                    # Events were lost on the way to the cache: it no longer follows the
                    # watches. The informer manager sees this counter and relists everything.
                    self.dropped_batches += 1
                    log.error(
                        "cache write of %d operations dropped after 5 attempts; informers will relist",
                        len(batch),
                    )
                    break
                time.sleep(0.5 * failures)
        for op in batch:
            if op.done is not None:
                op.done.set()
