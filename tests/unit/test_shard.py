"""``cloudquery sync --shard num/total``: which tables a shard sends."""

from __future__ import annotations

import pytest

from watcher.catalog import ALL_TABLES
from watcher.messages import Shard


@pytest.mark.parametrize("total", [2, 3, 4, 7])
def test_every_table_belongs_to_exactly_one_shard(total: int) -> None:
    shards = [Shard(num, total) for num in range(1, total + 1)]
    tables = [*ALL_TABLES, "k8s_example_com_widgets", "k8s_apps_controllerrevisions"]
    for table in tables:
        assert sum(shard.owns(table) for shard in shards) == 1, table


def test_a_table_stays_in_its_shard_whatever_else_is_synced() -> None:
    """The owner depends on the table's name alone: a CRD added between two shards' runs
    cannot move another table to a shard that already ran."""
    shard = Shard(1, 3)
    owned = {t for t in ALL_TABLES if shard.owns(t)}
    assert owned == {t for t in [*ALL_TABLES, "k8s_new_crd_things"] if shard.owns(t)} - {"k8s_new_crd_things"}


def test_two_shards_split_the_built_in_tables_roughly_evenly() -> None:
    first = sum(Shard(1, 2).owns(t) for t in ALL_TABLES)
    assert 0.3 * len(ALL_TABLES) <= first <= 0.7 * len(ALL_TABLES)


def test_a_shard_is_written_as_the_cli_writes_it() -> None:
    assert str(Shard(2, 4)) == "2/4"


@pytest.mark.parametrize("total", [2, 3, 5])
def test_every_table_and_context_pair_belongs_to_exactly_one_shard(total: int) -> None:
    shards = [Shard(num, total) for num in range(1, total + 1)]
    contexts = [f"cluster-{i}" for i in range(20)]
    for table in ALL_TABLES:
        for ctx in contexts:
            assert sum(shard.owns(table, ctx) for shard in shards) == 1, (table, ctx)


def test_pairs_spread_one_big_table_over_the_shards() -> None:
    """With many clusters, k8s_pods (the biggest table) is written by every shard,
    about evenly: whole-table shards would put all of it in one."""
    contexts = [f"cluster-{i}" for i in range(100)]
    counts = [sum(Shard(num, 4).owns("k8s_pods", c) for c in contexts) for num in range(1, 5)]
    assert sum(counts) == 100 and min(counts) >= 15
