"""The long-lived objects of one gateway (backend, producer, keys, router, metrics), kept in
``app.extensions["flywheel"]``, with the few operations every part of it shares:
pseudonymise a user, redact a text, make an event safe to store, emit events."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flywheel.settings import Settings
from serving.backends.base import Backend
from serving.routing import Router, RoutingError, RoutingTable
from services.gateway import metrics as gm
from services.gateway.auth import KeyStore
from services.gateway.bindings import RequestBindings
from services.gateway.errors import APIError, too_large
from services.gateway.limits import KeyLimiter
from services.gateway.protocol import ModelCard, ModelList
from streams.event_size import EventTooLarge
from streams.privacy import Privacy
from streams.producer import EventProducer
from streams.spool import Reservation, SpoolFull
from streams.topics import topic_names


@dataclass
class Gateway:
    settings: Settings
    backend: Backend
    producer: EventProducer
    keys: KeyStore
    privacy: Privacy  # redaction, pseudonyms, the rule of each stored field (streams/privacy.py)
    topics: dict[str, str]
    router: Router  # alias -> weighted versions, sticky per user; follows the control plane
    metrics: gm.GatewayMetrics
    limiter: KeyLimiter  # per-key rate limit and in-flight cap
    bindings: RequestBindings  # recent request id -> key and user, to check feedback (services/gateway/bindings.py)

    @classmethod
    def build(cls, settings: Settings, *, backend: Backend | None = None, producer: EventProducer | None = None,
              keys: KeyStore | None = None) -> "Gateway":
        """The parts the settings describe, or those given (tests and benchmarks pass their own).
        Raises `ConfigError` first, before the model loads, when there is no usable pseudonym salt."""
        privacy = Privacy.from_settings(settings)
        if backend is None:
            from serving.backends import make_backend

            backend = make_backend(settings)
        if producer is None:
            producer = EventProducer.from_settings(settings, client_id="gateway")
        return cls(
            settings=settings,
            backend=backend,
            producer=producer,
            keys=keys if keys is not None else KeyStore.load(settings.keys_path),
            privacy=privacy,
            topics=topic_names(settings),
            router=make_router(settings, backend),
            metrics=gm.GatewayMetrics(producer, backend),
            limiter=KeyLimiter.from_settings(settings.gateway),
            bindings=RequestBindings(settings.gateway.feedback_binding_size),
        )

    def pseudonym(self, user: str | None) -> str | None:
        return self.privacy.pseudonym(user)

    def redact(self, text: str | None) -> str | None:
        return self.privacy.redact(text)

    def emit(self, items: list[tuple[str, str | None, object]], reservation: Reservation | None = None) -> None:
        """Spool ``items`` (events or their bytes), all or none: 503 when the spool is full,
        413 when one is over ``events.max_event_bytes``. ``reservation``: room `reserve` held."""
        try:
            self.producer.emit_many(items, reservation)
        except SpoolFull as e:
            raise spool_full(e) from None
        except EventTooLarge as e:
            raise too_large(f"The request is too large to record: {e}. Send less text.") from None
        for topic, _, _ in items:
            self.metrics.events.labels(topic).inc()

    def reserve(self, nbytes: int) -> Reservation:
        """Hold room in the spool for an event this request will emit once answered (a chat
        request is refused with 503 before generation rather than answered and not recorded)."""
        try:
            return self.producer.reserve(nbytes)
        except SpoolFull as e:
            raise spool_full(e) from None

    def models(self) -> ModelList:
        """The public aliases of the current routing table, with their versions' weights."""
        table = self.router.table
        return ModelList(data=[ModelCard(id=alias, versions={r.version: r.weight for r in routes})
                               for alias, routes in table.routes.items()])

    def health(self) -> tuple[dict, bool]:
        """The /healthz body, and whether the gateway can serve (the backend is up); a down
        broker or a dead event sender only degrades it, since events wait in the spool. A
        record the broker refuses for good is dead-lettered, so it never reads as a down broker."""
        stats = self.producer.stats()
        backend = self.backend.health()
        ok = backend.get("ok", False)
        degraded = stats["broker_up"] is False or not stats["sender"]["alive"]
        status = "down" if not ok else ("degraded" if degraded else "ok")
        return {"status": status, "backend": backend, "events": stats}, ok

    def close(self, drain_timeout: float = 10.0) -> None:
        """Stop: drain the spool to Kafka for up to ``drain_timeout`` (the rest stays on disk)."""
        self.router.close()
        self.producer.close(drain_timeout=drain_timeout)
        self.backend.close()


def spool_full(e: SpoolFull) -> APIError:
    return APIError(503, str(e), type="service_unavailable", code="event_spool_full", headers={"Retry-After": "5"})


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
