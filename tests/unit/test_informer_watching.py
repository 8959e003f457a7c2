"""How an informer watches, without a server: resuming from a stored resourceVersion,
every event (bookmarks too) moving it forward, and a watch that breaks (the watching
half of client-go's reflector_test.go)."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.builders import checkpoints_of, named_configmap, stored_rows
from tests.unit.fake_api import FakeClock, MakeInformer, ScriptedApi, bookmark, broken, event, run
from watcher.informers import BookmarkCheckpoints
from watcher.kube import ApiError
from watcher.state import CacheStore, InformerStatus

PROMPT = (0.05, 0.25)  # the re-watch delay after a broken watch, below any backoff
FIRST_BACKOFF = (0.8, 1.6)  # client-go's first backoff delay, with up to 100 % jitter


@pytest.fixture
def clock(api: ScriptedApi) -> FakeClock:
    """The informer's monotonic clock, frozen until a test moves ``now``."""
    return api.clock


def test_a_resumed_informer_watches_from_its_stored_rv_and_lists_nothing(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    api.watches([])
    inf = make_informer(resume_from="42")
    run(inf)
    assert api.verbs() == ["watch", "watch"]
    assert api.watch_rvs() == ["42", "42"]
    assert inf.status.lists == 0 and api.waits == []


def test_every_event_including_a_bookmark_advances_the_resource_version(
    api: ScriptedApi, make_informer: MakeInformer, store: CacheStore
) -> None:
    api.watches([[event("ADDED", named_configmap("a", "6"))], [bookmark("9")]])
    api.watches([[event("DELETED", named_configmap("a", "11"))]])
    api.watches([[bookmark("15")]])
    inf = make_informer(resume_from="5")
    run(inf)
    assert api.watch_rvs() == ["5", "9", "11", "15"]
    assert inf.resource_version == "15"
    assert inf.status.events == 2  # ADDED and DELETED; bookmarks are not events
    # The cache's checkpoint moved with the bookmark too: a restart resumes from 15.
    assert [c["resource_version"] for c in checkpoints_of(store)] == ["15"]
    assert stored_rows(store)["a"]["deleted"] == 1


def test_a_watch_that_delivered_events_and_then_broke_rewatches_promptly_from_the_last_rv(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    api.watches([[event("ADDED", named_configmap("a", "6"))], broken()])
    api.watches(ApiError(503, "Service Unavailable", "etcd leader changed"))
    inf = make_informer(resume_from="5")
    run(inf)
    assert api.verbs() == ["watch", "watch", "watch"]
    assert api.watch_rvs() == ["5", "6", "6"]
    first, second = api.waits
    assert first.state == "backoff" and first.resource_version == "6"
    assert PROMPT[0] <= first.seconds <= PROMPT[1]  # WatchBroken: no exponential backoff
    # ... and it did not advance the backoff: the next failure waits the first delay.
    assert FIRST_BACKOFF[0] <= second.seconds <= FIRST_BACKOFF[1]
    assert "connection reset by peer" in (first.error or "") and "HTTP 503" in (second.error or "")
    assert (inf.status.errors, inf.status.lists, inf.status.relists) == (2, 0, 0)


def test_a_watch_open_for_over_a_second_that_broke_without_events_rewatches_promptly(
    api: ScriptedApi, make_informer: MakeInformer, clock: FakeClock
) -> None:
    def quiet_for_two_seconds() -> None:
        clock.now += 2.0

    api.watches([quiet_for_two_seconds, broken()])
    inf = make_informer(resume_from="5")
    run(inf)
    assert api.watch_rvs() == ["5", "5"]
    (wait,) = api.waits
    assert wait.state == "backoff" and PROMPT[0] <= wait.seconds <= PROMPT[1]


def test_a_watch_that_broke_at_once_backs_off_exponentially_and_rewatches_from_the_same_rv(
    api: ScriptedApi, make_informer: MakeInformer, clock: FakeClock
) -> None:
    """(The clock stands still: the watch broke at once however slow the machine.)"""
    api.watches([broken()]).watches([broken()])
    inf = make_informer(resume_from="5")
    run(inf)
    assert api.verbs() == ["watch", "watch", "watch"]
    assert api.watch_rvs() == ["5", "5", "5"]
    first, second = api.waits
    assert first.state == second.state == "backoff"
    assert FIRST_BACKOFF[0] <= first.seconds <= FIRST_BACKOFF[1]
    assert 2 * FIRST_BACKOFF[0] <= second.seconds <= 2 * FIRST_BACKOFF[1]  # doubled
    assert "watch connection broken" in (first.error or "")
    assert (inf.status.errors, inf.status.lists, inf.status.relists) == (2, 0, 0)


def test_bookmark_only_checkpoints_are_written_together_with_each_informers_current_status() -> None:
    """One write per interval for every informer a bookmark moved, carrying the status as
    it is when the timer fires (never older than a checkpoint written meanwhile); an
    informer stopping writes its own last checkpoint."""
    written: list[list[tuple[str, str | None]]] = []

    class Store:
        def write_statuses(self, statuses: list[InformerStatus]) -> None:
            written.append([(s.resource, s.resource_version) for s in statuses])

    store = Store()

    class Informer:
        def __init__(self, resource: str) -> None:
            self.stopping, self.store = False, store
            self.status = InformerStatus(context="c", resource=resource, table_name="t", state="watching")

        def _current_status(self) -> InformerStatus:
            return self.status

    async def scenario() -> None:
        deferred = BookmarkCheckpoints(interval=0.01)
        a, b, gone = Informer("a"), Informer("b"), Informer("gone")
        a.status.resource_version = "5"
        deferred.defer(a)  # type: ignore[arg-type]
        a.status.resource_version = "7"
        deferred.defer(a)  # type: ignore[arg-type]
        b.status.resource_version = "3"
        deferred.defer(b)  # type: ignore[arg-type]
        gone.stopping = True
        deferred.defer(gone)  # type: ignore[arg-type]
        a.status.resource_version = "9"  # an event moved it on before the timer fired
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert written == [[("a", "9"), ("b", "3")]]
