"""Fixtures of the unit tests: no network, no API server, nothing started but a
cache file's writer thread on tmp_path.

(The session fixtures of ``tests/conftest.py`` - control planes, PostgreSQL, daemons -
start only for a test that asks for them; no unit test does.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from watcher.state import CacheStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    """A real cache store on a file in tmp_path, writing without batching delay."""
    s = CacheStore(tmp_path / "cache.db", batch_wait=0.0)
    yield s
    s.close()
