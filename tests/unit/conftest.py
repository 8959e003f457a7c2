"""Fixtures of the unit tests: no network, no API server, nothing started but a
cache file's writer thread on tmp_path.

(The session fixtures of ``tests/conftest.py`` - control planes, PostgreSQL, daemons -
start only for a test that asks for them; no unit test does.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.builders import CMS
from tests.unit.fake_api import MakeInformer, ScriptedApi
from watcher.informers import InformerOptions, ResourceInformer
from watcher.resources import ResourceDescriptor
from watcher.state import CacheStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    """A real cache store on a file in tmp_path, writing without batching delay."""
    s = CacheStore(tmp_path / "cache.db", batch_wait=0.0)
    yield s
    s.close()


@pytest.fixture
def api() -> ScriptedApi:
    """The scripted API server of the informer ``make_informer`` builds (see fake_api)."""
    return ScriptedApi()


@pytest.fixture
def make_informer(api: ScriptedApi, store: CacheStore) -> Iterator[MakeInformer]:
    """``make_informer(descriptor=CMS, *, resume_from=None, streaming=True, **options)``:
    a ResourceInformer on ``api`` and ``store`` whose waits return at once (recorded in
    ``api.waits``). ``fake_api.run(informer)`` returns once the script is played out."""
    made: list[ResourceInformer] = []

    def make(
        descriptor: ResourceDescriptor = CMS,
        *,
        resume_from: str | None = None,
        streaming: bool = True,
        **options: Any,
    ) -> ResourceInformer:
        informer = ResourceInformer(
            client=api,  # type: ignore[arg-type]
            descriptor=descriptor,
            store=store,
            options=InformerOptions(**options),
            resume_from=resume_from,
            streaming=streaming,
            clock=api.clock,
        )
        made.append(informer)
        return api.attach(informer)

    yield make
    for informer in made:
        informer.stop()
