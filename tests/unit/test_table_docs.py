"""docs/tables: generated from the plugin's schemas (watcher.tabledocs), and current."""

from __future__ import annotations

import pyarrow as pa
from cloudquery.sdk.types import JSONType, UUIDType

from watcher.catalog import ALL_TABLES
from watcher.tabledocs import DOCS_DIR, render_table, rendered, type_name


def test_the_table_docs_in_the_repository_are_current() -> None:
    """Fails when a table, column or type changed without `python -m watcher.tabledocs`."""
    expected = rendered()
    found = {p.name: p.read_text() for p in DOCS_DIR.glob("*.md")}
    stale = sorted(n for n in expected.keys() | found.keys() if expected.get(n) != found.get(n))
    assert not stale, f"stale table docs {stale}: run python -m watcher.tabledocs"
    assert len(found) == len(ALL_TABLES) + 1


def test_a_table_doc_names_the_composite_key_and_every_column_with_its_type() -> None:
    text = render_table("k8s_pod_containers")
    assert "The composite primary key for this table is (**context_name**, **uid**)." in text
    assert "|uid (PK)|`uuid`|" in text and "|context_name (PK)|`utf8`|" in text
    assert "|pod_uid|`uuid`|" in text and "|ports|`json`|" in text and "|restart_count|`int64`|" in text


def test_types_are_spelled_as_cloudquery_s_docs_spell_them() -> None:
    assert type_name(pa.string()) == "utf8"
    assert type_name(pa.list_(pa.string())) == "list<item: utf8, nullable>"
    assert type_name(pa.timestamp("us", tz="UTC")) == "timestamp[us, tz=UTC]"
    assert (type_name(JSONType()), type_name(UUIDType()), type_name(pa.bool_())) == ("json", "uuid", "bool")
