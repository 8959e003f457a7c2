"""The poller of resources that can be listed but not watched (component statuses):
alone over a scripted API and a fake clock, then under a real informer and cache."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.unit.builders import checkpoints_of, stored_rows
from tests.unit.fake_api import ScriptedApi, run
from watcher.informers import Clock, InformerOptions, ResourceInformer
from watcher.kube import ApiError, is_unsupported_request
from watcher.polling import PollingListerWatcher, list_version, lister_for
from watcher.resources import BY_KEY
from watcher.state import CacheStore

CS = BY_KEY["componentstatuses"]
PATH = CS.collection_path()


def status(name: str, healthy: bool = True) -> dict[str, Any]:
    """A component status as the API server serves it: no uid, no resourceVersion."""
    message = "ok" if healthy else "connection refused"
    return {"metadata": {"name": name},
            "conditions": [{"type": "Healthy", "status": str(healthy), "message": message}]}  # fmt: skip


def computed(*items: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "ComponentStatusList", "metadata": {}, "items": list(items)}


class Sleeps(Clock):
    """Records every wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


async def _events(poller: PollingListerWatcher, rv: str) -> list[list[dict[str, Any]]]:
    stream = await poller.awatch(PATH, {"watch": "1", "resourceVersion": rv}, read_timeout=600)
    return [batch async for batch in stream]


def _kinds(batches: list[list[dict[str, Any]]]) -> list[tuple[str, str | None]]:
    return [(e["type"], e["object"]["metadata"].get("name")) for batch in batches for e in batch]


@pytest.fixture
def clock() -> Sleeps:
    return Sleeps()


@pytest.fixture
def poller(api: ScriptedApi, clock: Sleeps) -> PollingListerWatcher:
    return PollingListerWatcher(api, interval=60, clock=clock)  # type: ignore[arg-type]


def test_a_list_is_whole_and_its_objects_get_a_stable_uid_and_a_version_from_their_content(
    api: ScriptedApi, poller: PollingListerWatcher
) -> None:
    api.lists(computed(status("etcd-0"), status("scheduler", False)))
    api.lists(computed(status("etcd-0"), status("scheduler", True)))
    first = asyncio.run(poller.aget(PATH, {"limit": 500, "resourceVersion": "0"}))
    second = asyncio.run(poller.aget(PATH, {"limit": 500, "resourceVersion": "0"}))
    assert [r.query for r in api.requests] == [{"resourceVersion": "0"}] * 2  # no pagination asked
    assert "continue" not in first["metadata"]
    meta1 = {o["metadata"]["name"]: o["metadata"] for o in first["items"]}
    meta2 = {o["metadata"]["name"]: o["metadata"] for o in second["items"]}
    assert {n: m["uid"] for n, m in meta1.items()} == {n: m["uid"] for n, m in meta2.items()}
    assert meta1["etcd-0"]["uid"] != meta1["scheduler"]["uid"]
    assert meta1["etcd-0"]["resourceVersion"] == meta2["etcd-0"]["resourceVersion"]
    assert meta1["scheduler"]["resourceVersion"] != meta2["scheduler"]["resourceVersion"]
    # The list's version changes with any object's.
    assert first["metadata"]["resourceVersion"] != second["metadata"]["resourceVersion"]


def test_a_watch_waits_the_interval_then_delivers_the_difference_and_a_bookmark_and_ends(
    api: ScriptedApi, poller: PollingListerWatcher, clock: Sleeps
) -> None:
    api.lists(computed(status("etcd-0"), status("scheduler", False), status("controller-manager")))
    api.lists(computed(status("etcd-0"), status("scheduler", True), status("etcd-1")))
    listed = asyncio.run(poller.aget(PATH))
    batches = asyncio.run(_events(poller, listed["metadata"]["resourceVersion"]))
    assert clock.waits == [60]
    assert _kinds(batches) == [
        ("ADDED", "etcd-1"), ("MODIFIED", "scheduler"), ("DELETED", "controller-manager"), ("BOOKMARK", None),
    ]  # fmt: skip
    events = batches[0]
    assert events[1]["object"]["conditions"][0]["status"] == "True"
    # The deleted object is its last state, uid and all (the cache tombstones it by uid).
    gone = next(o for o in listed["items"] if o["metadata"]["name"] == "controller-manager")
    assert events[2]["object"] == gone
    # The bookmark moves the informer to the new list's version.
    now = {e["object"]["metadata"]["uid"]: e["object"] for e in events[:2]}
    now |= {o["metadata"]["uid"]: o for o in listed["items"] if o["metadata"]["name"] == "etcd-0"}
    assert events[3]["object"]["metadata"]["resourceVersion"] == list_version(now)


def test_a_poll_that_finds_nothing_changed_ends_without_events(
    api: ScriptedApi, poller: PollingListerWatcher, clock: Sleeps
) -> None:
    api.lists(computed(status("etcd-0"))).lists(computed(status("etcd-0")))
    rv = asyncio.run(poller.aget(PATH))["metadata"]["resourceVersion"]
    assert asyncio.run(_events(poller, rv)) == []
    assert api.verbs() == ["list", "list"] and clock.waits == [60]


