"""A clock for unit tests: it moves only when told."""

from __future__ import annotations


class ManualClock:
    """A monotonic clock (call it) that moves only by ``advance``; ``sleep`` is a sleeping
    function that advances it and returns at once."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    sleep = advance
