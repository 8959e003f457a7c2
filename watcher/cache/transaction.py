"""One transaction of the cache writer: the change sequence of each context it writes
(and whether this writer still owns the context: fencing), and the statements it has
not sent yet. The design of the sequences is in :mod:`watcher.state`.

Coalescing: a watch burst is an operation of a few events, and a statement per
operation is a round trip per operation to PostgreSQL. Rows of consecutive operations
using the same statement go out in one executemany; checkpoints once per (context,
resource), the last one winning; writers beside the objects (the history's heads) send
theirs with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sqlalchemy import select, update

from watcher.cache.backend import CacheUnusable
from watcher.cache.schema import context_seqs


class ContextFenced(CacheUnusable):
    """Another writer owns this context now (its Lease moved): this one must stop writing it."""

    def __init__(self, context: str, owner: str | None) -> None:
        super().__init__(f"context {context} is written by {owner or 'no one'} now, not by this process")
        self.context = context
        self.owner = owner


class PendingWrites(Protocol):
    """Writes kept back until the transaction sends its statements."""

    def reset(self) -> None: ...

    def send(self, conn: Any) -> None: ...


class ContextSeqs:
    """Which contexts this writer owns and the seq each is at, across transactions.

    A lone writer remembers each context's committed seq instead of reading (and
    locking) its row in every transaction: nobody else writes them (the writer lock).
    Replicas always read it: another one may have fenced them.
    """

    def __init__(self, identity: str, *, shared: bool, upsert: Callable[..., Any]) -> None:
        self.identity = identity
        self.shared = shared
        self._upsert = upsert
        self._known: dict[str, int] = {}

    def lock(self, conn: Any, context: str) -> int:
        """The seq ``context`` is at, its row locked until commit when read."""
        known = self._known.get(context)
        return known if known is not None and not self.shared else self._own(conn, context)

    def _own(self, conn: Any, context: str) -> int:
        """Lock ``context``'s counter row until commit and return its seq; raise
        :class:`ContextFenced` if another writer owns the context. A lone writer owns
        every context it writes (it takes over one last written by an earlier process)."""
        found = conn.execute(
            select(context_seqs.c.seq, context_seqs.c.owner)
            .where(context_seqs.c.context == context)
            .with_for_update()
        ).first()
        if found is not None and found.owner == self.identity:
            return int(found.seq)
        if self.shared:
            raise ContextFenced(context, found.owner if found else None)
        self.take_over(conn, context)
        return int(found.seq) if found is not None else 0

    def take_over(self, conn: Any, context: str) -> None:
        values = {
            "context": context,
            "seq": 0,
            "purged_seq": 0,
            "owner": self.identity,
            "owned_since": time.time(),
        }
        conn.execute(self._upsert(context_seqs, values, ["context"], ["owner", "owned_since"]))

    def committed(self, seqs: dict[str, int]) -> None:
        if not self.shared:
            self._known.update(seqs)

    def forget(self) -> None:
        """Read the rows again: an operation may have changed them (retire, purge, claim),
        or the transaction that would have moved them failed."""
        self._known.clear()


class WriteTransaction:
    """The state of one write transaction (the writer thread only)."""

    def __init__(
        self,
        conn: Any,
        seqs: ContextSeqs,
        *,
        status_sql: str,
        pending: Sequence[PendingWrites] = (),
    ) -> None:
        self.conn = conn
        self._seqs = seqs
        self._status_sql = status_sql
        self._pending = pending
        #: context -> its seq when this transaction locked it, and where it is now.
        self._owned: dict[str, int] = {}
        self._at: dict[str, int] = {}
        self._rows_sql = ""
        self._rows: list[tuple[Any, ...]] = []
        self._statuses: dict[tuple[str, str], tuple[Any, ...]] = {}
        for writes in pending:
            writes.reset()

    def enter(self, context: str) -> None:
        """An operation writes ``context``: lock its seq (once per transaction)."""
        if context not in self._owned:
            self._owned[context] = self._at[context] = self._seqs.lock(self.conn, context)

    def next_seq(self, context: str) -> int:
        self._at[context] += 1
        return self._at[context]

    def queue_rows(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if sql != self._rows_sql:
            self._send_rows()
            self._rows_sql = sql
        self._rows.extend(rows)

    def write_status(self, key: tuple[str, str], values: tuple[Any, ...]) -> None:
        self._statuses[key] = values

    def _send_rows(self) -> None:
        if self._rows:
            self.conn.exec_driver_sql(self._rows_sql, self._rows)
            self._rows = []

    def send_pending(self) -> None:
        """Send every statement kept back (before anything that must see them)."""
        self._send_rows()
        for writes in self._pending:
            writes.send(self.conn)
        if self._statuses:
            self.conn.exec_driver_sql(self._status_sql, list(self._statuses.values()))
            self._statuses = {}

    def finish(self) -> dict[str, int]:
        """Send the rest and move the counters of the contexts written; the seqs to
        remember once committed."""
        self.send_pending()
        for ctx, seq in self._at.items():
            if seq != self._owned[ctx]:  # (a checkpoint alone takes no seq)
                self.conn.execute(update(context_seqs).where(context_seqs.c.context == ctx).values(seq=seq))
        return dict(self._at)
