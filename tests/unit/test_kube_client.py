"""KubeClient over a fake connection pool, on a loop of the test's own: a 401 refreshes the
credential once and retries; a 429's Retry-After reaches the error; contexts with one server
and TLS identity share a pool, and the pool closes when its last client lets go."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from watcher import kube
from watcher.eventloop import IoLoop
from watcher.kube import ApiError, KubeClient


class FakeResponse:
    def __init__(self, status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}
        self.reason = ""
        self.closed = False

    async def read(self) -> bytes:
        return self.body

    async def aclose(self) -> None:
        self.closed = True

    def cancel(self) -> None:
        self.closed = True


class FakePool:
    """Answers from a script; records the Authorization header of every request."""

    made: ClassVar[list[FakePool]] = []
    script: ClassVar[list[FakeResponse]] = []

    def __init__(self, origin: str, **_kwargs: Any) -> None:
        self.origin = origin
        self.authorizations: list[str | None] = []
        self.closed = False
        self.protocol = "h2"
        FakePool.made.append(self)

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: Any, *, timeout: float
    ) -> Any:
        self.authorizations.append(dict(headers).get("authorization"))
        return FakePool.script.pop(0)

    async def aclose(self) -> None:
        self.closed = True


@pytest.fixture
def io() -> Iterator[IoLoop]:
    loop = IoLoop(name="test io")
    yield loop
    loop.call(loop.loop.stop)


@pytest.fixture(autouse=True)
def fake_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    FakePool.made, FakePool.script = [], []
    monkeypatch.setattr(kube, "ConnectionPool", FakePool)
    monkeypatch.setattr(kube, "_shared_pools", kube._SharedPools())


def kubeconfig(tmp_path: Path, token_file: Path, contexts: list[str]) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
                "users": [{"name": "u", "user": {"tokenFile": str(token_file)}}],
                "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}} for n in contexts],
            }
        )
    )
    return path


def test_a_401_reads_the_rotated_token_once_and_retries_the_request(tmp_path: Path, io: IoLoop) -> None:
    token = tmp_path / "token"
    token.write_text("old")
    client = KubeClient(kubeconfig(tmp_path, token, ["a"]), "a", loop=io)
    FakePool.script = [FakeResponse(200)]
    assert client.get("/version") == {}  # the old token read and cached
    stamp = token.stat()
    token.write_text("new")  # rotated, with the old mtime: only the 401 says it changed
    os.utime(token, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    FakePool.script = [FakeResponse(401), FakeResponse(200, b'{"ok": true}')]
    assert client.get("/api") == {"ok": True}
    (pool,) = FakePool.made
    assert pool.authorizations == ["Bearer old", "Bearer old", "Bearer new"]


def test_retry_after_of_a_429_is_on_the_error(tmp_path: Path, io: IoLoop) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    client = KubeClient(kubeconfig(tmp_path, token, ["a"]), "a", loop=io)
    FakePool.script = [FakeResponse(429, b'{"message": "slow down"}', {"retry-after": "7"})]
    with pytest.raises(ApiError) as caught:
        client.get("/api")
    assert caught.value.status == 429 and caught.value.retry_after == 7.0
    assert "slow down" in str(caught.value)


def test_contexts_of_one_server_and_identity_share_a_pool_closed_with_its_last_client(
    tmp_path: Path, io: IoLoop
) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    config = kubeconfig(tmp_path, token, ["a", "b"])
    a, b = KubeClient(config, "a", loop=io), KubeClient(config, "b", loop=io)
    FakePool.script = [FakeResponse(200), FakeResponse(200)]
    a.get("/version")
    b.get("/version")
    (pool,) = FakePool.made
    a.close()
    io.run(asyncio.sleep(0.01))
    assert not pool.closed
    b.close()
    io.run(asyncio.sleep(0.01))
    assert pool.closed


def test_a_blocking_call_on_the_loop_thread_is_refused(tmp_path: Path, io: IoLoop) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    client = KubeClient(kubeconfig(tmp_path, token, ["a"]), "a", loop=io)

    async def from_the_loop() -> str:
        try:
            client.get("/version")
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "loop's own thread" in io.run(from_the_loop())


def test_watches_of_a_crowded_http11_pool_take_turns_longest_held_first() -> None:
    class Crowded:
        waiting = 2

    async def scenario() -> tuple[int, list[bool]]:
        turns = kube._Turns(Crowded())  # type: ignore[arg-type]
        streams = [kube.WatchStream(FakeResponse(200), None, turns) for _ in range(4)]  # type: ignore[arg-type]
        for s in streams:
            turns.add(s)
        now = asyncio.get_running_loop().time()
        # the oldest resumable two go; one still listing (not resumable) and one too young stay
        streams[0].resumable_since = now - 100
        streams[1].resumable_since = now - 50
        streams[3].resumable_since = now - 1
        ended = turns.rotate(now)
        return ended, [s.closed for s in streams]

    assert asyncio.run(scenario()) == (2, [True, True, False, False])
