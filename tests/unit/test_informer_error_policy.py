"""What an informer does about each API error, without a server (as client-go's
reflector_test.go): 401/403 park it, 404 on a custom resource is an error backed off,
410 relists with a consistent read, 429 and 5xx back off and re-watch from the same
resourceVersion without relisting, and nothing ends the loop but a stop."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.builders import crd_row, named_configmap, stored_rows
from tests.unit.fake_api import MakeInformer, ScriptedApi, bookmark, error_event, event, page, run
from watcher.kube import ApiError
from watcher.resources import custom_object_descriptor
from watcher.state import CacheStore

FIRST_BACKOFF = (0.8, 1.6)  # client-go's first backoff delay, with up to 100 % jitter
CONSISTENT_LIST = {"limit": 500, "resourceVersion": ""}


def _between(seconds: float | None, low_high: tuple[float, float], factor: float = 1.0) -> bool:
    return seconds is not None and low_high[0] * factor <= seconds <= low_high[1] * factor


# --------------------------------------------------------------------------- 401 / 403


@pytest.mark.parametrize(("status", "reason"), [(401, "Unauthorized"), (403, "Forbidden")])
def test_a_forbidden_watch_parks_the_informer_for_forbidden_retry_then_rewatches_from_the_same_rv(
    api: ScriptedApi, make_informer: MakeInformer, status: int, reason: str
) -> None:
    api.watches(ApiError(status, reason, 'configmaps is forbidden: User "x" cannot watch'))
    inf = make_informer(resume_from="5", forbidden_retry=123.0)
    run(inf)
    (wait,) = api.waits
    assert (wait.seconds, wait.state, wait.resource_version) == (123.0, "forbidden", "5")
    assert f"HTTP {status} {reason}" in (wait.error or "")
    assert api.verbs() == ["watch", "watch"] and api.watch_rvs() == ["5", "5"]
    assert (inf.status.errors, inf.status.lists, inf.status.relists) == (1, 0, 0)


@pytest.mark.parametrize("status", [401, 403])
def test_a_forbidden_list_parks_the_informer_then_lists_again(
    api: ScriptedApi, make_informer: MakeInformer, status: int
) -> None:
    api.lists(ApiError(status, "Forbidden", "no"))
    api.lists(page([named_configmap("a", "7")], rv="7"))
    inf = make_informer(streaming=False, forbidden_retry=300.0)
    run(inf)
    assert [(w.seconds, w.state) for w in api.waits] == [(300.0, "forbidden")]
    assert api.verbs() == ["list", "list", "watch"]
    assert api.watch_rvs() == ["7"]
    # Being forbidden is not an expired RV: the retry is the same cheap list, not a consistent one.
    assert api.requests[1].query == api.requests[0].query
    assert inf.status.lists == 1 and inf.status.relists == 0


# --------------------------------------------------------------------------- 404


def test_a_404_on_a_custom_resource_sets_error_and_backs_off_quietly(
    api: ScriptedApi, make_informer: MakeInformer, caplog: pytest.LogCaptureFixture
) -> None:
    """The CRD is gone (or not served yet): the manager stops the informer, no warning."""
    widgets = custom_object_descriptor(crd_row())
    assert widgets is not None and widgets.custom
    not_found = ApiError(404, "Not Found", "the server could not find the requested resource")
    api.watches(not_found).watches(not_found)
    inf = make_informer(widgets, resume_from="5")
    run(inf)
    assert api.requests[0].path == "/apis/example.com/v1beta1/widgets"
    first, second = api.waits
    assert first.state == second.state == "error"
    assert "HTTP 404" in (first.error or "")
    assert _between(first.seconds, FIRST_BACKOFF)
    assert _between(second.seconds, FIRST_BACKOFF, factor=2)  # backs off exponentially
    assert api.watch_rvs() == ["5", "5", "5"]  # the manager stops it when the CRD is gone
    assert inf.status.errors == 2 and inf.status.relists == 0
    assert not [r for r in caplog.records if r.name == "watcher.informers" and r.levelname == "WARNING"]


def test_a_404_on_a_built_in_resource_is_an_error_backed_off_with_a_warning(
    api: ScriptedApi, make_informer: MakeInformer, caplog: pytest.LogCaptureFixture
) -> None:
    api.watches(ApiError(404, "Not Found", "no such API group"))
    inf = make_informer(resume_from="5")
    run(inf)
    (wait,) = api.waits
    assert wait.state == "error" and _between(wait.seconds, FIRST_BACKOFF)
    assert api.watch_rvs() == ["5", "5"]
    assert any(
        "HTTP 404" in r.getMessage() and "then re-watch from RV 5" in r.getMessage()
        for r in caplog.records
        if r.name == "watcher.informers" and r.levelname == "WARNING"
    )


# --------------------------------------------------------------------------- 410


@pytest.mark.parametrize("how", ["http", "error event"])
def test_a_410_on_watch_relists_with_a_consistent_read_and_counts_a_relist(
    api: ScriptedApi, make_informer: MakeInformer, store: CacheStore, how: str
) -> None:
    if how == "http":
        api.watches(ApiError(410, "Gone", "too old resource version: 5 (90)"))
    else:
        api.watches(
            [
                [
                    event("ADDED", named_configmap("a", "6")),
                    error_event(410, "Expired", "too old resource version"),
                ]
            ]
        )
    api.lists(page([named_configmap("a", "95"), named_configmap("b", "96")], rv="100"))
    inf = make_informer(resume_from="5", streaming=False)
    run(inf)
    assert api.verbs() == ["watch", "list", "watch"]
    # RV "": a consistent read from etcd, never "0" (the watch cache may be as stale as what expired)
    assert api.requests[1].query == CONSISTENT_LIST
    assert api.watch_rvs() == ["5", "100"]
    assert api.waits == []  # relisted at once, no backoff
    assert (inf.status.relists, inf.status.lists, inf.status.errors) == (1, 1, 0)
    assert {n: r["resource_version"] for n, r in stored_rows(store).items()} == {"a": "95", "b": "96"}


def test_a_410_on_watch_relists_through_a_streaming_list_when_the_server_streams_them(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    api.watches(ApiError(410, "Gone", "too old resource version"))
    api.watches([[event("ADDED", named_configmap("a", "95"))], [bookmark("100", initial_events_end=True)]])
    inf = make_informer(resume_from="5", streaming=True)
    run(inf)
    assert api.verbs() == ["watch", "watch", "watch"]
    relist = api.requests[1].query
    assert relist["sendInitialEvents"] == "true" and relist["resourceVersion"] == ""
    assert api.watch_rvs() == ["5", "100"]
    assert (inf.status.relists, inf.status.lists) == (1, 1) and api.waits == []


def test_the_list_after_a_consistent_relist_reads_the_watch_cache_again(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    api.watches(ApiError(410, "Gone", "too old"))
    api.lists(page([], rv="100"))
    api.watches([[error_event(410, "Expired", "too old")]])
    api.lists(page([], rv="200"))
    inf = make_informer(resume_from="5", streaming=False)
    run(inf)
    assert [r.query.get("resourceVersion") for r in api.requests if r.verb == "list"] == ["", ""]
    assert inf.status.relists == 2
    inf.request_relist()  # a relist that is not after a 410 (the safety net): RV "0" again
    api.lists(page([], rv="300"))
    run(inf)
    assert api.requests[-2].query["resourceVersion"] == "0"


# --------------------------------------------------------------------------- 429, 5xx, transport


RETRYABLE = [
    pytest.param(ApiError(429, "Too Many Requests", "storage is (re)initializing"), id="429"),
    pytest.param(ApiError(500, "Internal Server Error", "etcdserver: request timed out"), id="500"),
    pytest.param(ApiError(503, "Service Unavailable", "apiserver is shutting down"), id="503"),
    pytest.param(ApiError(504, "Gateway Timeout", "timeout"), id="504"),
    pytest.param(ApiError(0, "connection error", "connection refused"), id="no answer"),
]


@pytest.mark.parametrize("error", RETRYABLE)
def test_a_retryable_error_opening_a_watch_backs_off_and_rewatches_from_the_same_rv_without_relisting(
    api: ScriptedApi, make_informer: MakeInformer, error: ApiError
) -> None:
    api.watches(error).watches(error)
    inf = make_informer(resume_from="5")
    run(inf)
    assert api.verbs() == ["watch", "watch", "watch"]
    assert api.watch_rvs() == ["5", "5", "5"]
    first, second = api.waits
    assert (first.state, first.resource_version) == ("backoff", "5")
    assert _between(first.seconds, FIRST_BACKOFF) and _between(second.seconds, FIRST_BACKOFF, factor=2)
    assert str(error) == first.error
    assert (inf.status.errors, inf.status.lists, inf.status.relists) == (2, 0, 0)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_retryable_error_event_backs_off_and_rewatches_from_the_last_rv_without_relisting(
    api: ScriptedApi, make_informer: MakeInformer, status: int
) -> None:
    api.watches([[event("ADDED", named_configmap("a", "6"))], [error_event(status, "Busy", "try later")]])
    inf = make_informer(resume_from="5")
    run(inf)
    assert api.verbs() == ["watch", "watch"]
    assert api.watch_rvs() == ["5", "6"]
    (wait,) = api.waits
    assert (wait.state, wait.resource_version) == ("backoff", "6")
    assert _between(wait.seconds, FIRST_BACKOFF)
    assert (inf.status.errors, inf.status.lists, inf.status.relists) == (1, 0, 0)


# --------------------------------------------------------------------------- anything else


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(ApiError(400, "Bad Request", "fieldSelector: unknown field"), id="HTTP 400"),
        pytest.param(RuntimeError("a bug of ours"), id="unexpected exception"),
    ],
)
def test_any_other_failure_is_an_error_backed_off_and_the_informer_keeps_going(
    api: ScriptedApi, make_informer: MakeInformer, failure: Any
) -> None:
    if isinstance(failure, ApiError):
        api.watches(failure)
    else:
        api.watches([failure])
    api.watches([[event("ADDED", named_configmap("a", "6"))]])
    inf = make_informer(resume_from="5")
    run(inf)
    (wait,) = api.waits
    assert wait.state == "error" and _between(wait.seconds, FIRST_BACKOFF)
    assert str(failure) in (wait.error or "")
    assert api.watch_rvs() == ["5", "5", "6"]
    assert inf.status.errors == 1 and inf.status.state == "stopped"


def test_a_stop_during_a_backoff_ends_the_loop_without_another_request(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    api.watches(ApiError(503, "Service Unavailable", "down"))
    inf = make_informer(resume_from="5")
    api.clock.before_wait = inf.stop
    run(inf)
    assert api.verbs() == ["watch"] and len(api.waits) == 1
    assert inf.status.state == "stopped"


# --------------------------------------------------------------------------- fleets


def test_a_429s_retry_after_is_the_least_the_informer_waits(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    """API Priority and Fairness sheds load with 429 and says how long to stay away."""
    api.watches(ApiError(429, "Too Many Requests", "throttled", retry_after=45.0))
    api.watches(ApiError(429, "Too Many Requests", "throttled"))
    inf = make_informer(resume_from="5")
    run(inf)
    first, second = api.waits
    assert first.seconds == 45.0 and first.state == "backoff"
    assert second.seconds is not None and second.seconds <= 30.0  # no Retry-After: the backoff alone
    assert api.watch_rvs() == ["5", "5", "5"] and inf.status.lists == 0


def test_watches_take_short_turns_while_http11_connections_are_all_taken(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    api.watches([[bookmark("6")]])
    inf = make_informer(resume_from="5", crowded_watch_seconds=15)
    api.crowded = True
    run(inf)
    timeouts = [r.query["timeoutSeconds"] for r in api.requests if r.verb == "watch"]
    assert timeouts and all(t <= 15 for t in timeouts)
    api.crowded = False
    api.watches([[bookmark("7")]])
    run(inf)
    assert api.requests[-2].query["timeoutSeconds"] >= 300  # client-go's 5-10 minutes again
