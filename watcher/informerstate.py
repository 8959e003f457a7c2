"""The states an informer reports, as stored in the cache's ``checkpoints.state``.

Its own module, below both the cache and the informers: the informers set these states,
the cache stores them, and ``k8s_clusters`` and status read them back.
"""

from __future__ import annotations

from enum import StrEnum


class InformerState(StrEnum):
    """Where an informer is, as stored in ``checkpoints.state``. The questions asked of
    it (is the cache current? is waiting any use?) have one answer each, here."""

    STARTING = "starting"
    LISTING = "listing"
    WATCHING = "watching"
    BACKOFF = "backoff"
    FORBIDDEN = "forbidden"
    ERROR = "error"
    STOPPED = "stopped"
    #: A one-shot relist outside the daemon (listed, not watching).
    LISTED = "listed"
    #: A built-in resource the API server does not serve: no informer runs for it, and
    #: a sync does not count it as cold.
    UNSERVED = "unserved"

    @property
    def synced(self) -> bool:
        """The informer holds the server's state and follows it: the daemon is synced."""
        return self is InformerState.WATCHING

    @property
    def failing(self) -> bool:
        """Refused or broken: waiting for it to list won't help a sync."""
        return self in (InformerState.FORBIDDEN, InformerState.ERROR)

    @property
    def settled(self) -> bool:
        """Nothing to wait for: it follows the server, or never will without a change."""
        return self.synced or self.failing or self is InformerState.UNSERVED


UNSERVED = InformerState.UNSERVED


def informer_state(value: str) -> InformerState:
    """A stored state; one this version does not know counts as starting."""
    try:
        return InformerState(value)
    except ValueError:
        return InformerState.STARTING