def test_a_resumed_watch_takes_the_same_list_as_it_and_answers_410_to_another(
    api: ScriptedApi, clock: Sleeps
) -> None:
    """A restarted daemon resumes from the stored list version: nothing is listed at
    start, and the first poll either finds that list or sends the informer to relist."""
    api.lists(computed(status("etcd-0")))
    stored = asyncio.run(PollingListerWatcher(api, clock=clock).aget(PATH))  # type: ignore[arg-type]
    api.lists(computed(status("etcd-0"))).lists(computed(status("etcd-0"), status("etcd-1")))
    stored_rv = stored["metadata"]["resourceVersion"]
    same = PollingListerWatcher(api, clock=clock)  # type: ignore[arg-type]  # a new process
    assert asyncio.run(_events(same, stored_rv)) == []
    other = PollingListerWatcher(api, clock=clock)  # type: ignore[arg-type]
    (batch,) = asyncio.run(_events(other, stored_rv))
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in batch] == [
        ("ERROR", 410, "Expired")
    ]


def test_a_streaming_list_is_refused_as_unsupported_before_any_request(
    api: ScriptedApi, poller: PollingListerWatcher
) -> None:
    query = {"watch": "1", "sendInitialEvents": "true", "resourceVersion": ""}
    with pytest.raises(ApiError) as refused:
        asyncio.run(poller.awatch(PATH, query, read_timeout=600))
    assert is_unsupported_request(refused.value)  # the informer falls back to a LIST
    assert api.requests == []


def test_a_watch_closed_while_it_waits_ends_without_listing(api: ScriptedApi) -> None:
    class Forever(Clock):
        async def sleep(self, seconds: float) -> None:
            await asyncio.Event().wait()

    poller = PollingListerWatcher(api, clock=Forever())  # type: ignore[arg-type]

    async def closed_early() -> list[list[dict[str, Any]]]:
        stream = await poller.awatch(PATH, {"resourceVersion": "x"}, read_timeout=600)
        reading = asyncio.ensure_future(_collect(stream))
        await asyncio.sleep(0.01)
        stream.close()  # what an informer's stop or relist does
        return await asyncio.wait_for(reading, 5)

    assert asyncio.run(closed_early()) == []
    assert api.requests == []


async def _collect(stream: Any) -> list[list[dict[str, Any]]]:
    return [batch async for batch in stream]


def test_only_list_only_resources_are_polled(api: ScriptedApi) -> None:
    assert isinstance(lister_for(api, CS), PollingListerWatcher)  # type: ignore[arg-type]
    assert lister_for(api, BY_KEY["pods"]) is api  # type: ignore[arg-type]
    assert CS.list_only and not any(d.list_only for d in BY_KEY.values() if d is not CS)


# --------------------------------------------------------------------------- under an informer


def polled_informer(api: ScriptedApi, store: CacheStore, resume_from: str | None = None) -> ResourceInformer:
    informer = ResourceInformer(
        client=PollingListerWatcher(api, clock=api.clock),  # type: ignore[arg-type]
        descriptor=CS,
        store=store,
        options=InformerOptions(),
        resume_from=resume_from,
        clock=api.clock,
    )
    return api.attach(informer)


def test_an_informer_lists_then_polls_a_list_only_resource_into_the_cache(
    api: ScriptedApi, store: CacheStore
) -> None:
    api.lists(computed(status("etcd-0"), status("scheduler", False)))  # the LIST, after the refused stream
    api.lists(computed(status("etcd-0"), status("scheduler", False)))  # poll 1: unchanged
    api.lists(computed(status("etcd-0"), status("scheduler", True)))  # poll 2: scheduler healthy
    api.lists(computed(status("scheduler", True)))  # poll 3: etcd-0 gone
    informer = polled_informer(api, store)
    run(informer)
    assert api.verbs() == ["list"] * 5  # the LIST and 4 polls (the script ends in the 4th)
    assert [w.seconds for w in api.waits] == [60.0] * 4  # one wait before each poll, no backoff
    assert informer.status.lists == 1 and informer.status.relists == 0
    assert informer.status.events == 2  # poll 1 changed nothing; MODIFIED scheduler, DELETED etcd-0
    rows = stored_rows(store)
    assert rows["etcd-0"]["deleted"] == 1 and rows["scheduler"]["deleted"] == 0
    assert b'"True"' in rows["scheduler"]["row"]
    (checkpoint,) = checkpoints_of(store)
    assert checkpoint["resource_version"] == informer.resource_version


def test_a_restarted_informer_polls_from_its_stored_version_and_relists_when_the_list_moved(
    api: ScriptedApi, store: CacheStore
) -> None:
    api.lists(computed(status("etcd-0"), status("scheduler")))
    first = polled_informer(api, store)
    run(first)
    stored = first.resource_version
    seq = stored_rows(store)["scheduler"]["seq"]
    api.requests.clear()
    api.waits.clear()
    api.lists(computed(status("scheduler")))  # the first poll: etcd-0 went away while down
    api.lists(computed(status("scheduler")))  # the relist the 410 asks for
    second = polled_informer(api, store, resume_from=stored)
    run(second)
    assert api.verbs() == ["list", "list", "list"]  # the poll, the relist, the next poll
    assert second.status.relists == 1 and second.status.lists == 1
    rows = stored_rows(store)
    assert rows["etcd-0"]["deleted"] == 1
    assert rows["scheduler"]["seq"] == seq  # relisted unchanged: same content, same version, same seq
