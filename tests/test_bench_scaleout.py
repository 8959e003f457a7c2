"""A smoke run of the scale-out benchmark (bench/scaleout.py) at a tiny N: the SQLite
and PostgreSQL caches, 1 and 3 replicas, a lone daemon, against the real parts. Every
phase runs and yields finite, positive figures; both caches sync the same rows. Speed
is judged in BENCHMARKS.md, not here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.scaleout import SIX, VOLATILE_TABLES, bench_size


def _positive(*figures: Any) -> bool:
    return all(isinstance(f, int | float) and math.isfinite(f) and f > 0 for f in figures)


@pytest.mark.slow
def test_scaleout_benchmark_runs_every_phase_at_tiny_n(tmp_path: Path) -> None:
    out = bench_size(300, tmp_path, repeats=2, etcd_rates=(300,), seconds=2, lease="4s")
    caches = out["caches"]
    for kind in ("sqlite", "postgresql"):
        assert _positive(caches[kind]["sync_median_s"], caches[kind]["plugin_sync_median_s"])
        assert _positive(
            caches[kind]["emission"]["rows_per_s"], caches[kind]["emission"]["first_pass_rows_per_s"]
        )
        assert caches[kind]["emission"]["rows"] == caches[kind]["rows"] > 300
        assert _positive(*caches[kind]["emission_profile"]["parts_s"].values())
    assert _positive(caches["pg_over_sqlite_sync"], caches["pg_over_sqlite_emission_time"])
    # Both caches delivered the same rows to the destination, table by table.
    for compared in caches["compare"]:
        assert compared["rows"][0] == compared["rows"][1] and compared["tables"] > 40
        assert compared["keys_differ"] == []
        assert set(compared["content_differs"]) <= VOLATILE_TABLES

    for key, replicas in (("sqlite_6_contexts", 1), ("replicas_1", 1), ("replicas_3", 3)):
        run = out[key]
        assert _positive(run["all_objects_s"], run["spread_s"], run["ingest"]["max_applied_events_per_s"])
        if key != "sqlite_6_contexts":  # contexts owned by Lease (a lone daemon holds all)
            assert sorted(c for held in run["contexts_held"] for c in held) == SIX
            assert [len(held) for held in run["contexts_held"]] == [6 // replicas] * replicas
        assert set(run["live_rows"]) >= set(SIX)
        (step,) = run["ingest"]["steps"]
        assert step["events_received"] >= step["events_expected"] > 0 and math.isfinite(step["lag_s"])
        assert all(_positive(m["rss_mb"], m["peak_rss_mb"]) for m in run["memory_settled"])
        assert len(run["memory_settled"]) == replicas
    lone = out["lone_2_contexts"]
    assert _positive(lone["rss_mb"], lone["peak_rss_mb"]) and set(lone["live_rows"]) == {"c1", "c2"}
    summary = out["summary"]
    assert summary["rows_equal"]
    assert _positive(*summary["replica_over_lone_rss"].values())
