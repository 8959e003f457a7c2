"""How an informer lists, without a server: LIST from the watch cache then watch, pages
and continue tokens, an expired continue token, streaming lists and the fallback to
LIST (the listing half of client-go's reflector_test.go)."""

from __future__ import annotations

import dataclasses

from tests.unit.builders import CMS, informer_status, named_configmap, stored_rows
from tests.unit.fake_api import MakeInformer, ScriptedApi, bookmark, event, page, run
from watcher.kube import ApiError
from watcher.state import CacheStore

FIRST_LIST = {"limit": 500, "resourceVersion": "0", "resourceVersionMatch": "NotOlderThan"}
CONSISTENT_LIST = {"limit": 500, "resourceVersion": ""}


def test_a_first_start_lists_from_the_watch_cache_then_watches_from_the_lists_rv(
    api: ScriptedApi, make_informer: MakeInformer, store: CacheStore
) -> None:
    api.lists(page([named_configmap("a", "8"), named_configmap("b", "9")], rv="10"))
    api.watches([[event("ADDED", named_configmap("c", "11"))]])
    inf = make_informer(streaming=False)
    run(inf)
    assert api.played_out
    assert api.verbs() == ["list", "watch", "watch"]
    assert api.requests[0].path == "/api/v1/configmaps"
    assert api.requests[0].query == FIRST_LIST  # RV "0": the API server's watch cache, cheap
    watch = api.requests[1].query
    assert watch["resourceVersion"] == "10" and watch["watch"] == "1"
    assert watch["allowWatchBookmarks"] == "true" and "sendInitialEvents" not in watch
    assert 300 <= watch["timeoutSeconds"] <= 600
    # The server ended the watch: watched again at once, from the last event's RV.
    assert api.watch_rvs() == ["10", "11"] and api.waits == []
    # One watch opened: the last request, refused when the script ran out, opened none.
    assert (inf.status.lists, inf.status.relists, inf.status.watches, inf.status.events) == (1, 0, 1, 1)
    assert inf.status.errors == 0 and inf.status.state == "stopped"
    assert {n: (r["deleted"], r["resource_version"]) for n, r in stored_rows(store).items()} == {
        "a": (0, "8"),
        "b": (0, "9"),
        "c": (0, "11"),
    }


def test_a_list_follows_continue_tokens_and_only_its_first_page_names_a_resource_version(
    api: ScriptedApi, make_informer: MakeInformer, store: CacheStore
) -> None:
    api.lists(page([named_configmap("a", "3"), named_configmap("b", "4")], rv="12", cont="token-1"))
    api.lists(page([named_configmap("c", "5")], rv="12", cont="token-2"))
    api.lists(page([], rv="12"))
    inf = make_informer(streaming=False, page_size=2)
    run(inf)
    assert api.verbs() == ["list", "list", "list", "watch"]
    assert [r.query for r in api.requests[:3]] == [
        {"limit": 2, "resourceVersion": "0", "resourceVersionMatch": "NotOlderThan"},
        {"limit": 2, "continue": "token-1"},
        {"limit": 2, "continue": "token-2"},
    ]
    assert api.watch_rvs() == ["12"]
    assert inf.status.lists == 1
    assert set(stored_rows(store)) == {"a", "b", "c"}


def test_a_list_tombstones_what_the_cache_has_and_the_list_has_not(
    api: ScriptedApi, make_informer: MakeInformer, store: CacheStore
) -> None:
    store.apply_events("ctx", CMS, [("ADDED", named_configmap("gone", "1"))], informer_status())
    api.lists(page([named_configmap("kept", "2")], rv="10"))
    run(make_informer(streaming=False))
    rows = stored_rows(store)
    assert (rows["gone"]["deleted"], rows["kept"]["deleted"]) == (1, 0)


