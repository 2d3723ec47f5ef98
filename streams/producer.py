"""Event producer: request threads append to the spool; one sender thread ships it to Kafka.

``emit`` never touches the network, so a down or slow broker never blocks a request. The
sender sends in spool order with an idempotent, ``acks=all`` kafka-python producer and
moves the spool cursor only after the broker acknowledged. When the broker fails it drops
the client, backs off and starts again from the cursor (at-least-once; landing dedupes).

A record that can never be delivered (over the size limits, refused by the broker as too
large or invalid, an unreadable spool line) is moved aside to a dead-letter file with its
reason, ``DATA_DIR/dead-letters/<spool>.jsonl``, and the cursor moves past it: one poison
record never holds back the records behind it. The sender thread is supervised: any
error is logged and counted, and the loop starts again; its state is in ``stats()``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from flywheel.settings import Settings
from streams.event_size import EventTooLarge
from streams.spool import Reservation, Spool, SpoolRecord

log = logging.getLogger(__name__)

#: kafka-python's own default max_request_size; the producer never goes below it.
KAFKA_MAX_REQUEST = 1024 * 1024
#: Room for a record's key, headers and framing above the event itself.
RECORD_OVERHEAD = 64 * 1024

#: Errors after which sending the same record again can only fail again.
_PERMANENT = ("MessageSizeTooLargeError", "RecordListTooLargeError", "InvalidRecordError", "InvalidTopicError",
              "UnsupportedForMessageFormatError")


def _permanent(error: BaseException | None) -> bool:
    return error is not None and type(error).__name__ in _PERMANENT


DEAD_LETTER_DIR = "dead-letters"


def dead_letter_path(spool_dir: Path) -> Path:
    """Where the producer of ``spool_dir`` moves records it can never deliver."""
    spool_dir = Path(spool_dir)
    return spool_dir.parent / DEAD_LETTER_DIR / f"{spool_dir.name}.jsonl"


def dead_letter_counts(data_path: Path) -> dict[str, int]:
    """Records in each dead-letter file under ``data_path`` (file path -> lines)."""
    out = {}
    for path in sorted((Path(data_path) / DEAD_LETTER_DIR).glob("*.jsonl")):
        with open(path, "rb") as f:
            out[str(path)] = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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
        max_event_bytes: int = 1_000_000,
        start: bool = True,
    ):
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.send_batch = send_batch
        self.max_event_bytes = max_event_bytes
        self.max_request_size = max(KAFKA_MAX_REQUEST, max_event_bytes + RECORD_OVERHEAD)
        self.spool = Spool(spool_dir, max_bytes=max_bytes, segment_bytes=segment_bytes, fsync=fsync,
                           read_bytes=max(4 * 1024 * 1024, 2 * self.max_request_size))
        self.dead_letter_file = dead_letter_path(spool_dir)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._producer = None
        # What the broker acknowledged: counts per topic, highest offset per (topic, partition).
        self.sent = defaultdict(int)
        self.acked_offsets: dict[tuple[str, int], int] = {}
        self.send_errors = 0
        self.broker_up: bool | None = None  # unknown until the first send
        self.last_error: str | None = None
        self.last_error_at: str | None = None
        self.last_success_at: str | None = None
        self.dead_lettered = 0  # records moved to the dead-letter file by this process
        self.sender_errors = 0  # unexpected errors of the sender loop (each one restarts it)
        self.sender_restarts = 0  # threads started again after one had died
        self._started = start
        self._supervise_lock = threading.Lock()
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
            max_event_bytes=settings.events.max_event_bytes,
            start=start,
        )

    # -- request side --------------------------------------------------------------
    def emit(self, topic: str, key: str | None, event: BaseModel | bytes) -> None:
        self.emit_many([(topic, key, event)])

    def reserve(self, nbytes: int) -> Reservation:
        """Hold room in the spool for an event to come (SpoolFull when there is none)."""
        return self.spool.reserve(nbytes)

    def emit_many(self, items: list[tuple[str, str | None, BaseModel | bytes]],
                  reservation: Reservation | None = None) -> None:
        """Queue events for Kafka (in order), all or none. Raises SpoolFull when the bound is
        reached, EventTooLarge when an event is over ``max_event_bytes``; ``reservation``
        (used up either way) is room held for them."""
        records = [
            (topic, key.encode() if key is not None else None, ev if isinstance(ev, bytes) else ev.model_dump_json().encode())
            for topic, key, ev in items
        ]
        for (_, _, value), (_, _, ev) in zip(records, items):
            if len(value) > self.max_event_bytes:
                if reservation is not None:
                    reservation.release()
                raise EventTooLarge(getattr(ev, "type", "spooled"), len(value), self.max_event_bytes)
        self.spool.append(records, reservation)
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
                max_request_size=self.max_request_size,
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
        """Send a batch; return how many leading records are settled: acknowledged by the
        broker, or moved to the dead-letter file because no retry could deliver them."""
        producer = self._client()
        outcomes: list = []  # per record: a future, or the reason it can never be sent
        for r in batch:
            if r.error is not None:
                outcomes.append(r.error)
                continue
            try:
                outcomes.append(producer.send(r.topic, key=r.key, value=r.value))
            except Exception as e:  # noqa: BLE001 - kafka-python raises some refusals here, before any I/O
                if not _permanent(e):
                    self.last_error = f"{type(e).__name__}: {e}"
                    break  # e.g. no metadata yet: this record and the rest go again later
                outcomes.append(f"refused by the Kafka client: {type(e).__name__}: {e}")
        producer.flush(timeout=15)
        settled = 0
        refused = False
        for r, out in zip(batch, outcomes):
            if isinstance(out, str):
                self._dead_letter(r, out)
            elif out.succeeded():
                md = out.value
                tp = (md.topic, md.partition)
                if md.offset > self.acked_offsets.get(tp, -1):
                    self.acked_offsets[tp] = md.offset
                self.sent[r.topic] += 1
            elif out.failed() and _permanent(out.exception):
                self._dead_letter(r, f"refused by the broker: {type(out.exception).__name__}: {out.exception}")
                refused = True
            else:
                self.last_error = repr(out.exception) if out.failed() else "not acknowledged in time"
                break
            settled += 1
        if refused:
            # An idempotent producer's sequence numbers went past a refused batch: start afresh.
            self._drop_client()
        return settled

    def _dead_letter(self, record: SpoolRecord, reason: str) -> None:
        """Append ``record`` with ``reason`` to the dead-letter file (before the cursor passes it)."""
        line = {"at": _now(), "reason": reason, "topic": record.topic,
                "key": record.key.decode(errors="replace") if record.key is not None else None,
                "bytes": len(record.value), "value": record.value.decode(errors="replace")}
        self.dead_letter_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dead_letter_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.dead_lettered += 1
        log.error("event moved to the dead-letter file %s (%s): topic %s, %d bytes",
                  self.dead_letter_file, reason, record.topic or "?", len(record.value))

    def _run(self) -> None:
        """The sender thread: runs the send loop, and runs it again after any error."""
        backoff = 0.5
        while True:
            try:
                self._send_loop()
                return
            except Exception as e:  # noqa: BLE001 - supervision: a bug or a bad record must not stop delivery
                self.sender_errors += 1
                self.last_error = f"sender error: {type(e).__name__}: {e}"
                self.last_error_at = _now()
                log.exception("event sender failed (%d so far); restarting it in %.1fs", self.sender_errors, backoff)
                self._drop_client()
            if self._stop.wait(backoff) and time.monotonic() > self._drain_deadline:
                return
            backoff = min(backoff * 2, 5.0)

    def _send_loop(self) -> None:
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
                settled = self._send(batch)
            except Exception as e:  # noqa: BLE001 - any client failure means: retry later from the cursor
                settled = 0
                self.last_error = f"{type(e).__name__}: {e}"
            if settled:
                self.spool.commit(batch[:settled])
                self.last_success_at = _now()
            if settled == len(batch):
                self.broker_up = True
                backoff = 0.1
                continue
            # The broker failed part of the batch: start over with a fresh client (a restarted
            # broker forgets producer ids and sequence numbers).
            self.broker_up = False
            self.send_errors += 1
            self.last_error_at = _now()
            log.warning("kafka send failed (%s); %d events spooled, retrying in %.1fs", self.last_error, self.spool.depth, backoff)
            self._drop_client()
            if self._stop.wait(backoff) and time.monotonic() > self._drain_deadline:
                break
            backoff = min(backoff * 2, 5.0)

    def _supervise(self) -> None:
        """Start the sender again if its thread died (what ``_run`` cannot catch, e.g. an
        error while logging)."""
        with self._supervise_lock:
            if self._started and not self._stop.is_set() and not self._thread.is_alive():
                self.sender_restarts += 1
                log.error("event sender thread was dead; starting it again (%d restarts)", self.sender_restarts)
                self._thread = threading.Thread(target=self._run, name="event-sender", daemon=True)
                self._thread.start()

    # -- lifecycle -----------------------------------------------------------------
    _drain_deadline = float("inf")

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the spool is empty (everything acknowledged). True if it emptied."""
        deadline = time.monotonic() + timeout
        self._supervise()
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

    def sender_state(self) -> dict:
        """Whether the sender thread runs, and its last error and success (UTC times)."""
        self._supervise()
        return {"alive": self._thread.is_alive(), "errors": self.sender_errors, "restarts": self.sender_restarts,
                "last_error": self.last_error, "last_error_at": self.last_error_at,
                "last_success_at": self.last_success_at}

    def stats(self) -> dict:
        return {
            "spool_depth": self.spool.depth,
            "spool_bytes": self.spool.depth_bytes,
            "broker_up": self.broker_up,
            "sender": self.sender_state(),
            "sent": dict(list(self.sent.items())),
            "send_errors": self.send_errors,
            "dead_lettered": self.dead_lettered,
            "dead_letter_file": str(self.dead_letter_file),
            "last_error": self.last_error,
            "acked_offsets": {f"{t}:{p}": o for (t, p), o in sorted(list(self.acked_offsets.items()))},
        }
