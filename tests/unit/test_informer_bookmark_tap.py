"""Bookmarks taken off a watch stream without waking the informer's task
(``WatchStream.follow_bookmarks``): the real stream over a response fed as a connection
feeds it, a real informer, a recording sink. What it must keep: an event is never
reordered around a bookmark, and the checkpoint never goes backwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import orjson
import pytest

from tests.unit.builders import CMS, named_configmap
from watcher.informers import BookmarkCheckpoints, InformerOptions, ResourceInformer
from watcher.kube import WatchStream
from watcher.resources import ResourceDescriptor
from watcher.state import InformerStatus
from watcher.transport import HttpResponse, TransportError


def line(kind: str, obj: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": kind, "object": obj}) + b"\n"


def bookmark_line(rv: str) -> bytes:
    # As kube-apiserver encodes it: type first, the object's kind and metadata only.
    return (
        b'{"type":"BOOKMARK","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"resourceVersion":"%s","creationTimestamp":null}}}\n'
        % rv.encode()
    )


class CountingStream(WatchStream):
    """A WatchStream that counts the batches it yields (each one a wake of the task)."""

    batches = 0

    async def __aiter__(self) -> AsyncIterator[list[dict[str, Any]]]:
        async for batch in super().__aiter__():
            CountingStream.batches += 1
            yield batch


class Api:
    context = "ctx"
    server_key = "https://fake"
    crowded = False

    def __init__(self) -> None:
        self.responses: list[HttpResponse] = []
        self.streams: list[CountingStream] = []
        self.opened = asyncio.Event()

    async def aget(self, path: str, query: Mapping[str, Any] | None = None, **_: Any) -> Any:
        raise AssertionError("no LIST expected")

    async def awatch(self, path: str, query: Mapping[str, Any], **_: Any) -> WatchStream:
        resp = HttpResponse()
        resp.status = 200
        stream = CountingStream(resp, 60.0)
        self.responses.append(resp)
        self.streams.append(stream)
        self.opened.set()
        return stream


class Sink:
    """Records, in order, what reaches the cache: event batches (with the checkpoint
    they carry) and checkpoints written alone."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any, str | None]] = []

    def begin_relist(self) -> int:
        return 1

    def relist_page(
        self, context: str, desc: ResourceDescriptor, items: list[dict[str, Any]], gen: int
    ) -> None:
        raise AssertionError("no list expected")

    def end_relist(self, context: str, desc: ResourceDescriptor, gen: int, status: InformerStatus) -> None:
        raise AssertionError("no list expected")

    def apply_events(
        self,
        context: str,
        desc: ResourceDescriptor,
        events: Iterable[tuple[str, dict[str, Any]]],
        status: InformerStatus,
    ) -> None:
        kinds = [(kind, obj["metadata"]["resourceVersion"]) for kind, obj in events]
        self.log.append(("events", kinds, status.resource_version))

    def write_status(self, status: InformerStatus) -> None:
        self.log.append(("status", status.state, status.resource_version))

    def write_statuses(self, statuses: Sequence[InformerStatus]) -> None:
        for status in statuses:
            self.log.append(("checkpoint", status.state, status.resource_version))

    def checkpoints(self) -> list[str | None]:
        """Every resourceVersion the cache was told to resume from, in order."""
        return [rv for _, _, rv in self.log]


