"""What a server serves, from its discovery documents, and what to watch of it
(watcher.discovery), without a server: a client that answers GETs from a dict."""

from __future__ import annotations

import time
from typing import Any

import pytest

from watcher.discovery import (
    AGGREGATED,
    Served,
    discovered_table,
    plan_builtins,
    plan_discovered,
    served_resources,
)
from watcher.kube import ApiError
from watcher.refresh import stale_resources
from watcher.resources import BY_KEY, RESOURCES
from watcher.snapshot import Freshness
from watcher.state import UNSERVED


class Documents:
    """A fake KubeClient: GET answers from ``docs`` by path (an ApiError when the
    answer is one); records each path and Accept header."""

    context = "ctx"

    def __init__(self, docs: dict[str, Any]) -> None:
        self.docs = docs
        self.requests: list[tuple[str, str]] = []

    def get(
        self, path: str, query: Any = None, *, accept: str = "application/json", timeout: float = 60
    ) -> Any:
        self.requests.append((path, accept))
        answer = self.docs[path]
        if isinstance(answer, ApiError):
            raise answer
        return answer


def _res(
    plural: str, kind: str, scope: str = "Namespaced", verbs: tuple[str, ...] = ("list", "watch")
) -> Any:
    return {"resource": plural, "responseKind": {"kind": kind}, "scope": scope, "verbs": list(verbs)}


AGGREGATED_DOCS = {
    "/api": {"kind": "APIGroupDiscoveryList", "items": [{"metadata": {}, "versions": [{"version": "v1", "resources": [
        _res("pods", "Pod"), _res("pods/status", "Pod"), _res("events", "Event"),
        _res("componentstatuses", "ComponentStatus", "Cluster", ("get", "list")),
        _res("bindings", "Binding", verbs=("create",)),
    ]}]}]},
    "/apis": {"kind": "APIGroupDiscoveryList", "items": [
        {"metadata": {"name": "autoscaling"}, "versions": [
            {"version": "v2", "resources": [_res("horizontalpodautoscalers", "HorizontalPodAutoscaler")]},
            {"version": "v1", "resources": [_res("horizontalpodautoscalers", "HorizontalPodAutoscaler")]},
        ]},
        {"metadata": {"name": "events.k8s.io"}, "versions": [{"version": "v1", "resources": [_res("events", "Event")]}]},
        {"metadata": {"name": "apps"}, "versions": [{"version": "v1", "resources": [
            _res("controllerrevisions", "ControllerRevision")]}]},
        {"metadata": {"name": "example.com"}, "versions": [{"version": "v1", "resources": [_res("widgets", "Widget")]}]},
        {"metadata": {"name": "metrics.k8s.io"}, "versions": [{"version": "v1beta1", "resources": [
            _res("nodes", "NodeMetrics", "Cluster", ("get", "list"))]}]},
    ]},
}  # fmt: skip


def test_aggregated_discovery_reads_two_documents_at_each_resource_s_preferred_version() -> None:
    client = Documents(AGGREGATED_DOCS)
    served = served_resources(client)  # type: ignore[arg-type]
    assert [p for p, _ in client.requests] == ["/api", "/apis"]
    assert all(accept == AGGREGATED for _, accept in client.requests)
    assert "pods/status" not in served and "pods" in served
    hpa = served["horizontalpodautoscalers.autoscaling"]
    assert (hpa.version, hpa.kind, hpa.namespaced) == ("v2", "HorizontalPodAutoscaler", True)
    assert served["componentstatuses"].namespaced is False
    assert served["componentstatuses"].verbs == {"get", "list"}


def test_a_server_without_aggregated_discovery_is_walked_group_by_group_and_a_failing_group_is_left_out() -> (
    None
):
    client = Documents({
        "/api": {"kind": "APIVersions", "versions": ["v1"]},
        "/api/v1": {"resources": [{"name": "pods", "kind": "Pod", "namespaced": True, "verbs": ["list", "watch"]},
                                  {"name": "pods/log", "kind": "Pod", "namespaced": True, "verbs": ["get"]}]},
        "/apis": {"kind": "APIGroupList", "groups": [
            {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}]},
            {"name": "metrics.example.com", "versions": [{"groupVersion": "metrics.example.com/v1", "version": "v1"}]},
        ]},
        "/apis/apps/v1": {"resources": [{"name": "deployments", "kind": "Deployment", "namespaced": True,
                                         "verbs": ["list", "watch"]}]},
        "/apis/metrics.example.com/v1": ApiError(503, "Service Unavailable", "the server is down"),
    })  # fmt: skip
    served = served_resources(client)  # type: ignore[arg-type]
    assert set(served) == {"pods", "deployments.apps"}
    assert served["deployments.apps"] == Served(
        "apps", "v1", "deployments", "Deployment", True, frozenset({"list", "watch"})
    )


