"""What an edited kubeconfig changes for the daemon (watcher.reload.KubeconfigWatch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from watcher.kubeconfig import KubeconfigError
from watcher.reload import ContextChanges, KubeconfigWatch


def write(path: Path, contexts: dict[str, dict[str, Any]]) -> Path:
    """``name: user`` contexts, each with a cluster of its own."""
    config = {
        "clusters": [{"name": n, "cluster": {"server": f"https://{n}.example:6443"}} for n in contexts],
        "users": [{"name": n, "user": user} for n, user in contexts.items()],
        "contexts": [{"name": n, "context": {"cluster": n, "user": n}} for n in contexts],
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    return write(tmp_path / "config", {"a": {"token": "1"}, "b": {"token": "2"}})


def test_an_unchanged_kubeconfig_changes_nothing(kubeconfig: Path) -> None:
    watch = KubeconfigWatch(kubeconfig, ["*"], ["a", "b"])
    assert watch.check() == ContextChanges()
    write(kubeconfig, {"a": {"token": "1"}, "b": {"token": "2"}})  # rewritten, same content
    assert not watch.check()
    assert watch.generation == 1


def test_added_removed_and_changed_contexts_are_told_apart(kubeconfig: Path) -> None:
    watch = KubeconfigWatch(kubeconfig, ["*"], ["a", "b"])
    write(kubeconfig, {"a": {"token": "rotated"}, "c": {"token": "3"}})
    assert watch.check() == ContextChanges(added=("c",), removed=("b",), changed=("a",))
    assert watch.contexts == ["a", "c"]
    assert watch.generation == 2


def test_only_the_named_contexts_are_watched(kubeconfig: Path) -> None:
    watch = KubeconfigWatch(kubeconfig, ["a", "x"], ["a"])
    write(kubeconfig, {"a": {"token": "1"}, "b": {"token": "2"}, "x": {"token": "4"}})
    assert watch.check() == ContextChanges(added=("x",))
    write(kubeconfig, {"b": {"token": "2"}})
    assert watch.check() == ContextChanges(removed=("a", "x"))


def test_an_unreadable_kubeconfig_raises_and_changes_nothing(kubeconfig: Path) -> None:
    watch = KubeconfigWatch(kubeconfig, ["*"], ["a", "b"])
    kubeconfig.write_text("contexts: [unclosed\n")
    with pytest.raises(KubeconfigError, match="not valid YAML"):
        watch.check()
    assert watch.contexts == ["a", "b"] and watch.generation == 1
    write(kubeconfig, {"a": {"token": "1"}})
    assert watch.check() == ContextChanges(removed=("b",))
