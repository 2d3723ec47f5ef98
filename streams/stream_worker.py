"""The stream worker: a faust-streaming app that turns interactions and feedback into live
per-version window figures on the ``metrics`` topic (landed into ``live_metrics``).

Its own process (``flywheel stream-worker``, started by ``flywheel up``). The counting is
``streams.live_metrics.LiveMetrics``; this module wires it to Kafka:

- two agents read ``interactions`` and ``feedback`` with manual acks;
- a timer publishes the deltas every ``stream.flush_s``, waits for the broker to take
  them, and only then acks the events they contain and commits. A crash loses nothing
  (unflushed events were not committed and are read again); at worst a delta published
  just before a crash is counted twice.
- No faust tables: their recovery reads changelogs up to the end offset, which the local
  broker reports wrongly (STACK_NOTES). The state that matters is in the published deltas;
  what the worker keeps in memory (which version served which request) is rebuilt from
  the traffic it reads.

Run one worker: feedback is keyed by request and interactions by session, so a worker that
owned only some partitions would miss the version of some requests (their feedback would
count under ``unknown``). One worker keeps up with thousands of events per second.

Invalid records are skipped here and counted in the log: the landing consumer is the one
that routes them to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from streams.live_metrics import LiveMetrics

log = logging.getLogger(__name__)


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def create_app(settings, ready_file: Path | None = None):
    """The faust app; ``ready_file`` is written once partitions are assigned (the supervisor waits on it)."""
    import faust

    st = settings.stream
    app = faust.App(
        st.group_id,
        broker=broker_urls(settings.bootstrap),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.kafka.partitions,
        # Our topics are created explicitly, with their partition counts (production Kafka runs
        # without auto-creation); no faust-internal topics: no tables, no leader-only tasks.
        topic_allow_declare=False,
        topic_disable_leader=True,
        broker_session_timeout=st.session_timeout_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        autodiscover=False,
        # Events stay unacked until their delta is published; the final flush on shutdown
        # (below) acks them, so stopping must not wait for acks first.
        stream_wait_empty=False,
    )
    state = LiveMetrics(window_s=st.window_s, join_wait_s=st.join_wait_s, request_ttl_s=st.request_ttl_s,
                        max_requests=st.max_requests)
    app.live_metrics = state  # for logs and introspection
    unacked: list = []  # (stream, event) counted but not yet published
    skipped = {"invalid": 0}

    interactions = app.topic(settings.topic("interactions"), value_serializer="raw", key_serializer="raw")
    feedback = app.topic(settings.topic("feedback"), value_serializer="raw", key_serializer="raw")
    metrics = app.topic(settings.topic("metrics"), value_serializer="raw", key_serializer="raw")

    def parse(raw: bytes, required: tuple[str, ...]) -> dict | None:
        try:
            record = json.loads(raw)
            if isinstance(record, dict) and all(record.get(k) is not None for k in required):
                return record
        except (TypeError, ValueError):
            pass
        skipped["invalid"] += 1
        return None

    def consume(add, required):
        async def agent(stream):
            stream = stream.noack()
            async for event in stream.events():
                record = parse(event.value, required)
                if record is not None:
                    try:
                        add(record, time.monotonic())
                    except (KeyError, TypeError, ValueError):
                        skipped["invalid"] += 1
                unacked.append((stream, event))
        return agent

    app.agent(interactions, name="metrics-interactions")(
        consume(state.add_interaction, ("request_id", "model_alias", "model_version", "created_at")))
    app.agent(feedback, name="metrics-feedback")(
        consume(state.add_feedback, ("request_id", "kind", "created_at")))

    flush_lock = asyncio.Lock()

    async def flush() -> int:
        async with flush_lock:
            batch = unacked[:]
            del unacked[:len(batch)]
            deltas = state.flush(time.monotonic())
            for delta in deltas:
                await metrics.send(key=delta.model_version.encode(), value=delta.model_dump_json().encode())
            if deltas:
                await app.producer.flush()
            for stream, event in batch:
                await stream.ack(event)
            if batch:
                await app.consumer.commit()
            if deltas or skipped["invalid"]:
                log.info("published %d window deltas (%s; %d feedback waiting; %d invalid skipped so far)",
                         len(deltas), dict(state.counted), state.pending_feedback, skipped["invalid"])
            return len(deltas)

    app.timer(st.flush_s, name="metrics-flush")(flush)
    app.flush_metrics = flush

    @app.on_partitions_assigned.connect
    async def on_assigned(app, assigned, **kwargs):  # noqa: ARG001 - faust's signal signature
        log.info("stream worker assigned %d partitions", len(assigned))
        if ready_file is not None and assigned:
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.write_text(json.dumps(sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)))

    @app.on_partitions_revoked.connect
    async def on_revoked(app, revoked, **kwargs):  # noqa: ARG001
        # Publish what was counted before the partitions go: the next owner starts after
        # the committed offsets, so nothing is counted twice or lost.
        await flush()

    @app.on_before_shutdown.connect
    async def on_shutdown(app, **kwargs):  # noqa: ARG001
        await flush()

    return app


def ready_path(settings) -> Path:
    return settings.data_path / "stream-worker.ready"


def run_worker(settings) -> None:
    """Run until SIGINT/SIGTERM (faust's worker handles the signals and stops cleanly)."""
    from faust.worker import Worker

    from streams.topics import ensure_topics, topic_names

    ensure_topics(settings.bootstrap, list(topic_names(settings).values()), settings.kafka.partitions, timeout=60)
    ready = ready_path(settings)
    ready.unlink(missing_ok=True)
    app = create_app(settings, ready_file=ready)
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        ready.unlink(missing_ok=True)
