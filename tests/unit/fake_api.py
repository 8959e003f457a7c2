"""A scripted API server for one informer, as client-go's reflector_test.go fakes its
ListerWatcher: each LIST or WATCH request gets the next scripted answer (a page, a
watch stream, or an ApiError to raise), every request is recorded with its query,
and every wait of the informer (backoff, forbidden retry) goes to a fake clock that
records it and returns at once. When the script is played out the informer is
stopped, so ``run(informer)`` returns in the test's own thread, in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from watcher.informers import Clock, ResourceInformer
from watcher.kube import ApiError

#: A scripted watch stream's items: a batch of events (one network read), an exception
#: to raise from the stream at that point, or a callable run for its side effect.
StreamItem = list[dict[str, Any]] | BaseException | Callable[[], None]

#: Waits after which the informer is stopped whatever the script says: a loop that
#: only waits (a bug) must fail the test, not hang it.
MAX_WAITS = 50

#: The ``make_informer`` fixture: ``(descriptor=CMS, *, resume_from=None, streaming=True, **options)``.
MakeInformer = Callable[..., ResourceInformer]


class ScriptedStream:
    """A watch stream yielding scripted batches; ``on_batch`` runs after each one (to
    act on the informer mid-stream). Closing it ends the iteration, as WatchStream does."""

    def __init__(self, batches: list[StreamItem], on_batch: Any = None) -> None:
        self.batches, self.on_batch, self.closed, self.delivered = batches, on_batch, False, 0
        self.resumable_calls = 0

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        for batch in self.batches:
            if self.closed:
                return
            if isinstance(batch, BaseException):
                raise batch
            if callable(batch):
                batch()
                continue
            self.delivered += 1
            yield batch
            if self.on_batch is not None:
                self.on_batch()

    def close(self) -> None:
        self.closed = True

    def resumable(self) -> None:
        self.resumable_calls += 1


@dataclass
class Request:
    verb: str  # "list" or "watch"
    path: str
    query: dict[str, Any]


@dataclass
class Wait:
    seconds: float | None
    state: str  # the informer's state while it waited
    resource_version: str | None
    error: str | None  # the informer's last_error then


class FakeClock(Clock):
    """The informer's clock: ``now`` (monotonic) stands still unless a test moves it,
    and every sleep is recorded in ``waits`` and returns at once (``before_wait`` runs
    first, to act on the informer while it waits)."""

    def __init__(self, api: ScriptedApi) -> None:
        self.api = api
        self.now = 1000.0
        self.before_wait: Callable[[], None] | None = None

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        informer = self.api.informer
        assert informer is not None
        if self.before_wait is not None:
            self.before_wait()
        self.api.waits.append(
            Wait(seconds, informer.status.state, informer.resource_version, informer.status.last_error)
        )
        if len(self.api.waits) >= MAX_WAITS:
            informer.stop()


class ScriptedApi:
    """The fake ``KubeClient`` (``context``, ``aget``, ``awatch``) of one informer."""

    context = "ctx"
    server_key = "https://scripted"

    def __init__(self) -> None:
        #: Watches wait for an HTTP/1.1 connection: the informer takes short turns.
        self.crowded = False
        self.script: deque[tuple[str, Any]] = deque()
        self.requests: list[Request] = []
        self.waits: list[Wait] = []
        self.unexpected: list[str] = []
        self.informer: ResourceInformer | None = None
        self.clock = FakeClock(self)

    # -- the script ----------------------------------------------------------

    def lists(self, answer: dict[str, Any] | ApiError) -> ScriptedApi:
        """The next request is a LIST (one page), answered with a page or an error."""
        self.script.append(("list", answer))
        return self

    def watches(self, answer: ScriptedStream | list[StreamItem] | ApiError) -> ScriptedApi:
        """The next request is a WATCH, answered with a stream (or its items) or an error."""
        self.script.append(("watch", ScriptedStream(answer) if isinstance(answer, list) else answer))
        return self

    @property
    def played_out(self) -> bool:
        return not self.script and not self.unexpected

    # -- KubeClient ------------------------------------------------------------

    async def aget(self, path: str, query: dict[str, Any] | None = None, **_kwargs: Any) -> Any:
        return self._answer("list", path, query or {})

    async def awatch(self, path: str, query: dict[str, Any], **_kwargs: Any) -> Any:
        return self._answer("watch", path, query)

    def _answer(self, verb: str, path: str, query: dict[str, Any]) -> Any:
        self.requests.append(Request(verb, path, dict(query)))
        if not self.script:
            return self._end("script played out")
        expected, answer = self.script.popleft()
        if expected != verb:
            self.unexpected.append(f"request {len(self.requests)}: a {verb}, the script has a {expected}")
            return self._end("unexpected request")
        if isinstance(answer, ApiError):
            raise answer
        return answer

    def _end(self, why: str) -> Any:
        if self.informer is not None:
            self.informer.stop()
        raise ApiError(0, why, "the scripted API server has nothing more to say")

    # -- the informer's waits ---------------------------------------------------

    def attach(self, informer: ResourceInformer) -> ResourceInformer:
        """The informer this script plays to (stopped when the script is played out)."""
        self.informer = informer
        return informer

    # -- what the informer asked ------------------------------------------------

    def verbs(self) -> list[str]:
        return [r.verb for r in self.requests]

    def watch_rvs(self) -> list[str | None]:
        """The resourceVersion of every plain watch (not a streaming list), in order."""
        return [
            r.query.get("resourceVersion")
            for r in self.requests
            if r.verb == "watch" and "sendInitialEvents" not in r.query
        ]


def run(informer: ResourceInformer) -> None:
    """Run the informer's loop to its end (the script stops it) on a loop of its own."""
    informer._stopping = False  # a test may run it again after it stopped
    asyncio.run(informer.run())


# --------------------------------------------------------------------------- events and pages


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def bookmark(rv: str, *, initial_events_end: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": rv}
    if initial_events_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    return event("BOOKMARK", {"kind": "ConfigMap", "metadata": metadata})


def error_event(code: int, reason: str = "", message: str = "scripted") -> dict[str, Any]:
    return event(
        "ERROR", {"kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message}
    )


def page(items: list[dict[str, Any]], rv: str, cont: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": rv}
    if cont:
        metadata["continue"] = cont
    return {"kind": "ConfigMapList", "metadata": metadata, "items": items}


def broken(message: str = "connection reset by peer") -> ApiError:
    """What WatchStream raises when the connection drops mid-watch."""
    return ApiError(0, "watch connection broken", message)