async def settle() -> None:
    """Let the informer's task run until it waits for the network again."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def _count_from_zero() -> None:
    CountingStream.batches = 0


def test_a_bookmark_while_the_watch_waits_moves_the_rv_without_a_batch_and_keeps_the_order() -> None:
    api, sink = Api(), Sink()

    async def scenario() -> ResourceInformer:
        checkpoints = BookmarkCheckpoints(interval=0.02)
        informer = ResourceInformer(
            client=api,
            descriptor=CMS,
            store=sink,
            options=InformerOptions(bookmarks=checkpoints),
            resume_from="5",
        )
        task = asyncio.get_running_loop().create_task(informer.run())
        await api.opened.wait()
        await settle()
        resp, stream = api.responses[0], api.streams[0]

        # An idle watch's bookmark: taken, no batch, the RV moved, the checkpoint deferred.
        resp._deliver(bookmark_line("7"))
        assert (informer.resource_version, stream.bookmarks_taken, CountingStream.batches) == ("7", 1, 0)
        await asyncio.sleep(0.05)
        assert sink.log[-1] == ("checkpoint", "watching", "7")

        # An event, then a bookmark before the task ran: the bookmark waits its turn
        # behind the event (not taken), both go in one batch, in order.
        resp._deliver(line("ADDED", named_configmap("a", "8")))
        resp._deliver(bookmark_line("9"))
        assert informer.resource_version == "7" and stream.bookmarks_taken == 1
        await settle()
        assert informer.resource_version == "9" and CountingStream.batches == 1
        assert sink.log[-1] == ("events", [("ADDED", "8"), ("BOOKMARK", "9")], "9")

        # A read of an event and a bookmark together is a batch, as before.
        resp._deliver(line("MODIFIED", named_configmap("a", "10")) + bookmark_line("11"))
        await settle()
        assert sink.log[-1] == ("events", [("MODIFIED", "10"), ("BOOKMARK", "11")], "11")
        assert CountingStream.batches == 2

        # A bookmark split over two reads: the second half completes a line the
        # stream holds, so it is not taken on its own.
        half = len(bookmark_line("12")) // 2
        resp._deliver(bookmark_line("12")[:half])
        await settle()
        resp._deliver(bookmark_line("12")[half:])
        assert stream.bookmarks_taken == 1
        await settle()
        assert informer.resource_version == "12" and CountingStream.batches == 3

        # Several whole bookmarks in one read: taken, in order.
        resp._deliver(bookmark_line("13") + bookmark_line("14"))
        assert (informer.resource_version, stream.bookmarks_taken) == ("14", 3)
        # A line that only looks like one at its start is not taken.
        resp._deliver(b'{"type":"BOOKMARK"} garbage\n')
        assert stream.bookmarks_taken == 3
        await settle()
        await asyncio.sleep(0.05)
        informer.stop()
        await task
        return informer

    informer = asyncio.run(scenario())
    assert informer.status.events == 2
    # What the cache was told to resume from never went backwards.
    rvs = [int(rv) for rv in sink.checkpoints() if rv is not None]
    assert rvs == sorted(rvs) and rvs[-1] == 14
    assert sink.log[-1] == ("status", "stopped", "14")


def test_a_streaming_list_takes_bookmarks_only_after_its_initial_state() -> None:
    """During a streaming list's initial state a bookmark (the initial-events-end one
    above all) goes through the batch path; afterwards they are taken."""
    api, sink = Api(), Sink()
    sink.begin_relist = lambda: 1  # type: ignore[method-assign]
    pages: list[list[str]] = []
    sink.relist_page = lambda c, d, items, gen: pages.append([i["metadata"]["name"] for i in items])  # type: ignore[method-assign]
    ended: list[str | None] = []
    sink.end_relist = lambda c, d, gen, status: ended.append(status.resource_version)  # type: ignore[method-assign]

    async def scenario() -> ResourceInformer:
        informer = ResourceInformer(
            client=api,
            descriptor=CMS,
            store=sink,
            options=InformerOptions(bookmarks=BookmarkCheckpoints(interval=0.01)),
            streaming=True,
        )
        task = asyncio.get_running_loop().create_task(informer.run())
        await api.opened.wait()
        await settle()
        resp, stream = api.responses[0], api.streams[0]
        resp._deliver(line("ADDED", named_configmap("a", "3")))
        await settle()
        resp._deliver(bookmark_line("4"))  # a plain bookmark in the initial state
        await settle()
        assert stream.bookmarks_taken == 0
        end = {
            "kind": "ConfigMap",
            "metadata": {"resourceVersion": "5", "annotations": {"k8s.io/initial-events-end": "true"}},
        }
        resp._deliver(line("BOOKMARK", end))
        await settle()
        assert ended == ["5"] and pages == [["a"]] and stream.bookmarks_taken == 0
        resp._deliver(bookmark_line("6"))
        assert (informer.resource_version, stream.bookmarks_taken) == ("6", 1)
        informer.stop()
        await task
        return informer

    informer = asyncio.run(scenario())
    assert informer.resource_version == "6" and informer.status.lists == 1


def test_without_deferred_checkpoints_every_bookmark_is_a_batch() -> None:
    """The fast path defers the checkpoint: an informer that writes each one at once
    (no BookmarkCheckpoints) keeps the batch path."""
    api, sink = Api(), Sink()

    async def scenario() -> None:
        informer = ResourceInformer(
            client=api, descriptor=CMS, store=sink, options=InformerOptions(), resume_from="5"
        )
        task = asyncio.get_running_loop().create_task(informer.run())
        await api.opened.wait()
        await settle()
        api.responses[0]._deliver(bookmark_line("7"))
        await settle()
        assert api.streams[0].bookmarks_taken == 0 and CountingStream.batches == 1
        assert sink.log[-1] == ("events", [("BOOKMARK", "7")], "7")
        informer.stop()
        await task

    asyncio.run(scenario())


def test_a_taken_chunk_counts_as_data_for_the_idle_timeout() -> None:
    """A watch that only receives taken bookmarks is not idle: its read timeout does
    not fire while they arrive, and does once they stop."""

    async def scenario() -> None:
        resp = HttpResponse()
        taken: list[bytes] = []
        resp.tap(lambda data: taken.append(data) is None)
        reader = asyncio.get_running_loop().create_task(resp.receive(idle_timeout=0.05))
        for i in range(6):
            await asyncio.sleep(0.02)
            resp._deliver(b"%d" % i)
        assert not reader.done() and len(taken) == 6
        with pytest.raises(TransportError, match=r"no data for 0\.05s"):
            await reader

    asyncio.run(scenario())