def test_an_expired_continue_token_restarts_the_list_with_a_consistent_read(
    api: ScriptedApi, make_informer: MakeInformer, store: CacheStore
) -> None:
    api.lists(page([named_configmap("a", "3")], rv="10", cont="token-1"))
    api.lists(ApiError(410, "Gone", "The provided continue parameter is too old"))
    api.lists(page([named_configmap("b", "15")], rv="20"))
    inf = make_informer(streaming=False)
    run(inf)
    assert api.verbs() == ["list", "list", "list", "watch"]
    assert api.requests[1].query == {"limit": 500, "continue": "token-1"}
    # Started over without the token, as a consistent read (not "0": not older than before).
    assert api.requests[2].query == CONSISTENT_LIST
    assert api.watch_rvs() == ["20"]
    assert api.waits == []  # no backoff: the list just starts over
    assert (inf.status.lists, inf.status.relists, inf.status.errors) == (1, 0, 0)
    # The cache equals the restarted list: what only the abandoned page had is tombstoned.
    rows = stored_rows(store)
    assert (rows["a"]["deleted"], rows["b"]["deleted"]) == (1, 0)


def test_a_410_on_a_lists_first_page_relists_with_a_consistent_read(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    api.lists(ApiError(410, "Expired", "too old resource version"))
    api.lists(page([named_configmap("a", "30")], rv="30"))
    inf = make_informer(streaming=False)
    run(inf)
    assert [r.query for r in api.requests[:2]] == [FIRST_LIST, CONSISTENT_LIST]
    assert api.watch_rvs() == ["30"] and api.waits == []
    assert (inf.status.lists, inf.status.relists) == (1, 1)


def test_a_streaming_list_writes_the_initial_state_as_a_list_and_watches_on_in_the_same_request(
    api: ScriptedApi, make_informer: MakeInformer, store: CacheStore
) -> None:
    store.apply_events("ctx", CMS, [("ADDED", named_configmap("gone", "1"))], informer_status())
    api.watches(
        [
            [event("ADDED", named_configmap("a", "5")), event("ADDED", named_configmap("b", "6"))],
            [bookmark("7", initial_events_end=True)],
            [event("MODIFIED", named_configmap("a", "8", k="v"))],
        ]
    )
    inf = make_informer(streaming=True)
    run(inf)
    assert api.verbs() == ["watch", "watch"]
    assert api.requests[0].query | {"timeoutSeconds": 0} == {
        "watch": "1",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": 0,
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "resourceVersion": "",
    }
    assert api.watch_rvs() == ["8"]  # the next watch is a plain one, from the last event
    assert (inf.status.lists, inf.status.watches, inf.status.events) == (1, 1, 1)  # initial state: no events
    assert inf.streaming
    rows = stored_rows(store)
    assert {n: (r["deleted"], r["resource_version"]) for n, r in rows.items()} == {
        "gone": (1, "1"),
        "a": (0, "8"),
        "b": (0, "6"),
    }


def test_a_server_that_cannot_stream_lists_is_listed_from_then_on(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    api.watches(ApiError(422, "Unprocessable Entity", "sendInitialEvents is forbidden"))
    api.lists(page([named_configmap("a", "5")], rv="5"))
    api.watches([])
    inf = make_informer(streaming=True)
    run(inf)
    assert api.verbs() == ["watch", "list", "watch", "watch"]
    assert api.requests[0].query["sendInitialEvents"] == "true"
    assert api.requests[1].query == FIRST_LIST
    assert api.watch_rvs() == ["5", "5"]
    assert inf.streaming is False
    assert api.waits == [] and inf.status.errors == 0


def test_a_descriptors_field_selector_goes_with_every_list_and_watch(
    api: ScriptedApi, make_informer: MakeInformer
) -> None:
    leases = dataclasses.replace(CMS, field_selector="metadata.namespace!=kube-node-lease")
    api.lists(page([], rv="10")).watches([[bookmark("11")]])
    run(make_informer(leases, streaming=False))
    selectors = {r.verb: r.query.get("fieldSelector") for r in api.requests}
    assert selectors == {
        "list": "metadata.namespace!=kube-node-lease",
        "watch": "metadata.namespace!=kube-node-lease",
    }
