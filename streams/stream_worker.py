"""The stream worker: a faust-streaming app that turns interactions and feedback into live
per-version window figures on the ``metrics`` topic (landed into ``live_metrics``).

Its own process (``flywheel stream-worker``, started by ``flywheel up``). The counting is
``streams.live_metrics.LiveMetrics``; this module wires it to Kafka:

- ``BatchReader`` reads ``interactions`` and ``feedback`` a batch at a time (aiokafka's
  ``getmany``, in the faust app's event loop) and counts each batch in one go;
- a timer publishes the deltas every ``stream.flush_s``, waits for the broker to take
  them, and only then commits the offsets of the events they contain. A crash loses
  nothing (uncommitted events are read again); at worst a delta published just before a
  crash is counted twice.
- Not faust agents: faust hands every message from its consumer to an agent's stream on
  its own, through ~3 event-loop iterations (``Consumer._drain_messages`` awaits
  ``wait_first`` per message, the stream iterator ``sleep(0)``), and ``stream.take()`` /
  ``noack_take()`` only buffer on top of that hand-off (measured: 0.11× → 0.14× a bare
  consumer, docs/benchmarks.md). So the app runs without faust's own consumer; faust runs
  the worker (signals, logging, the timer, the producer).
- No faust tables: their recovery reads changelogs up to the end offset, which the local
  broker reports wrongly (STACK_NOTES). The state that matters is in the published deltas;
  what the worker keeps in memory (which version served which request) is rebuilt from
  the traffic it reads.

Run one worker: feedback is keyed by request and interactions by session, so a worker that
owned only some partitions would miss the version of some requests (their feedback would
count under ``unknown``). One worker keeps up with tens of thousands of events per second.

Invalid records are skipped here and counted in the log: the landing consumer is the one
that routes them to the dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from flywheel.settings import Settings
from streams.live_metrics import LiveMetrics

log = logging.getLogger(__name__)

BATCH_MAX = 5000  # records one getmany hands over


def broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def parse(raw: bytes | None, required: tuple[str, ...]) -> dict | None:
    """The record as a dict, or None when it is not JSON or lacks a required field."""
    try:
        record = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if isinstance(record, dict) and all(record.get(k) is not None for k in required):
        return record
    return None


def create_app(settings: Settings, ready_file: Path | None = None):
    """The faust app; ``ready_file`` is written once partitions are assigned (the supervisor waits on it)."""
    import faust
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
    from aiokafka.errors import ConsumerStoppedError, KafkaError
    from mode import Service

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
        producer_acks=-1,
        autodiscover=False,
        # faust's default data folder is "<app id>-data" in the working directory; keep it with the rest.
        datadir=str(settings.data_path / "stream-worker"),
    )
    # BatchReader consumes; faust's own consumer (and its per-message hand-off) stays off.
    app.boot_strategy = app.BootStrategy(app, enable_kafka_consumer=False)
    state = LiveMetrics(window_s=st.window_s, join_wait_s=st.join_wait_s, request_ttl_s=st.request_ttl_s,
                        max_requests=st.max_requests, max_pending=st.max_pending_feedback)
    app.live_metrics = state  # for logs and introspection
    skipped = {"invalid": 0}
    topics = {settings.topic("interactions"): (state.add_interaction,
                                               ("request_id", "model_alias", "model_version", "created_at")),
              settings.topic("feedback"): (state.add_feedback, ("request_id", "kind", "created_at"))}
    metrics = app.topic(settings.topic("metrics"), value_serializer="raw", key_serializer="raw")
    flush_lock = asyncio.Lock()

    def count(records: list, add: Callable[[Mapping, float], None], required: tuple[str, ...], now: float) -> None:
        for record in records:
            parsed = parse(record.value, required)
            if parsed is None:
                skipped["invalid"] += 1
                continue
            try:
                add(parsed, now)
            except (KeyError, TypeError, ValueError):
                skipped["invalid"] += 1

    readers: list = []  # the one BatchReader, once faust has started it

    @app.service
    class BatchReader(Service):
        """A consumer-group member that counts whole batches; ``positions`` holds, per
        partition, the offset after the last event counted and not yet committed."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.consumer: AIOKafkaConsumer | None = None
            self.positions: dict = {}
            readers.append(self)

        async def on_start(self) -> None:
            self.consumer = AIOKafkaConsumer(
                bootstrap_servers=settings.bootstrap.split(","), group_id=st.group_id,
                client_id=f"{settings.kafka.client_id}-metrics", enable_auto_commit=False,
                auto_offset_reset="earliest", session_timeout_ms=int(st.session_timeout_s * 1000),
                heartbeat_interval_ms=max(500, int(st.session_timeout_s * 1000) // 3),
                max_partition_fetch_bytes=8 * 1024 * 1024)
            self.consumer.subscribe(list(topics), listener=Rebalance())
            await self.consumer.start()

        async def on_stop(self) -> None:
            if self.consumer is not None:
                await self.consumer.stop()  # after the app's shutdown flush committed

        @Service.task
        async def _read(self) -> None:
            while not self.should_stop:
                try:
                    batch = await self.consumer.getmany(timeout_ms=500, max_records=BATCH_MAX)
                except ConsumerStoppedError:
                    return
                if self.should_stop or app.should_stop:
                    return  # not counted, not committed: the next worker reads them
                now = time.monotonic()
                for tp, records in batch.items():
                    if records:
                        count(records, *topics[tp.topic], now)
                        self.positions[tp] = records[-1].offset + 1

        async def commit(self, positions: dict) -> None:
            assigned = self.consumer.assignment()
            positions = {tp: offset for tp, offset in positions.items() if tp in assigned}
            if not positions:
                return
            try:
                await self.consumer.commit(positions)
            except KafkaError as e:
                # A rebalance under way: the next commit covers these positions too (newer
                # ones win). Should the partition move first, its events are counted twice.
                for tp, offset in positions.items():
                    self.positions.setdefault(tp, offset)
                log.warning("offset commit failed after publishing (%s); retried with the next flush", e)

    class Rebalance(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked):
            # Publish what was counted before the partitions go: the next owner starts after
            # the committed offsets, so nothing is counted twice or lost.
            await flush()

        async def on_partitions_assigned(self, assigned):
            log.info("stream worker assigned %d partitions", len(assigned))
            if ready_file is not None and assigned:
                ready_file.parent.mkdir(parents=True, exist_ok=True)
                ready_file.write_text(json.dumps(sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)))

    async def flush() -> int:
        """Publish the deltas, wait until the broker has them, then commit what they count.
        Counting happens between awaits, so the positions taken with the deltas are exactly
        the events in them. A failed publish raises, which stops the worker (faust crashes
        the app on a timer's error): its events were not committed and are read again."""
        async with flush_lock:
            reader = readers[0] if readers else None
            positions = {}
            if reader is not None:
                positions, reader.positions = reader.positions, {}
            deltas = state.flush(time.monotonic())
            for delta in deltas:
                await metrics.send(key=delta.model_version.encode(), value=delta.model_dump_json().encode())
            if deltas:
                await app.producer.flush()
            if positions:
                await reader.commit(positions)
            if deltas or skipped["invalid"]:
                log.info("published %d window deltas (%s; %d feedback waiting, %d evicted so far; %d invalid skipped "
                         "so far)", len(deltas), dict(state.counted), state.pending_feedback,
                         state.counted["pending_evicted"], skipped["invalid"])
            return len(deltas)

    app.timer(st.flush_s, name="metrics-flush")(flush)
    app.flush_metrics = flush

    @app.on_before_shutdown.connect
    async def on_shutdown(app, **kwargs):  # noqa: ARG001 - faust's signal signature
        await flush()

    return app


def ready_path(settings: Settings) -> Path:
    return settings.data_path / "stream-worker.ready"


def run_worker(settings: Settings) -> None:
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
