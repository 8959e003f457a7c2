"""What the API servers' audit logs say k8s-watcher asked for."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from testbed.cluster import ApiServer
from watcher.resources import RESOURCES


def received(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()


def watcher_events(server: ApiServer, since: float) -> list[dict[str, Any]]:
    """Audit events of k8s-watcher's requests for resources since ``since``."""
    plurals = {d.plural for d in RESOURCES}
    return [
        e
        for e in server.audit_events()
        if e.get("userAgent", "").startswith("k8s-watcher/")
        and received(e) >= since
        and e.get("objectRef", {}).get("resource") in plurals
    ]


def accepted(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of requests the server authenticated (not refused with 401)."""
    return [e for e in events if e.get("responseStatus", {}).get("code", 200) != 401]


#: Resources the daemon polls with a LIST a minute (no watch verb: watcher.polling).
POLLED = {d.plural for d in RESOURCES if d.list_only}


def list_requests(events: list[dict[str, Any]]) -> list[str]:
    """LISTs and streaming lists (watches with sendInitialEvents) among the events,
    but for the polls of list-only resources: a poll is how those are followed, not a
    relist."""
    return [
        e["requestURI"]
        for e in events
        if (e["verb"] == "list" or "sendInitialEvents=true" in e["requestURI"])
        and e.get("objectRef", {}).get("resource") not in POLLED
    ]
