"""Routing: a public alias maps to weighted model versions, and each user sticks to one.

Assignment hashes the user id (else the session id) with the alias into one of 10,000
buckets; versions own consecutive bucket ranges in the table's order. The rollout
controller lists the candidate first, so raising its weight only moves users from
production to the candidate, never back: a user sees one version for the whole canary.

Gateways hold the table in a :class:`Router`: a newer table (higher ``revision``) replaces
the old one in a single reference swap, so a request sees either the old table or the
new one, never a mix. The last table is cached on disk and loaded at start, so a gateway
keeps routing while the control plane or the broker is down.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

BUCKETS = 10_000


class RoutingError(ValueError):
    """A routing table that cannot be used."""


@dataclass(frozen=True)
class Route:
    version: str
    weight: float  # percent, 0..100


@dataclass(frozen=True)
class RoutingTable:
    revision: int
    routes: dict[str, tuple[Route, ...]] = field(default_factory=dict)
    adapters: dict[str, str] = field(default_factory=dict)  # version -> adapter folder (PEFT)

    def __post_init__(self):
        for alias, routes in self.routes.items():
            if not routes:
                raise RoutingError(f"alias {alias!r} has no versions")
            if any(not isinstance(r.weight, (int, float)) or not math.isfinite(r.weight) for r in routes):
                # NaN passes every comparison below and then breaks choose() on every request.
                raise RoutingError(f"alias {alias!r} has a weight that is not a finite number")
            if any(r.weight < 0 for r in routes):
                raise RoutingError(f"alias {alias!r} has a negative weight")
            total = sum(r.weight for r in routes)
            if abs(total - 100.0) > 1e-6:
                raise RoutingError(f"weights of alias {alias!r} add up to {total}, not 100")
            if len({r.version for r in routes}) != len(routes):
                raise RoutingError(f"alias {alias!r} lists a version twice")

    @classmethod
    def single(cls, alias: str, version: str, revision: int = 0) -> "RoutingTable":
        return cls(revision, {alias: (Route(version, 100.0),)})

    @classmethod
    def from_dict(cls, data: dict) -> "RoutingTable":
        try:
            return cls(int(data["revision"]), {
                alias: tuple(Route(str(r["version"]), float(r["weight"])) for r in routes)
                for alias, routes in data["routes"].items()}, dict(data.get("adapters") or {}))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, RoutingError):
                raise
            raise RoutingError(f"malformed routing table: {e}") from None

    def to_dict(self) -> dict:
        return {"revision": self.revision, "routes": {
            alias: [{"version": r.version, "weight": r.weight} for r in routes] for alias, routes in self.routes.items()},
            "adapters": dict(self.adapters)}

    def versions(self, alias: str) -> list[str]:
        return [r.version for r in self.routes.get(alias, ()) if r.weight > 0]

    def choose(self, alias: str, key: str | None) -> str | None:
        """The version serving ``key`` (user id, else session id) for ``alias``; None if the
        alias is unknown. Callers always pass a key: a random one would break stickiness."""
        routes = self.routes.get(alias)
        if not routes:
            return None
        bucket = bucket_of(alias, key or "")
        edge = 0.0
        for r in routes:
            edge += r.weight * BUCKETS / 100.0
            if bucket < edge:
                return r.version
        return next(r.version for r in reversed(routes) if r.weight > 0)


def bucket_of(alias: str, key: str) -> int:
    digest = hashlib.sha256(f"{alias}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class Router:
    """The gateway's current table: atomic swaps, disk cache, optional polling."""

    def __init__(self, initial: RoutingTable, cache_path: Path | None = None, prepare=None):
        """``prepare(table)`` runs before a table is installed (the gateway loads the
        adapters it names there); if it raises, the table is not installed."""
        self.cache_path = Path(cache_path) if cache_path else None
        self.prepare = prepare
        self._table = initial
        cached = self._load_cache()
        if cached is not None and cached.revision > initial.revision:
            try:
                if prepare:
                    prepare(cached)
                self._table = cached
            except Exception as e:  # noqa: BLE001 - a stale cache must not stop the gateway
                log.warning("cached routing table not usable (%s); serving the default", e)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    @property
    def table(self) -> RoutingTable:
        return self._table

    def apply(self, table: RoutingTable) -> bool:
        """Install ``table`` if it is newer; True if it was installed."""
        if table.revision <= self._table.revision:
            return False
        if self.prepare:
            self.prepare(table)  # e.g. load new adapters; raises -> the old table stays
        self._table = table  # one reference swap: readers see the old table or the new one
        self._save_cache(table)
        log.info("routing table revision %d applied", table.revision)
        return True

    def _load_cache(self) -> RoutingTable | None:
        if self.cache_path is None or not self.cache_path.exists():
            return None
        try:
            return RoutingTable.from_dict(json.loads(self.cache_path.read_text()))
        except (ValueError, RoutingError) as e:
            log.warning("ignoring unreadable routing cache %s: %s", self.cache_path, e)
            return None

    def _save_cache(self, table: RoutingTable) -> None:
        if self.cache_path is None:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table.to_dict()))
        os.replace(tmp, self.cache_path)

    # -- following the control plane ---------------------------------------------------
    def poll_once(self, url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
                table = RoutingTable.from_dict(json.loads(resp.read()))
        except (OSError, ValueError, RoutingError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            return False
        try:
            applied = self.apply(table)
        except Exception as e:  # noqa: BLE001 - keep serving the current table; report why
            self.last_error = f"table {table.revision} not applied: {type(e).__name__}: {e}"
            log.error(self.last_error)
            return False
        self.last_error = None
        return applied

    def follow(self, url: str, interval_s: float, headers: Callable[[], dict[str, str]] | None = None) -> None:
        """Poll the control plane's routing table in a daemon thread until close();
        ``headers()`` (asked before each poll) gives e.g. the operator token."""
        def loop():
            while not self._stop.is_set():
                self.poll_once(url, headers=headers() if headers else None)
                self._stop.wait(interval_s)

        self._thread = threading.Thread(target=loop, name="routing-follower", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
