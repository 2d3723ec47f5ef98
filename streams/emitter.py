"""Emit events of one topic from a CLI command or a job, through the producer.

Long-running services keep one `EventProducer` for their life; a short-lived process
(`flywheel review approve`, a curation run's auto decisions) opens a `TopicEmitter`,
emits, waits for Kafka's acknowledgement and closes. Its spool is its own
(``DATA_DIR/spool-<name>``), so what a broker outage leaves there is sent by the next
process that opens the same emitter; a file lock next to the spool keeps one process at a
time on it (two senders on one spool would send its records twice).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from pydantic import BaseModel

__all__ = ["EmitterBusy", "TopicEmitter"]

#: Events per `EventProducer.emit_many` call (bounds one spool append).
CHUNK = 5000


class EmitterBusy(RuntimeError):
    """Another process holds the emitter's spool for longer than the lock timeout."""


class TopicEmitter:
    """Produces events to one topic (``settings.topic(topic)``), keyed by ``key(event)``,
    through an `EventProducer` spooling under ``DATA_DIR/spool-<name>``. Use it as a
    context manager: entering takes the spool's lock (waiting up to ``lock_timeout``
    seconds, then `EmitterBusy`) and starts the producer; leaving drains what it can for
    a moment, closes the producer and releases the lock."""

    def __init__(self, settings, topic: str, key: Callable[[BaseModel], str | None], *, name: str,
                 lock_timeout: float = 60.0):
        self.settings = settings
        self.topic = topic
        self.key = key
        self.name = name
        self.spool_dir: Path = settings.data_path / f"spool-{name}"
        self.lock_timeout = lock_timeout
        self._lock_file: IO | None = None
        self.producer = None

    def __enter__(self) -> "TopicEmitter":
        import fcntl  # POSIX only: imported here so that importing this module works anywhere

        from streams.producer import EventProducer

        self.spool_dir.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.spool_dir.parent / f"spool-{self.name}.lock", "w")
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._lock_file.close()
                    self._lock_file = None
                    raise EmitterBusy(f"another process holds {self.spool_dir} for more than "
                                      f"{self.lock_timeout:.0f}s; try again") from None
                time.sleep(0.1)
        s = self.settings
        self.producer = EventProducer(s.bootstrap, self.spool_dir, max_bytes=s.spool.max_bytes,
                                      segment_bytes=s.spool.segment_bytes, fsync=s.spool.fsync,
                                      send_batch=s.spool.send_batch, client_id=f"{s.kafka.client_id}-{self.name}",
                                      max_event_bytes=s.events.max_event_bytes)
        return self

    def emit(self, events: Sequence[BaseModel]) -> None:
        """Queue ``events`` in order (`flush` waits for the broker)."""
        topic = self.settings.topic(self.topic)
        for i in range(0, len(events), CHUNK):
            self.producer.emit_many([(topic, self.key(e), e) for e in events[i:i + CHUNK]])

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for Kafka to acknowledge everything queued."""
        return self.producer.flush(timeout)

    @property
    def depth(self) -> int:
        """Records still waiting in the spool."""
        return self.producer.spool.depth

    def __exit__(self, *exc) -> None:
        import fcntl

        try:
            if self.producer is not None:
                self.producer.close(drain_timeout=2.0)
        finally:
            if self._lock_file is not None:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()
                self._lock_file = None
