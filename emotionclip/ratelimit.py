"""A process-level request budget (token bucket) shared by search and download.

YouTube throttles by IP (docs/design.md section 4), so every request batch that may
reach it takes a token first. This limits one process; across processes and
machines the Prefect global concurrency limit of the same budget applies
(tasks/), which this module knows nothing about.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class RateLimiter:
    """Token bucket: `per_minute` tokens a minute, bursts up to `burst` tokens."""

    def __init__(
        self,
        per_minute: float,
        *,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if per_minute <= 0:
            raise ValueError("per_minute must be > 0")
        self.per_minute = float(per_minute)
        self.burst = max(1, int(burst))
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_minute / 60.0)
        self._last = now

    def acquire(self) -> float:
        """Take one token, sleeping until one is available; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return waited
                wait = (1.0 - self._tokens) * 60.0 / self.per_minute
            self._sleep(wait)
            waited += wait


_LIMITERS: dict[str, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter(name: str, per_minute: float) -> RateLimiter:
    """The process-wide limiter called `name` (re-created when its rate changes)."""
    with _LIMITERS_LOCK:
        current = _LIMITERS.get(name)
        if current is None or current.per_minute != float(per_minute):
            current = _LIMITERS[name] = RateLimiter(per_minute)
        return current