def test_built_ins_not_served_or_without_watch_or_excluded_are_skipped_with_the_reason() -> None:
    served = served_resources(Documents(AGGREGATED_DOCS))  # type: ignore[arg-type]
    descs = [
        BY_KEY[k] for k in ("pods", "horizontalpodautoscalers.autoscaling", "events.events.k8s.io", "nodes")
    ]
    run, skipped = plan_builtins(served, descs, exclude=["events"])
    assert [d.key for d in run] == ["pods", "horizontalpodautoscalers.autoscaling"]
    assert skipped == {
        "events.events.k8s.io": "is excluded by the spec",
        "nodes": "is not served by this API server",
    }
    served["pods"] = Served("", "v1", "pods", "Pod", True, frozenset({"list"}))
    assert plan_builtins(served, [BY_KEY["pods"]])[1] == {"pods": "is served without list and watch (list)"}
    # A list-only descriptor (polled) needs no watch.
    assert plan_builtins(served, [BY_KEY["componentstatuses"]]) == ([BY_KEY["componentstatuses"]], {})


def test_discovered_resources_get_generic_descriptors_and_the_rest_a_reason() -> None:
    served = served_resources(Documents(AGGREGATED_DOCS))  # type: ignore[arg-type]
    run, skipped = plan_discovered(served, RESOURCES, custom={"widgets.example.com"})
    # core events are events.k8s.io events (inventoried once); bindings cannot be listed at all
    assert [(d.key, d.table, d.version, d.kind) for d in run] == [
        ("controllerrevisions.apps", "k8s_apps_controllerrevisions", "v1", "ControllerRevision")
    ]
    assert [c.name for c in run[0].columns] == ["fields"]
    # componentstatuses has a descriptor that polls it; other computed lists are skipped
    assert skipped == {"nodes.metrics.k8s.io": "can be listed but not watched (get, list)"}
    none, skipped = plan_discovered(
        served, RESOURCES, custom=set(), exclude=["k8s_apps_*", "widgets.example.com"]
    )
    assert none == []
    assert skipped["controllerrevisions.apps"] == skipped["widgets.example.com"] == "is excluded by the spec"


def test_a_discovered_resource_whose_table_name_is_taken_is_skipped() -> None:
    watchable = frozenset({"list", "watch"})
    served = {
        "containers.pod": Served("pod", "v1", "containers", "X", True, watchable),  # k8s_pod_containers
        "a-b.x.io": Served("x.io", "v1", "a-b", "A", True, watchable),
        "b.x.io.a": Served("x.io.a", "v1", "b", "B", True, watchable),  # k8s_x_io_a_b as well
    }
    run, skipped = plan_discovered(served, RESOURCES, custom=set())
    assert [(d.key, d.table) for d in run] == [("a-b.x.io", "k8s_x_io_a_b")]
    assert skipped == {
        "containers.pod": "would go to table k8s_pod_containers, which is taken",
        "b.x.io.a": "would go to table k8s_x_io_a_b, which is taken",
    }


@pytest.mark.parametrize(
    ("group", "plural", "table"),
    [
        ("apps", "controllerrevisions", "k8s_apps_controllerrevisions"),
        ("networking.k8s.io", "ipaddresses", "k8s_networking_ipaddresses"),
        ("flowcontrol.apiserver.k8s.io", "flowschemas", "k8s_flowcontrol_apiserver_flowschemas"),
        ("", "componentstatuses", "k8s_core_componentstatuses"),
        ("metrics.example-corp.com", "podmetrics", "k8s_metrics_example_corp_com_podmetrics"),
    ],
)
def test_a_discovered_table_is_named_from_group_and_plural(group: str, plural: str, table: str) -> None:
    assert discovered_table(group, plural) == table


def test_a_discovered_table_name_too_long_for_postgresql_ends_in_a_hash() -> None:
    long_group = "very-long-group-name.of-an-aggregated-api.example.com"
    name = discovered_table(long_group, "somethingwithalongname")
    assert len(name) == 63 and name.startswith("k8s_very_long_group_name")
    assert name != discovered_table(long_group, "somethingwithalongnamf")


def test_a_built_in_the_server_does_not_serve_is_not_relisted_as_cold() -> None:
    now = time.time()
    unserved = Freshness(context="ctx", resource="resourceclaims.resource.k8s.io", state=UNSERVED, listed=False,
                         updated_at=now - 5)  # fmt: skip
    descs = [BY_KEY["resourceclaims.resource.k8s.io"]]
    fresh = stale_resources([unserved], ["ctx"], descs, heartbeat=0, max_staleness=60, now=now)
    assert fresh == {}
    old = stale_resources([unserved], ["ctx"], descs, heartbeat=0, max_staleness=1, now=now)
    assert old == {"ctx": descs}  # no daemon and too old: ask the server again
