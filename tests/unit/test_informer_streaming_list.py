"""Streaming lists and relist requests, against a scripted watch stream."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.builders import CMS, configmap
from watcher import informers
from watcher.informers import ResourceInformer, StreamingListUnsupported
from watcher.state import CacheStore


class ScriptedStream:
    """A watch stream yielding scripted batches; ``on_batch`` runs after each one (to
    act on the informer mid-stream). Closing it ends the iteration, as WatchStream does."""

    def __init__(self, batches: list[list[dict[str, Any]]], on_batch: Any = None) -> None:
        self.batches, self.on_batch, self.closed, self.delivered = batches, on_batch, False, 0

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        for batch in self.batches:
            if self.closed:
                return
            self.delivered += 1
            yield batch
            if self.on_batch is not None:
                self.on_batch()

    def close(self) -> None:
        self.closed = True


class ScriptedClient:
    context = "ctx"

    def __init__(self, stream: ScriptedStream) -> None:
        self._stream = stream

    def stream(self, *_args: Any, **_kwargs: Any) -> ScriptedStream:
        return self._stream


def _scripted_informer(
    store: CacheStore, stream: ScriptedStream, *, resume_from: str | None = None
) -> ResourceInformer:
    return ResourceInformer(
        client=ScriptedClient(stream),  # type: ignore[arg-type]
        descriptor=CMS, store=store, options=informers.InformerOptions(), resume_from=resume_from,
    )  # fmt: skip


def test_relist_requested_during_a_streaming_list_keeps_streaming(store: CacheStore) -> None:
    """Closing the initial state's stream ourselves (relist request) is not a server
    that cannot stream lists: the informer must not fall back to LIST for good."""
    uid = str(uuid.uuid4())
    stream = ScriptedStream([[{"type": "ADDED", "object": configmap("a", uid, "5")}]] * 3)
    inf = _scripted_informer(store, stream)
    stream.on_batch = inf.request_relist
    inf._watch(streaming_list=True)  # no StreamingListUnsupported
    assert inf.streaming and stream.closed and stream.delivered == 1


def test_stream_that_ends_before_the_initial_bookmark_still_means_unsupported(store: CacheStore) -> None:
    stream = ScriptedStream([[{"type": "ADDED", "object": configmap("a", str(uuid.uuid4()), "5")}]])
    with pytest.raises(StreamingListUnsupported):
        _scripted_informer(store, stream)._watch(streaming_list=True)


def test_relist_requested_while_no_watch_is_open_closes_the_next_watch_at_once(store: CacheStore) -> None:
    """A request made during a LIST or a backoff must not wait out the next watch's
    server timeout (5-10 minutes)."""
    stream = ScriptedStream([[{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}]] * 5)
    inf = _scripted_informer(store, stream, resume_from="5")
    inf.request_relist()  # no stream open yet
    inf._watch(streaming_list=False)
    assert stream.closed and stream.delivered == 0
