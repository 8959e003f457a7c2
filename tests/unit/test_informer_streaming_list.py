"""Streaming lists and relist requests, against a scripted watch stream."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.unit.builders import configmap
from tests.unit.fake_api import MakeInformer, ScriptedApi, ScriptedStream
from watcher.informers import StreamingListUnsupported


def test_relist_requested_during_a_streaming_list_keeps_streaming(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    """Closing the initial state's stream ourselves (relist request) is not a server
    that cannot stream lists: the informer must not fall back to LIST for good."""
    uid = str(uuid.uuid4())
    stream = ScriptedStream([[{"type": "ADDED", "object": configmap("a", uid, "5")}]] * 3)
    api.watches(stream)
    inf = make_informer()
    stream.on_batch = inf.request_relist
    asyncio.run(inf._watch(streaming_list=True))  # no StreamingListUnsupported
    assert inf.streaming and stream.closed and stream.delivered == 1


def test_stream_that_ends_before_the_initial_bookmark_still_means_unsupported(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    stream = ScriptedStream([[{"type": "ADDED", "object": configmap("a", str(uuid.uuid4()), "5")}]])
    api.watches(stream)
    with pytest.raises(StreamingListUnsupported):
        asyncio.run(make_informer()._watch(streaming_list=True))


def test_relist_requested_while_no_watch_is_open_closes_the_next_watch_at_once(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    """A request made during a LIST or a backoff must not wait out the next watch's
    server timeout (5-10 minutes)."""
    stream = ScriptedStream([[{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}}]] * 5)
    api.watches(stream)
    inf = make_informer(resume_from="5")
    inf.request_relist()  # no stream open yet
    asyncio.run(inf._watch(streaming_list=False))
    assert stream.closed and stream.delivered == 0
