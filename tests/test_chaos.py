"""The short variant of the chaos run (bench/chaos.py), in the test suite."""

from __future__ import annotations

import pytest

from bench.chaos import run_chaos


@pytest.mark.slow
def test_short_chaos_run_loses_nothing() -> None:
    # At least 8 faults whatever the machine's speed (a loaded one spends longer per fault).
    result = run_chaos(45, seed=7, fault_every=3.0, min_faults=8)
    assert sum(result["faults"].values()) >= 8, result
    assert len(result["faults"]) >= 3, result  # several kinds of fault, not one
    assert sum(result["syncs"].values()) >= 4, result
    # The examples first: the whole result is long, and pytest cuts it before them.
    assert result["lost_events"] == 0, (result["examples"], result)
    assert result["cache_mismatches"] == 0, (result["examples"], result)
    assert result["pg_mismatches"] == 0, (result["examples"], result["sync_errors"], result)
