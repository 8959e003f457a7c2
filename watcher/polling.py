"""Polling for the resources that can be listed but not watched (component statuses).

:class:`PollingListerWatcher` stands in for the API client of such a resource's
informer. Its watch waits a poll interval, lists, and delivers the difference with the
previous list as ADDED, MODIFIED and DELETED events, then ends like a watch the server
closed; the informer watches again, which is the next poll. So the informer, the cache,
its checkpoints and incremental syncs treat a polled resource as a watched one.

The API server computes these objects on each request: they have no uid and no
resourceVersion. The poller derives both: the uid from the object's name (stable across
polls and restarts), the resourceVersion from its content (an object polled unchanged
keeps its change sequence in the cache; a changed one takes a new one). A list's
resourceVersion is a digest of its objects' (uid, resourceVersion). A restarted daemon
resumes from it like any watch, listing nothing at start: its first poll finds the same
digest (no events), or answers 410 so that the informer relists and tombstones what
went away while it was down.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from watcher.kube import JSON, ApiError
from watcher.resources import ResourceDescriptor

if TYPE_CHECKING:  # informers.py starts the pollers: a runtime import would be a cycle
    from watcher.informers import Clock, EventStream, ListerWatcher

#: Seconds between two polls: a component status is a health probe the API server runs
#: on each LIST, and a minute matches how often anyone looks at one.
POLL_SECONDS = 60.0

#: uuid5 namespace of the uids derived for objects the API server serves without one.
_UID_NS = uuid.UUID("8d2f7c1a-5b3e-4c9d-a0f6-71e4b2c8d953")
#: Query parameters a poll's LIST keeps from the informer's watch.
_SELECTORS = ("fieldSelector", "labelSelector")


def lister_for(client: ListerWatcher, desc: ResourceDescriptor) -> ListerWatcher:
    """The API side of ``desc``'s informer: ``client``, or a poller over it when the
    resource cannot be watched."""
    return PollingListerWatcher(client) if desc.list_only else client


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def stamped(obj: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``obj`` with a uid and a resourceVersion where the API server gave none."""
    meta = dict(obj.get("metadata") or {})
    if not meta.get("uid"):
        meta["uid"] = str(uuid.uuid5(_UID_NS, f"{path}/{meta.get('namespace') or ''}/{meta.get('name')}"))
    if not meta.get("resourceVersion"):
        meta["resourceVersion"] = _digest(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS))
    return {**obj, "metadata": meta}


def list_version(objects: Mapping[str, Mapping[str, Any]]) -> str:
    """The resourceVersion of a polled list: a digest of its objects' (uid, resourceVersion)."""
    pairs = sorted(f"{uid}={obj['metadata']['resourceVersion']}" for uid, obj in objects.items())
    return _digest("\n".join(pairs).encode())


def _event(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def _expired(message: str) -> dict[str, Any]:
    return _event("ERROR", {"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired",
                            "message": message})  # fmt: skip


class PollingListerWatcher:
    """A ``ListerWatcher`` whose watches are polls of ``client``'s LIST (one resource,
    one informer: it keeps that informer's last list)."""

    def __init__(self, client: ListerWatcher, *, interval: float = POLL_SECONDS, clock: Clock | None = None):
        self.client = client
        self.context = client.context
        self.interval = interval
        self._sleep: Callable[[float], Awaitable[None]] = clock.sleep if clock else asyncio.sleep
        #: The last list the informer has (by uid) and its resourceVersion; None until
        #: this process listed (a restarted informer resumes from a stored version).
        self._objects: dict[str, dict[str, Any]] | None = None
        self._version = ""

    @property
    def server_key(self) -> str:
        return self.client.server_key

    @property
    def crowded(self) -> bool:
        return False  # a poll holds no connection while it waits

    async def aget(
        self, path: str, query: Mapping[str, Any] | None = None, *, accept: str = JSON, timeout: float = 60
    ) -> Any:
        """A LIST, whole (the server computes it: it is small and not paginated), its
        objects and itself stamped with the versions the watch resumes from."""
        query = {k: v for k, v in (query or {}).items() if k not in ("limit", "continue")}
        objects = await self._list(path, query, accept, timeout)
        self._objects, self._version = objects, list_version(objects)
        return {"metadata": {"resourceVersion": self._version}, "items": list(objects.values())}

    async def awatch(
        self, path: str, query: Mapping[str, Any], *, accept: str = JSON, read_timeout: float
    ) -> EventStream:
        if query.get("sendInitialEvents"):
            # The informer then LISTs instead, as on a server without streaming lists.
            raise ApiError(501, "Not Implemented", f"{path} is polled: no streaming list")
        selectors = {k: query[k] for k in _SELECTORS if k in query}
        return _Poll(self, path, str(query.get("resourceVersion") or ""), selectors, accept)

    async def _list(
        self, path: str, query: Mapping[str, Any], accept: str, timeout: float = 60
    ) -> dict[str, dict[str, Any]]:
        page = await self.client.aget(path, query, accept=accept, timeout=timeout)
        objects = (stamped(item, path) for item in page.get("items") or [])
        return {obj["metadata"]["uid"]: obj for obj in objects}

    async def poll(
        self, path: str, since: str, query: Mapping[str, Any], accept: str
    ) -> list[dict[str, Any]]:
        """One poll's events: what changed between the list at ``since`` and now, then
        a bookmark to the new list's version (nothing when nothing changed)."""
        objects = await self._list(path, query, accept)
        version = list_version(objects)
        if self._objects is None or since != self._version:
            # Resumed from a stored version: only the same list can be taken as it.
            if since != version:
                return [_expired(f"polled list {since} is gone (the list is {version} now)")]
            self._objects, self._version = objects, version
            return []
        before = self._objects
        events = [_event("ADDED", obj) for uid, obj in objects.items() if uid not in before]
        events += [
            _event("MODIFIED", obj)
            for uid, obj in objects.items()
            if uid in before
            and before[uid]["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]
        ]
        events += [_event("DELETED", obj) for uid, obj in before.items() if uid not in objects]
        self._objects, self._version = objects, version
        if events:
            events.append(_event("BOOKMARK", {"metadata": {"resourceVersion": version}}))
        return events

    async def wait(self) -> None:
        await self._sleep(self.interval)


class _Poll:
    """One "watch": wait the interval (or until closed), poll once, end."""

    def __init__(
        self, poller: PollingListerWatcher, path: str, since: str, query: Mapping[str, Any], accept: str
    ) -> None:
        self._poller, self._path, self._since, self._query, self._accept = poller, path, since, query, accept
        self._closed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        waiting = asyncio.ensure_future(self._poller.wait())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait((waiting, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            closed.cancel()
        if self._closed.is_set():
            return  # a stop or a relist asked for: end as a closed watch does
        events = await self._poller.poll(self._path, self._since, self._query, self._accept)
        if events:
            yield events

    def close(self) -> None:
        self._closed.set()

    def resumable(self) -> None:
        """Always: a poll may end any time."""
