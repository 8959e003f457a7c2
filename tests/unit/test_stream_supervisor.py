"""``k8s-watcher stream``: restarts with exponential backoff, reset by a long run; stops the CLI on stop."""

from __future__ import annotations

import threading
from typing import Any

from watcher.stream import Backoff, supervise


def test_backoff_doubles_to_the_cap_and_resets_after_a_long_run() -> None:
    b = Backoff(initial=1, maximum=8, reset_after=60)
    assert [b.after_run(0.5) for _ in range(5)] == [1, 2, 4, 8, 8]
    assert b.after_run(61) == 1
    assert b.after_run(2) == 2


class FakeProc:
    def __init__(self, code: int | None) -> None:
        self.code, self.pid, self.terminated = code, 4242, False

    @property
    def returncode(self) -> int | None:
        return self.code

    def poll(self) -> int | None:
        return self.code

    def terminate(self) -> None:
        self.terminated, self.code = True, -15

    def wait(self, timeout: float | None = None) -> int | None:
        return self.code


def test_supervise_restarts_a_failing_cli_and_terminates_the_running_one_on_stop() -> None:
    stop = threading.Event()
    procs: list[FakeProc] = []

    def popen(argv: list[str]) -> Any:
        assert argv == ["cq", "sync", "c.yml"]
        # Two failed runs (destination down), then one that keeps running until stopped.
        proc = FakeProc(1 if len(procs) < 2 else None)
        procs.append(proc)
        if len(procs) == 3:
            threading.Timer(0.3, stop.set).start()
        return proc

    assert (
        supervise(["cq", "sync", "c.yml"], stop, backoff=Backoff(initial=0.01, maximum=0.02), popen=popen)
        == 0
    )
    assert len(procs) == 3 and procs[2].terminated and not procs[0].terminated
