"""The process-level request budget (token bucket), on a fake clock."""

from __future__ import annotations

import pytest

from emotionclip.ratelimit import RateLimiter, limiter


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_tokens_are_spaced_by_the_rate():
    clock = FakeClock()
    rl = RateLimiter(20, clock=clock, sleep=clock.sleep)  # one request every 3 s
    assert rl.acquire() == 0.0  # the first one is free
    assert rl.acquire() == pytest.approx(3.0)
    clock.now += 10.0  # idle time refills, but only up to the burst size
    assert rl.acquire() == 0.0
    assert rl.acquire() == pytest.approx(3.0)
    assert sum(clock.slept) == pytest.approx(6.0)


def test_burst_allows_that_many_at_once():
    clock = FakeClock()
    rl = RateLimiter(60, burst=3, clock=clock, sleep=clock.sleep)
    assert [rl.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.acquire() == pytest.approx(1.0)


def test_named_limiters_are_shared_per_process():
    a = limiter("test-shared", 30)
    assert limiter("test-shared", 30) is a
    assert limiter("test-shared", 10) is not a  # a new rate replaces it
    with pytest.raises(ValueError):
        RateLimiter(0)
