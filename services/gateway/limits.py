"""Per-key admission: a token-bucket rate limit and a cap on requests in flight.

Each API key (without auth: each client address) has a bucket of ``rate_limit_burst``
tokens refilled at ``rate_limit_rps`` per second; a request takes one token, and one that
finds the bucket empty gets 429 with the seconds until a token is back. Independently,
a key may have at most ``max_concurrent_per_key`` requests in flight (a streamed answer
counts until its last byte or the client leaves), so one key cannot take every thread of
the gateway. State is per gateway process: N replicas allow N times the rate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from services.gateway.errors import rate_limited

#: Idle buckets kept at most (keys are few; without auth, addresses may be many).
MAX_BUCKETS = 100_000


@dataclass
class _Bucket:
    tokens: float
    updated: float
    in_flight: int = 0


class Lease:
    """One admitted request's place in its key's in-flight count; ``release`` once (more is a no-op)."""

    def __init__(self, limiter: "KeyLimiter", key: str):
        self._limiter = limiter
        self._key = key
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self._key)


class KeyLimiter:
    def __init__(self, rate_per_s: float, burst: int, max_in_flight: int, clock=time.monotonic):
        self.rate = float(rate_per_s)
        self.burst = float(burst)
        self.max_in_flight = int(max_in_flight)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self.refused = {"rate": 0, "concurrency": 0}

    @classmethod
    def from_settings(cls, gateway_settings) -> "KeyLimiter":
        g = gateway_settings
        return cls(g.rate_limit_rps, g.rate_limit_burst, g.max_concurrent_per_key)

    def admit(self, key: str) -> Lease:
        """Take a token and an in-flight place for ``key``; raises the 429 `APIError` if
        there is none."""
        now = self.clock()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= MAX_BUCKETS:
                    self._forget_idle(now)
                b = self._buckets[key] = _Bucket(self.burst, now)
            if self.rate > 0:
                b.tokens = min(self.burst, b.tokens + (now - b.updated) * self.rate)
            b.updated = now
            if self.max_in_flight and b.in_flight >= self.max_in_flight:
                self.refused["concurrency"] += 1
                err = rate_limited(
                    f"Too many concurrent requests for this API key: at most {self.max_in_flight} in flight "
                    "(gateway.max_concurrent_per_key). Wait for one to finish.", 1.0)
                err.limit = "concurrency"
                raise err
            if self.rate > 0:
                if b.tokens < 1.0:
                    wait = (1.0 - b.tokens) / self.rate
                    self.refused["rate"] += 1
                    err = rate_limited(
                        f"Rate limit reached for this API key: {self.rate:g} requests per second, bursts of "
                        f"{self.burst:g} (gateway.rate_limit_rps, gateway.rate_limit_burst). Retry after "
                        f"{wait:.2f}s.", wait)
                    err.limit = "rate"
                    raise err
                b.tokens -= 1.0
            b.in_flight += 1
        return Lease(self, key)

    def _release(self, key: str) -> None:
        with self._lock:
            b = self._buckets.get(key)
            if b is not None and b.in_flight > 0:
                b.in_flight -= 1

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that are full again and have nothing in flight (they hold no state)."""
        full_after = self.burst / self.rate if self.rate > 0 else 0.0
        for key in [k for k, b in self._buckets.items() if not b.in_flight and now - b.updated >= full_after]:
            del self._buckets[key]

    def in_flight(self, key: str) -> int:
        with self._lock:
            b = self._buckets.get(key)
            return b.in_flight if b else 0


class ReleasingIterator:
    """Iterates ``inner`` and releases ``lease`` when it ends or is closed (the WSGI server
    closes a streamed response when the client leaves), even if it was never started."""

    def __init__(self, inner, lease: Lease):
        self._inner = iter(inner)
        self._lease = lease

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._inner)
        except BaseException:
            self._lease.release()
            raise

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._lease.release()
