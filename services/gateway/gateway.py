"""The long-lived objects of one gateway (backend, producer, keys, router, metrics), kept in
``app.extensions["flywheel"]``, with the few operations every part of it shares:
pseudonymise a user, redact a text, emit events."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from flywheel.settings import Settings
from serving.backends.base import Backend
from serving.routing import Router, RoutingError, RoutingTable
from services.gateway import metrics as gm
from services.gateway.auth import KeyStore
from services.gateway.errors import APIError
from services.gateway.protocol import ModelCard, ModelList
from streams.producer import EventProducer
from streams.redact import Redactor
from streams.spool import SpoolFull
from streams.topics import topic_names


@dataclass
class Gateway:
    settings: Settings
    backend: Backend
    producer: EventProducer
    keys: KeyStore
    redactor: Redactor | None
    topics: dict[str, str]
    router: Router  # alias -> weighted versions, sticky per user; follows the control plane
    metrics: gm.GatewayMetrics

    @classmethod
    def build(cls, settings: Settings, *, backend: Backend | None = None, producer: EventProducer | None = None,
              keys: KeyStore | None = None) -> "Gateway":
        """The parts the settings describe, or those given (tests and benchmarks pass their own)."""
        if backend is None:
            from serving.backends import make_backend

            backend = make_backend(settings)
        if producer is None:
            producer = EventProducer.from_settings(settings, client_id="gateway")
        redactor = None
        if settings.privacy.redact:
            redactor = Redactor(settings.privacy.kinds, settings.privacy.extra_patterns)
        return cls(
            settings=settings,
            backend=backend,
            producer=producer,
            keys=keys if keys is not None else KeyStore.load(settings.keys_path),
            redactor=redactor,
            topics=topic_names(settings),
            router=make_router(settings, backend),
            metrics=gm.GatewayMetrics(producer, backend),
        )

    def pseudonym(self, user: str | None) -> str | None:
        if not user:
            return None
        salt = self.settings.privacy.user_salt.get_secret_value().encode()
        return "u_" + hmac.new(salt, user.encode(), hashlib.sha256).hexdigest()[:24]

    def redact(self, text: str) -> str:
        return self.redactor.redact(text) if self.redactor else text

    def emit(self, items: list[tuple[str, str | None, object]]) -> None:
        try:
            self.producer.emit_many(items)
        except SpoolFull as e:
            raise APIError(503, str(e), type="service_unavailable", code="event_spool_full") from None
        for topic, _, _ in items:
            self.metrics.events.labels(topic).inc()

    def models(self) -> ModelList:
        """The public aliases of the current routing table, with their versions' weights."""
        table = self.router.table
        return ModelList(data=[ModelCard(id=alias, versions={r.version: r.weight for r in routes})
                               for alias, routes in table.routes.items()])

    def health(self) -> tuple[dict, bool]:
        """The /healthz body, and whether the gateway can serve (the backend is up); a down
        broker only degrades it, since events wait in the spool."""
        stats = self.producer.stats()
        backend = self.backend.health()
        ok = backend.get("ok", False)
        status = "down" if not ok else ("degraded" if stats["broker_up"] is False else "ok")
        return {"status": status, "backend": backend, "events": stats}, ok

    def close(self, drain_timeout: float = 10.0) -> None:
        """Stop: drain the spool to Kafka for up to ``drain_timeout`` (the rest stays on disk)."""
        self.router.close()
        self.producer.close(drain_timeout=drain_timeout)
        self.backend.close()


def make_router(settings: Settings, backend: Backend) -> Router:
    def prepare(table: RoutingTable) -> None:
        """Load the adapters a table routes to before any request can be routed there."""
        for version, path in table.adapters.items():
            if version not in backend.versions():
                load = getattr(backend, "load_adapter", None)
                if load is None:
                    raise RoutingError(f"the {backend.name} backend cannot load adapter {version!r}")
                load(version, Path(path))
        served = set(backend.versions())
        missing = sorted({v for alias in table.routes for v in table.versions(alias)} - served)
        if missing:
            raise RoutingError(f"the backend does not serve {', '.join(missing)}")

    default = RoutingTable.single(settings.model.alias, settings.model.version)
    return Router(default, cache_path=settings.data_path / "routing_cache.json", prepare=prepare)
