"""``k8s-watcher status`` says how far each context of a (re)starting fleet is."""

from __future__ import annotations

from watcher.cli import _describe_progress, _progress


def test_progress_counts_states_per_context_without_unserved_resources() -> None:
    rows = [
        {"context": "a", "state": "watching"},
        {"context": "a", "state": "watching"},
        {"context": "a", "state": "listing"},
        {"context": "a", "state": "unserved"},
        {"context": "b", "state": "starting"},
        {"context": "b", "state": "a state of a newer version"},
    ]
    progress = _progress(rows)
    assert progress == {"a": {"watching": 2, "listing": 1}, "b": {"starting": 2}}
    assert _describe_progress(progress["a"]) == "2/3 watching (1 listing)"
    assert _describe_progress(progress["b"]) == "0/2 watching (2 starting)"
    assert _describe_progress({}) == "0/0 watching"
