"""The informers' exponential backoff with jitter (client-go's 0.8 s doubling to 30 s)."""

from __future__ import annotations

import types

import pytest

from watcher import informers
from watcher.informers import Backoff


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(informers, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_the_first_backoff_delay_is_between_0_8_and_1_6_seconds() -> None:
    for _ in range(200):
        delay = Backoff().next_delay()
        assert 0.8 <= delay <= 1.6


def _delays(clock: FakeClock, n: int) -> list[float]:
    """``n`` delays of one Backoff, a second apart (failures in quick succession)."""
    backoff = Backoff()
    delays = []
    for _ in range(n):
        clock.now += 1
        delays.append(backoff.next_delay())
    return delays


def test_backoff_doubles_from_0_8_seconds_up_to_the_30_second_cap(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    monkeypatch.setattr(informers.random, "random", lambda: 0.0)
    delays = _delays(clock, 9)
    assert delays == pytest.approx([0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0])


def test_jittered_backoff_stays_within_one_to_two_base_delays_then_caps(clock: FakeClock) -> None:
    for _ in range(50):
        delays = _delays(clock, 12)
        # the un-jittered delay doubles from 0.8; jitter adds up to 100 %
        for i, delay in enumerate(delays[:6]):
            base = 0.8 * 2**i
            assert base <= delay <= 2 * base, (i, delays)
        assert delays[6:] == [30.0] * 6


def test_maximal_jitter_never_takes_a_delay_past_the_cap(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    monkeypatch.setattr(informers.random, "random", lambda: 0.999)
    delays = _delays(clock, 10)
    assert all(d <= 30.0 for d in delays), delays


def test_backoff_starts_over_after_a_quiet_period(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setattr(informers.random, "random", lambda: 0.0)
    backoff = Backoff(reset_after=120.0)
    for _ in range(5):
        clock.now += 1
        backoff.next_delay()
    clock.now += 119
    assert backoff.next_delay() == pytest.approx(25.6)  # still within the window: keeps growing
    clock.now += 121
    assert backoff.next_delay() == pytest.approx(0.8)
    clock.now += 1
    assert backoff.next_delay() == pytest.approx(1.6)


def test_backoff_without_a_quiet_period_window_always_gives_the_initial_delay() -> None:
    backoff = Backoff(reset_after=0.0, jitter=0.0)
    delays = []
    for _ in range(5):
        delays.append(backoff.next_delay())
        # make sure the monotonic clock moves on between failures
        start = informers.time.monotonic()
        while informers.time.monotonic() == start:
            pass
    assert delays == [0.8] * 5
