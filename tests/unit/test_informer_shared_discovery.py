"""Contexts of one API server keep one copy of what it serves (about 400 KB each)."""

from __future__ import annotations

from watcher.discovery import Served
from watcher.informers import _SharedDiscovery


def served(*plurals: str) -> dict[str, Served]:
    return {
        p: Served(
            group="", version="v1", plural=p, kind=p.title(), namespaced=True, verbs=frozenset({"list"})
        )
        for p in plurals
    }


def test_equal_answers_share_one_copy_and_only_the_recent_ones_are_kept() -> None:
    shared = _SharedDiscovery(keep=2)
    first = shared(served("pods", "nodes"))
    assert shared(served("pods", "nodes")) is first
    other = shared(served("pods"))
    assert other is not first and other == served("pods")
    assert shared(served("pods", "nodes")) is first  # still among the 2 kept
    shared(served("secrets"))
    shared(served("configmaps"))
    again = served("pods", "nodes")
    assert shared(again) is again  # forgotten: a new copy is kept
    assert shared(None) is None
