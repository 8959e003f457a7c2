"""A smoke run of the benchmark harness (bench/run.py) at a tiny N: every phase runs
against the real parts and yields a figure. Speed is judged in BENCHMARKS.md, not here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.run import bench_size


@pytest.mark.slow
def test_benchmark_harness_runs_every_phase_at_tiny_n(tmp_path: Path) -> None:
    out = bench_size(300, tmp_path, phase_seconds=2, etcd_rates=(300,))
    # The three syncs deliver the same rows; the warm one asks the API servers nothing.
    assert out["a_rows"] == out["b_rows"] == out["d_rows"] == out["emission_rows"] > 300
    assert out["a_requests"] == {"list": 0, "watch": 0, "get": 0}
    assert out["b_requests"]["list"] > 0
    # The official plugin lists every table of every context and fails none.
    assert out["c_official"]["requests"]["by_verb"].get("list", 0) >= 3 * 40
    assert out["c_official"]["source_errors"] == 0 and out["c_official_s"] > 0
    inc = out["incremental"]
    assert inc["changes"] > 0 and inc["delta_rows"] >= inc["changes"] > inc["idle_rows"]
    assert out["freshness"]["unseen"] == 0 and math.isfinite(out["freshness"]["p99_ms"])
    assert out["ingest"]["events_applied"] >= out["ingest"]["writes"] > 0
    (step,) = out["ingest_etcd"]["steps"]
    assert step["kept_up"] and step["events_received"] >= step["events_expected"] > 0
    assert out["daemon_peak_rss_mb"] > 0 and out["cache_ingest_events_per_s"] > 0 and out["e_pg_alone_s"] > 0
