"""Prometheus metrics of one gateway, in a registry of its own (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST as CONTENT_TYPE

__all__ = ["GatewayMetrics", "CONTENT_TYPE"]


class GatewayMetrics:
    def __init__(self, producer, backend):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("flywheel_gateway_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("flywheel_gateway_request_seconds", "Request latency by route", ["route"], registry=r,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.tokens = Counter("flywheel_gateway_tokens", "Tokens generated", ["kind"], registry=r)
        self.events = Counter("flywheel_events_emitted", "Events accepted into the spool, by topic", ["topic"], registry=r)
        self.events_lost = Counter(
            "flywheel_events_lost", "Interactions not recorded after the answer, by reason (spool_full, too_large, "
            "invalid, error)", ["reason"], registry=r)
        Gauge("flywheel_spool_depth", "Events waiting in the on-disk spool", registry=r).set_function(lambda: producer.spool.depth)
        Gauge("flywheel_spool_bytes", "Bytes waiting in the on-disk spool", registry=r).set_function(lambda: producer.spool.depth_bytes)
        Gauge("flywheel_broker_up", "1 when the last send to Kafka succeeded, 0 when it failed, NaN before any send",
              registry=r).set_function(lambda: float("nan") if producer.broker_up is None else float(producer.broker_up))
        Gauge("flywheel_kafka_send_errors", "Failed send attempts to Kafka", registry=r).set_function(lambda: producer.send_errors)
        Gauge("flywheel_events_dead_lettered", "Events moved to the dead-letter file (never deliverable) by this process",
              registry=r).set_function(lambda: producer.dead_lettered)
        Gauge("flywheel_event_sender_alive", "1 while the event sender thread runs", registry=r).set_function(
            lambda: float(producer.sender_state()["alive"]))
        Gauge("flywheel_event_sender_errors", "Unexpected errors of the event sender (each restarts its loop)",
              registry=r).set_function(lambda: producer.sender_errors)
        self.rate_limited = Counter("flywheel_gateway_rate_limited", "Requests refused with 429, by limit (rate, "
                                    "concurrency)", ["limit"], registry=r)
        Gauge("flywheel_backend_queued", "Requests waiting for the backend", registry=r).set_function(
            lambda: float(backend.health().get("queued", 0)))
        # The local backend's prefix cache (serving/backends/local/prefix_cache.py); 0 for other backends.
        for key, what in (("hit_tokens", "Prompt tokens served from the prefix cache, not prefilled"),
                          ("lookup_tokens", "Prompt tokens looked up in the prefix cache"),
                          ("blocks", "Blocks held by the prefix cache"), ("bytes", "Bytes held by the prefix cache"),
                          ("evictions", "Blocks evicted from the prefix cache (LRU)")):
            Gauge(f"flywheel_prefix_cache_{key}", what, registry=r).set_function(
                lambda key=key: float(backend.health().get("prefix_cache", {}).get(key, 0)))

    def render(self) -> bytes:
        return generate_latest(self.registry)
