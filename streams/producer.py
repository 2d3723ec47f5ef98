"""Event producer: request threads append to the spool; one sender thread ships it to Kafka.

``emit`` never touches the network, so a down or slow broker never blocks a request. The
sender sends in spool order with an idempotent, ``acks=all`` kafka-python producer and
moves the spool cursor only after the broker acknowledged. When the broker fails it drops
the client, backs off and starts again from the cursor (at-least-once; landing dedupes).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel

from flywheel.settings import Settings
from streams.spool import Spool, SpoolRecord

log = logging.getLogger(__name__)


class EventProducer:
    def __init__(
        self,
        bootstrap: str,
        spool_dir: Path,
        *,
        max_bytes: int = 256 * 1024 * 1024,
        segment_bytes: int = 16 * 1024 * 1024,
        fsync: bool = False,
        send_batch: int = 2000,
        client_id: str = "flywheel-producer",
        start: bool = True,
    ):
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.send_batch = send_batch
        self.spool = Spool(spool_dir, max_bytes=max_bytes, segment_bytes=segment_bytes, fsync=fsync)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._producer = None
        # What the broker acknowledged: counts per topic, highest offset per (topic, partition).
        self.sent = defaultdict(int)
        self.acked_offsets: dict[tuple[str, int], int] = {}
        self.send_errors = 0
        self.broker_up: bool | None = None  # unknown until the first send
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)
        if start:
            self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings, *, client_id: str = "gateway", start: bool = True) -> "EventProducer":
        return cls(
            settings.bootstrap,
            settings.spool_path,
            max_bytes=settings.spool.max_bytes,
            segment_bytes=settings.spool.segment_bytes,
            fsync=settings.spool.fsync,
            send_batch=settings.spool.send_batch,
            client_id=f"{settings.kafka.client_id}-{client_id}",
            start=start,
        )

    # -- request side --------------------------------------------------------------
    def emit(self, topic: str, key: str | None, event: BaseModel | bytes) -> None:
        self.emit_many([(topic, key, event)])

    def emit_many(self, items: list[tuple[str, str | None, BaseModel | bytes]]) -> None:
        """Queue events for Kafka (in order). Raises SpoolFull when the bound is reached."""
        records = [
            (topic, key.encode() if key is not None else None, ev if isinstance(ev, bytes) else ev.model_dump_json().encode())
            for topic, key, ev in items
        ]
        self.spool.append(records)
        self._wake.set()

    # -- sender --------------------------------------------------------------------
    def _client(self):
        if self._producer is None:
            from kafka import KafkaProducer

            self._producer = KafkaProducer(
                bootstrap_servers=self.bootstrap.split(","),
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=5,
                batch_size=256 * 1024,
                max_block_ms=5000,
                request_timeout_ms=5000,
                delivery_timeout_ms=15000,
                reconnect_backoff_max_ms=1000,
                bootstrap_timeout_ms=3000,
            )
        return self._producer

    def _drop_client(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=0)
            except Exception:  # noqa: BLE001 - the client is already broken; we only release it
                pass
            self._producer = None

    def _send(self, batch: list[SpoolRecord]) -> int:
        """Send a batch; return how many leading records were acknowledged."""
        producer = self._client()
        futures = [producer.send(r.topic, key=r.key, value=r.value) for r in batch]
        producer.flush(timeout=15)
        acked = 0
        for r, fut in zip(batch, futures):
            if not fut.succeeded():
                self.last_error = repr(fut.exception) if fut.failed() else "not acknowledged in time"
                break
            md = fut.value
            tp = (md.topic, md.partition)
            if md.offset > self.acked_offsets.get(tp, -1):
                self.acked_offsets[tp] = md.offset
            self.sent[r.topic] += 1
            acked += 1
        return acked

    def _run(self) -> None:
        backoff = 0.1
        while True:
            batch = self.spool.read(self.send_batch)
            if not batch:
                if self._stop.is_set():
                    break
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            try:
                acked = self._send(batch)
            except Exception as e:  # noqa: BLE001 - any client failure means: retry later from the cursor
                acked = 0
                self.last_error = f"{type(e).__name__}: {e}"
            if acked:
                self.spool.commit(batch[:acked])
            if acked == len(batch):
                self.broker_up = True
                backoff = 0.1
                continue
            # The broker failed part of the batch: start over with a fresh client (a restarted
            # broker forgets producer ids and sequence numbers).
            self.broker_up = False
            self.send_errors += 1
            log.warning("kafka send failed (%s); %d events spooled, retrying in %.1fs", self.last_error, self.spool.depth, backoff)
            self._drop_client()
            if self._stop.wait(backoff) and time.monotonic() > self._drain_deadline:
                break
            backoff = min(backoff * 2, 5.0)

    # -- lifecycle -----------------------------------------------------------------
    _drain_deadline = float("inf")

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the spool is empty (everything acknowledged). True if it emptied."""
        deadline = time.monotonic() + timeout
        while self.spool.depth and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        return self.spool.depth == 0

    def close(self, drain_timeout: float = 10.0) -> None:
        """Drain what can be sent within ``drain_timeout``; the rest stays in the spool."""
        self._drain_deadline = time.monotonic() + drain_timeout
        self.flush(drain_timeout)
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, drain_timeout))
        self._drop_client()
        self.spool.close()

    def stats(self) -> dict:
        return {
            "spool_depth": self.spool.depth,
            "spool_bytes": self.spool.depth_bytes,
            "broker_up": self.broker_up,
            "sent": dict(list(self.sent.items())),
            "send_errors": self.send_errors,
            "last_error": self.last_error,
            "acked_offsets": {f"{t}:{p}": o for (t, p), o in sorted(list(self.acked_offsets.items()))},
        }
