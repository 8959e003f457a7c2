"""The compat views' SQL as data (watcher/compat/sql), without a database. Their results
are compared with the official plugin's in tests/test_compat.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from watcher.cli import main
from watcher.compat import compat_version, views
from watcher.compat.generate import NOT_KEPT, TABLES, with_null_creation
from watcher.compat.install import sources
from watcher.resources import BY_TABLE

_ALIAS = re.compile(r" AS (\w+),?$", re.M)


def test_one_view_per_official_table_each_over_the_table_of_the_same_resource() -> None:
    items = views()
    assert [v.name for v in items] == sorted(TABLES)
    assert set(sources(items)) == {ours for ours, _, _ in TABLES.values()}
    assert set(sources(items)) <= set(BY_TABLE)


def test_every_view_names_each_column_once_and_leaves_what_is_not_kept_null() -> None:
    for view in views():
        aliases = _ALIAS.findall(view.select)
        assert len(aliases) == len(set(aliases)), view.name
        assert aliases[:4] == ["_cq_sync_time", "_cq_source_name", "_cq_id", "_cq_parent_id"]
        # NULL only where there is nothing to read: _cq_parent_id (NULL in the official
        # tables too) and a Secret's body, never cached.
        nulls = set(re.findall(r"^  NULL::[\w\[\]]+ AS (\w+),?$", view.select, re.M))
        assert nulls == {"_cq_parent_id"} | NOT_KEPT.get(view.name, set()), view.name
    assert {"k8s_core_secrets": {"immutable", "type"}} == NOT_KEPT


def test_the_version_changes_with_any_view(tmp_path: Path) -> None:
    items = views()
    (tmp_path / "k8s_core_pods.sql").write_text(items[0].select + "\n")
    changed = views(tmp_path)
    assert compat_version(items) != compat_version(changed)
    assert compat_version(items).startswith("v6.2.4+") and compat_version(items) == compat_version(views())


def test_template_metadata_gets_the_null_creation_timestamp_only_where_the_structs_write_it() -> None:
    assert with_null_creation("x", "v1.DeploymentStrategy") == "x"
    one = with_null_creation("spec->'template'", "v1.PodTemplateSpec")
    assert one.count("jsonb_set") == 1 and "'{metadata,creationTimestamp}'" in one
    assert with_null_creation("spec->'jobTemplate'", "JobTemplateSpec").count("jsonb_set") == 2
    listed = with_null_creation("spec->'volumeClaimTemplates'", "[]v1.PersistentVolumeClaim")
    assert "jsonb_agg" in listed and "ORDER BY i" in listed


@pytest.mark.parametrize("command", ["install", "uninstall"])
def test_compat_commands_need_a_database(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("K8S_WATCHER_COMPAT_DSN", raising=False)
    assert main(["compat", command]) == 2
    assert "--dsn" in capsys.readouterr().err
