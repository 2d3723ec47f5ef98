"""Landing: Kafka → DuckDB, exactly once in effect.

A consumer group (aiokafka) reads the event topics; records are validated one by one as
they are polled (a msgspec mirror of the model vouches for the valid ones, the pydantic
model decides the rest: streams/fast_validation.py) and gathered into a batch, up to
``landing.batch_max``, while the writer is busy with the one before; each batch is written
in ONE DuckDB transaction (keyed on ``event_id``, so redelivery never duplicates a row)
together with the landed position per partition; offsets are committed to Kafka only after
that transaction committed. A crash anywhere re-reads from the last committed offset and
lands nothing twice.

Records that fail validation become dead letters: landed in ``dead_letters`` with the
reason (in the same transaction) and produced to the DLQ topic. Nothing is dropped. Their
key, reason and payload are redacted first (streams/privacy.py): a record that skipped the
gateway's redaction, or broke on the way, must not store raw PII.

A valid record DuckDB still refuses (a value it cannot convert or store, e.g. a
``window_start`` of digits that pydantic reads as a timestamp and DuckDB's JSON reader does
not) would fail its whole batch, and the redelivered batch again, for ever. So when a
batch fails on such an error, its rows are split in halves, tried in transactions that are
rolled back, until the failing records are found (``Lander._isolate``); they become dead
letters with DuckDB's reason, and the rest of the batch lands in one transaction, exactly
once. Dead letters sent to the DLQ topic are checked: each send is acknowledged, retried,
and raised if it still fails (the batch's offsets are then not committed, so a restart
lands nothing twice and sends them again). A dead letter too large for the producer goes
to the topic with its payload cut (the ``dead_letters`` row keeps it whole).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import duckdb
import pyarrow as pa
from pydantic import BaseModel, ValidationError

from flywheel.errors import BrokerError
from flywheel.settings import Settings
from streams.event_size import json_size
from streams.fast_validation import fast_validator
from streams.privacy import Privacy
from streams.schemas import SCHEMA_VERSION, DeadLetter, Deployment, Feedback, Interaction, Metrics, Review

log = logging.getLogger(__name__)

#: DuckDB errors a record's own values can cause (a value it cannot convert or store; a
#: repeated key, which the INSERT OR IGNORE form absorbs): a batch failing on one of these
#: is split to find the record. Any other error (I/O, memory) stops landing as before.
RECORD_ERRORS = (duckdb.ConstraintException, duckdb.ConversionException, duckdb.OutOfRangeException,
                 duckdb.InvalidInputException, duckdb.TypeMismatchException)


class DeadLetterSendError(BrokerError):
    """Dead letters the broker did not acknowledge, after retries."""

# json_transform structures: DuckDB parses each canonical record once, vectorised.
_INTERACTION_STRUCT = """{"schema_version":"INTEGER","event_id":"VARCHAR","request_id":"VARCHAR",
 "session_id":"VARCHAR","turn":"INTEGER","user_id":"VARCHAR","app":"VARCHAR","created_at":"TIMESTAMPTZ",
 "model_alias":"VARCHAR","model_version":"VARCHAR","messages":"JSON","drafts":"JSON","params":"JSON",
 "usage":{"prompt_tokens":"INTEGER","completion_tokens":"INTEGER"},"timing":{"ttft_ms":"DOUBLE","total_ms":"DOUBLE"},
 "status":"VARCHAR","error":"JSON","tags":"JSON","tools":"JSON","tool_choice":"JSON","response_format":"JSON"}"""
_FEEDBACK_STRUCT = """{"schema_version":"INTEGER","event_id":"VARCHAR","request_id":"VARCHAR","draft":"INTEGER",
 "kind":"VARCHAR","value":"INTEGER","text":"VARCHAR","user_id":"VARCHAR","session_id":"VARCHAR","app":"VARCHAR",
 "created_at":"TIMESTAMPTZ","comment":"VARCHAR","tool_call_id":"VARCHAR","tool_calls":"JSON"}"""

#: A JSON field as a column: SQL NULL when absent or JSON null.
def _json_or_null(expr: str) -> str:
    return f"CASE WHEN json_type({expr}) = 'NULL' THEN NULL ELSE {expr} END"

_DEPLOY_STRUCT = """{"alias":"VARCHAR","candidate":"VARCHAR","production":"VARCHAR","action":"VARCHAR",
 "status":"VARCHAR","weights":"JSON","reason":"VARCHAR","figures":"JSON"}"""
_METRICS_STRUCT = """{"alias":"VARCHAR","model_version":"VARCHAR","window_start":"TIMESTAMPTZ","window_s":"DOUBLE",
 "requests":"INTEGER","errors":"INTEGER","latency_sum_ms":"DOUBLE","latency_buckets":"JSON","thumbs_up":"INTEGER",
 "thumbs_down":"INTEGER","ratings":"JSON","regenerations":"INTEGER","choices":"INTEGER","edits":"INTEGER",
 "copies":"INTEGER","worker":"VARCHAR"}"""
_REVIEW_STRUCT = """{"candidate_id":"VARCHAR","action":"VARCHAR","edited_response":"VARCHAR","reviewer":"VARCHAR",
 "reason":"VARCHAR","source":"VARCHAR"}"""
_DEAD_STRUCT = """{"event_id":"VARCHAR","source_topic":"VARCHAR","partition":"INTEGER","offset":"BIGINT",
 "key":"VARCHAR","reason":"VARCHAR","payload":"VARCHAR","created_at":"TIMESTAMPTZ"}"""

# Valid records land as received (no re-serialisation on the hot path): ``event_id`` and
# ``created_at`` come from the validated model (staged columns), optional fields the sender
# left out get the schema's defaults here. tests/test_landing.py checks that a minimal
# record lands exactly like its fully spelled-out canonical form.
_INSERTS = {
    "interactions": f"""
        INSERT OR IGNORE INTO interactions (event_id, schema_version, request_id, session_id, turn, user_id, app,
            created_at, model_alias, model_version, messages, drafts, params, prompt_tokens, completion_tokens,
            ttft_ms, total_ms, status, error, tags, task_type, source, tools, tool_choice, response_format,
            kafka_partition, kafka_offset)
        SELECT id, coalesce(j.schema_version, {SCHEMA_VERSION}), j.request_id, j.session_id, coalesce(j.turn, 1), j.user_id,
            coalesce(j.app, 'default'), ts, j.model_alias, j.model_version, j.messages, coalesce(j.drafts, '[]'),
            coalesce(j.params, '{{}}'), coalesce(j.usage.prompt_tokens, 0), coalesce(j.usage.completion_tokens, 0),
            j.timing.ttft_ms, coalesce(j.timing.total_ms, 0), coalesce(j.status, 'ok'),
            {_json_or_null("j.error")}, coalesce(j.tags, '{{}}'),
            j.tags->>'task_type', j.tags->>'source', {_json_or_null("j.tools")}, {_json_or_null("j.tool_choice")},
            coalesce({_json_or_null("j.response_format")}, {_json_or_null("j.params->'response_format'")}), p, o
        FROM (SELECT json_transform(raw, '{_INTERACTION_STRUCT}') AS j, event_id AS id, created_at AS ts,
                     partition AS p, "offset" AS o FROM staged)""",
    "feedback": f"""
        INSERT OR IGNORE INTO feedback (event_id, schema_version, request_id, draft, kind, value, text, user_id,
            session_id, app, created_at, comment, tool_call_id, tool_calls, kafka_partition, kafka_offset)
        SELECT id, coalesce(j.schema_version, {SCHEMA_VERSION}), j.request_id, coalesce(j.draft, 0), j.kind, j.value, j.text,
            j.user_id, j.session_id, coalesce(j.app, 'default'), ts, j.comment, j.tool_call_id,
            {_json_or_null("j.tool_calls")}, p, o
        FROM (SELECT json_transform(raw, '{_FEEDBACK_STRUCT}') AS j, event_id AS id, created_at AS ts,
                     partition AS p, "offset" AS o FROM staged)""",
    "deployments": f"""
        INSERT OR IGNORE INTO deployments (event_id, alias, candidate, production, action, status, weights, reason,
            figures, created_at)
        SELECT id, j.alias, j.candidate, j.production, j.action, j.status, j.weights, j.reason,
            coalesce(j.figures, '{{}}'), ts
        FROM (SELECT json_transform(raw, '{_DEPLOY_STRUCT}') AS j, event_id AS id, created_at AS ts FROM staged)""",
    "live_metrics": f"""
        INSERT OR IGNORE INTO live_metrics (event_id, alias, model_version, window_start, window_s, requests, errors,
            latency_sum_ms, latency_buckets, thumbs_up, thumbs_down, ratings, regenerations, choices, edits, copies,
            worker, created_at)
        SELECT id, j.alias, j.model_version, j.window_start, j.window_s, coalesce(j.requests, 0),
            coalesce(j.errors, 0), coalesce(j.latency_sum_ms, 0), coalesce(j.latency_buckets, '{{}}'),
            coalesce(j.thumbs_up, 0), coalesce(j.thumbs_down, 0), coalesce(j.ratings, '[0,0,0,0,0]'),
            coalesce(j.regenerations, 0), coalesce(j.choices, 0), coalesce(j.edits, 0), coalesce(j.copies, 0),
            j.worker, ts
        FROM (SELECT json_transform(raw, '{_METRICS_STRUCT}') AS j, event_id AS id, created_at AS ts FROM staged)""",
    "review_decisions": f"""
        INSERT OR IGNORE INTO review_decisions (event_id, candidate_id, action, edited_response, reviewer, reason, source,
            created_at, kafka_partition, kafka_offset)
        SELECT id, j.candidate_id, j.action, j.edited_response, j.reviewer, j.reason, coalesce(j.source, 'cli'), ts, p, o
        FROM (SELECT json_transform(raw, '{_REVIEW_STRUCT}') AS j, event_id AS id, created_at AS ts,
                     partition AS p, "offset" AS o FROM staged)""",
    "dead_letters": f"""
        INSERT OR IGNORE INTO dead_letters (event_id, source_topic, partition, "offset", key, reason, payload, created_at)
        SELECT id, j.source_topic, j.partition, j.offset, j.key, j.reason, j.payload, ts
        FROM (SELECT json_transform(raw, '{_DEAD_STRUCT}') AS j, event_id AS id, created_at AS ts FROM staged)""",
}
# A batch almost never repeats a landed event, and a plain INSERT into the keyed table costs
# about a third less than INSERT OR IGNORE (measured: 16 vs 23 µs a row). So a batch is
# written with plain INSERTs first; when the key check finds a repeat (redelivery after a
# crash, a replayed spool) the transaction is rolled back and the batch written again with
# INSERT OR IGNORE. Dead letters always take the second form: the landing reads the DLQ
# topic it writes to, so every dead letter it produced comes back once.
_PLAIN_INSERTS = {table: sql.replace("INSERT OR IGNORE INTO", "INSERT INTO", 1)
                  for table, sql in _INSERTS.items() if table != "dead_letters"}


def validation_reason(error: Exception) -> str:
    """A one-line reason a person can act on."""
    if isinstance(error, ValidationError):
        parts = []
        for e in error.errors()[:5]:
            loc = ".".join(str(x) for x in e["loc"]) or "(record)"
            parts.append(f"{loc}: {e['msg']}")
        more = f" (+{error.error_count() - 5} more)" if error.error_count() > 5 else ""
        return "schema validation failed: " + "; ".join(parts) + more
    return f"{type(error).__name__}: {error}"


@dataclass
class Record:
    """What landing needs of a Kafka record. aiokafka's (and kafka-python's)
    ConsumerRecord has the same attributes, and the consumer hands those over as they are."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class BatchResult:
    landed: dict[str, int] = field(default_factory=dict)  # table -> records handed to DuckDB
    dead: list[DeadLetter] = field(default_factory=list)  # to produce to the DLQ topic
    refused: int = 0  # valid records DuckDB refused, dead-lettered by `Lander._isolate`


def _staged(ids, created, raw, partitions, offsets) -> pa.Table:
    """The Arrow table one INSERT reads as ``staged``: each record's bytes as received."""
    return pa.table({
        "event_id": pa.array(list(ids), pa.string()),
        "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
        "raw": pa.array(raw, pa.binary()).cast(pa.string()),
        "partition": pa.array(partitions, pa.int32()), "offset": pa.array(offsets, pa.int64())})


class Lander:
    """Validates and writes batches of records; knows nothing about the consumer."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, topics: dict[str, str], privacy: Privacy | None = None):
        self.conn = conn
        self.privacy = privacy  # redacts dead letters (None: kept as received)
        self.table_of = {topics["interactions"]: "interactions", topics["feedback"]: "feedback",
                         topics["dlq"]: "dead_letters"}
        for name, table in (("deployments", "deployments"), ("metrics", "live_metrics"), ("reviews", "review_decisions")):
            if name in topics:
                self.table_of[topics[name]] = table
        self.model_of = {"interactions": Interaction, "feedback": Feedback, "dead_letters": DeadLetter,
                         "deployments": Deployment, "live_metrics": Metrics, "review_decisions": Review}
        self.topic_of = {table: topic for topic, table in self.table_of.items()}
        # msgspec mirrors of the models (streams/fast_validation.py): a quick yes for a valid
        # record; anything else is validated by the model itself, whose reason goes to the DLQ.
        self.fast_of = {table: fast_validator(model) for table, model in self.model_of.items()}

    def _dead(self, rec: Record, reason: str) -> DeadLetter:
        dead = DeadLetter(
            event_id=f"{rec.topic}:{rec.partition}:{rec.offset}",
            source_topic=rec.topic,
            partition=rec.partition,
            offset=rec.offset,
            key=rec.key.decode("utf-8", "replace") if rec.key is not None else None,
            reason=reason,
            payload=(rec.value or b"").decode("utf-8", "replace"),
            created_at=datetime.now(timezone.utc),
        )
        return self.privacy.dead_letter(dead) if self.privacy is not None else dead

    def land(self, records: list[Record]) -> BatchResult:
        return self.write(self.prepare(records))

    def prepare(self, records: Sequence[Record]) -> "Prepared":
        """Validate records (Python, holds the GIL): canonical rows per table, dead letters."""
        batch = self.batch()
        batch.add(records)
        return batch.finish()

    def batch(self) -> "Batch":
        """An empty batch to `Batch.add` records to, over several polls, then `Batch.finish`."""
        return Batch(self)

    def write(self, prepared: "Prepared") -> BatchResult:
        """One DuckDB transaction for the batch (DuckDB releases the GIL while it works):
        plain INSERTs, or INSERT OR IGNORE when the batch repeats a landed event; when a
        record's values make DuckDB refuse the batch, that record is dead-lettered and the
        rest lands (`_isolate`)."""
        try:
            return self._transaction(prepared, _PLAIN_INSERTS)
        except RECORD_ERRORS:  # a repeat (the usual case), or a record DuckDB refuses
            pass
        try:
            return self._transaction(prepared, {})
        except RECORD_ERRORS as e:
            return self._isolate(prepared, e)

    def _isolate(self, prepared: "Prepared", error: Exception) -> BatchResult:
        """Find the records DuckDB refuses by splitting the batch (each try a transaction
        rolled back), then land the rest with those records as dead letters, in one
        transaction. ``error`` is raised again when no single record is to blame."""
        refused: dict[str, dict[int, str]] = {}
        for table, staged in prepared.tables.items():
            reason = self._refusal(table, staged)
            if reason is not None:
                refused[table] = self._bisect(table, staged, 0, staged.num_rows, reason, {})
        if not refused:
            raise error
        out = Prepared(tables=dict(prepared.tables), dead=list(prepared.dead), positions=prepared.positions,
                       keys=dict(prepared.keys))
        dead_rows = []
        for table, rows in refused.items():
            staged = out.tables[table]
            for i, reason in rows.items():
                value = staged["raw"][i].as_py()
                rec = Record(self.topic_of.get(table, table), staged["partition"][i].as_py(), staged["offset"][i].as_py(),
                             prepared.keys.get(table, (None,) * staged.num_rows)[i], value.encode())
                dead = self._dead(rec, f"the warehouse refused it: {reason}")
                log.error("landing: %s:%s:%s (event %s) refused by DuckDB, dead-lettered: %s", rec.topic, rec.partition,
                          rec.offset, staged["event_id"][i].as_py(), reason)
                dead_rows.append(dead)
                if table != "dead_letters":  # never bounce a dead letter back into the DLQ
                    out.dead.append(dead)
            keep = pa.array([i not in rows for i in range(staged.num_rows)])
            out.tables[table] = staged.filter(keep)
            out.keys[table] = tuple(k for i, k in enumerate(prepared.keys.get(table, ())) if i not in rows)
            if out.tables[table].num_rows == 0:
                del out.tables[table]
        extra = _staged([d.event_id for d in dead_rows], [d.created_at for d in dead_rows],
                        [d.model_dump_json().encode() for d in dead_rows], [d.partition for d in dead_rows],
                        [d.offset for d in dead_rows])
        if "dead_letters" in out.tables:
            extra = pa.concat_tables([out.tables["dead_letters"], extra])
        out.tables["dead_letters"] = extra
        result = self._transaction(out, {})
        result.refused = len(dead_rows)
        return result

    def _refusal(self, table: str, staged: pa.Table) -> str | None:
        """Why DuckDB refuses to insert ``staged`` into ``table`` (None: it does not); tried
        in a transaction that is rolled back."""
        self.conn.execute("BEGIN TRANSACTION")
        try:
            self.conn.register("staged", staged)
            self.conn.execute(_INSERTS[table])
            return None
        except RECORD_ERRORS as e:
            return f"{type(e).__name__}: {e}"
        finally:
            self.conn.execute("ROLLBACK")
            self.conn.unregister("staged")

    def _bisect(self, table: str, staged: pa.Table, lo: int, hi: int, reason: str, found: dict[int, str]) -> dict[int, str]:
        """The rows of [lo, hi) (which fail together for ``reason``) that fail on their own:
        halves are tried in turn, so k bad rows of n cost about k * 2 * log2(n) tries."""
        if hi - lo == 1:
            found[lo] = reason
            return found
        mid = (lo + hi) // 2
        for a, b in ((lo, mid), (mid, hi)):
            why = self._refusal(table, staged.slice(a, b - a))
            if why is not None:
                self._bisect(table, staged, a, b, why, found)
        return found

    def _transaction(self, prepared: "Prepared", inserts: dict[str, str]) -> BatchResult:
        result = BatchResult(dead=prepared.dead)
        self.conn.execute("BEGIN TRANSACTION")
        try:
            for table, staged in prepared.tables.items():
                self.conn.register("staged", staged)  # replaces one a failed try left registered
                self.conn.execute(inserts.get(table) or _INSERTS[table])
                self.conn.unregister("staged")
                result.landed[table] = staged.num_rows
            if prepared.positions:
                offsets = pa.table({
                    "topic": [t for t, _ in prepared.positions], "partition": [p for _, p in prepared.positions],
                    "next_offset": list(prepared.positions.values())})
                self.conn.register("positions", offsets)
                self.conn.execute("INSERT OR REPLACE INTO landing_offsets (topic, partition, next_offset, updated_at) "
                                  "SELECT topic, partition, next_offset, now() FROM positions")
                self.conn.unregister("positions")
            self.conn.execute("COMMIT")
        except Exception:
            self.conn.execute("ROLLBACK")
            raise
        return result


@dataclass
class Prepared:
    """A validated batch, ready for one DuckDB transaction."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    keys: dict[str, tuple[bytes | None, ...]] = field(default_factory=dict)  # table -> each row's Kafka key


class Batch:
    """Records validated as they are polled, until the writer takes them as one transaction.
    Each record is validated from its raw bytes: by the model's msgspec mirror when it vouches
    for it (streams/fast_validation.py), else by the pydantic model, whose reason a dead
    letter carries. A repeated event id keeps its last record (one row per id a batch)."""

    def __init__(self, lander: Lander):
        self.lander = lander
        self.rows: dict[str, dict[str, tuple[bytes, int, int, datetime, bytes | None]]] = {t: {} for t in _INSERTS}
        self.dead: list[DeadLetter] = []
        self.positions: dict[tuple[str, int], int] = {}
        self.records = 0  # records added (those of topics landing does not know included)

    def add(self, records: Sequence[Record]) -> None:
        lander, rows, positions = self.lander, self.rows, self.positions
        table_of, fast_of = lander.table_of, lander.fast_of
        self.records += len(records)
        for rec in records:
            key = (rec.topic, rec.partition)
            if rec.offset >= positions.get(key, 0):
                positions[key] = rec.offset + 1
            table = table_of.get(rec.topic)
            if table is None:
                continue
            value = rec.value
            check = fast_of[table]
            event = check(value) if check is not None and value is not None else None
            if event is None:  # not vouched for by the mirror: the model decides, and says why
                model: type[BaseModel] = lander.model_of[table]
                try:
                    if value is None:
                        raise ValueError("empty record (no value)")
                    event = model.model_validate_json(value)
                except (ValidationError, ValueError) as e:
                    dead = lander._dead(rec, validation_reason(e))
                    rows["dead_letters"][dead.event_id] = (dead.model_dump_json().encode(), rec.partition, rec.offset,
                                                           dead.created_at, rec.key)
                    if table != "dead_letters":  # never bounce a broken dead letter back into the DLQ
                        self.dead.append(dead)
                    continue
            rows[table][event.event_id] = (value, rec.partition, rec.offset, event.created_at, rec.key)

    def finish(self) -> Prepared:
        prepared = Prepared(dead=self.dead, positions=self.positions)
        for table, by_id in self.rows.items():
            if by_id:
                raw, parts, offs, created, keys = zip(*by_id.values())
                prepared.tables[table] = _staged(list(by_id), created, raw, parts, offs)
                prepared.keys[table] = keys
        return prepared


def land_events(conn: duckdb.DuckDBPyConnection, interactions=(), feedback=(), reviews=(), batch: int = 5000) -> None:
    """Land event models straight into DuckDB through the same validation and SQL as the
    landing consumer, without Kafka: for importing logs, tests and benchmarks (the
    records get synthetic Kafka positions)."""
    lander = Lander(conn, {"interactions": "i", "feedback": "f", "dlq": "d", "reviews": "r"})
    records = [Record("i", 0, k, e.session_id.encode(), e.model_dump_json().encode()) for k, e in enumerate(interactions)]
    records += [Record("f", 0, k, e.request_id.encode(), e.model_dump_json().encode()) for k, e in enumerate(feedback)]
    records += [Record("r", 0, k, e.candidate_id.encode(), e.model_dump_json().encode()) for k, e in enumerate(reviews)]
    for i in range(0, len(records), batch):
        lander.land(records[i:i + batch])


def dlq_record(dead: DeadLetter, max_bytes: int) -> bytes:
    """``dead`` as it goes to the DLQ topic: whole when it fits ``max_bytes``, else with its
    payload cut to fit (the reason says so; the ``dead_letters`` row, landed before with the
    same event id, keeps the payload whole)."""
    data = dead.model_dump_json().encode()
    if len(data) <= max_bytes:
        return data
    note = f" (payload cut from {len(dead.payload):,} characters to fit events.max_event_bytes on the DLQ topic)"
    budget = max_bytes - (len(data) - json_size(dead.payload)) - json_size(note) - 64
    lo, hi = 0, len(dead.payload)
    while lo < hi:  # the longest prefix whose JSON fits: escapes and UTF-8 make bytes per character vary
        mid = (lo + hi + 1) // 2
        if json_size(dead.payload[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return dead.model_copy(update={"payload": dead.payload[:lo], "reason": dead.reason + note}).model_dump_json().encode()


def send_dead_letters(producer, topic: str, dead: Sequence[DeadLetter], max_bytes: int, *, attempts: int = 3,
                      timeout_s: float = 30.0, backoff_s: float = 1.0) -> None:
    """Produce ``dead`` to the DLQ topic and wait for the broker to acknowledge each one;
    those that fail are sent again (``attempts`` in all, ``backoff_s`` doubling between),
    then `DeadLetterSendError` names how many were lost and why."""
    pending = list(dead)
    last_error = "not acknowledged in time"
    for attempt in range(1, attempts + 1):
        sent = []
        for d in pending:
            try:
                sent.append((d, producer.send(topic, key=d.event_id.encode(), value=dlq_record(d, max_bytes))))
            except Exception as e:  # noqa: BLE001 - refused before any I/O (no metadata, too large): retried below
                sent.append((d, e))
        try:
            producer.flush(timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 - a flush that timed out: the futures say which failed
            last_error = f"{type(e).__name__}: {e}"
        failed = []
        for d, out in sent:
            if isinstance(out, Exception):
                failed.append(d)
                last_error = f"{type(out).__name__}: {out}"
            elif not (out.is_done and out.succeeded()):
                failed.append(d)
                if out.is_done:
                    last_error = f"{type(out.exception).__name__}: {out.exception}"
        if not failed:
            return
        pending = failed
        log.warning("landing: %d of %d dead letters not acknowledged by the broker (%s); attempt %d of %d",
                    len(failed), len(sent), last_error, attempt, attempts)
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise DeadLetterSendError(f"{len(pending)} dead letters could not be produced to {topic} after {attempts} attempts "
                              f"({last_error}); landing stops before committing their offsets, so a restart sends them "
                              "again")


class LandingConsumer:
    """The consumer loop. ``run`` returns when ``stop`` is set and the topics are drained
    (no record for ``drain_idle_s``), or at once if ``stop_now`` is set."""

    def __init__(self, settings: Settings, conn: duckdb.DuckDBPyConnection, topics: dict[str, str]):
        self.settings = settings
        self.topics = topics
        self.lander = Lander(conn, topics, Privacy.from_settings(settings, with_salt=False))
        self.stop = threading.Event()
        self.stop_now = threading.Event()
        self.batches = 0
        self.landed_total = 0
        self.dead_total = 0
        self.refused_total = 0  # valid records DuckDB refused (also in dead_total)
        self.last_batch_at: float | None = None
        self.drain_idle_s = 1.0

    async def _consumer(self):
        """The group's consumer, started. aiokafka, not kafka-python: its record batches are
        decoded in C (measured: 4-5 µs of CPU an event against kafka-python's 12-16, which
        is the bare kafka-python consumer's whole cost, so the landing's share of it)."""
        from aiokafka import AIOKafkaConsumer

        settings = self.settings
        consumer = AIOKafkaConsumer(
            *self.topics.values(),
            bootstrap_servers=settings.bootstrap.split(","),
            group_id=settings.landing.group_id,
            client_id=f"{settings.kafka.client_id}-landing",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.landing.batch_max,
            session_timeout_ms=settings.landing.session_timeout_ms,
            heartbeat_interval_ms=max(500, settings.landing.session_timeout_ms // 3),
            fetch_max_wait_ms=min(settings.landing.poll_ms, 500),
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        return consumer

    def _dlq_producer(self):
        from kafka import KafkaProducer

        from streams.producer import KAFKA_MAX_REQUEST, RECORD_OVERHEAD

        return KafkaProducer(bootstrap_servers=self.settings.bootstrap.split(","), acks="all",
                             client_id=f"{self.settings.kafka.client_id}-landing-dlq", max_block_ms=10000,
                             max_request_size=max(KAFKA_MAX_REQUEST, self.settings.events.max_event_bytes + RECORD_OVERHEAD),
                             request_timeout_ms=10000, delivery_timeout_ms=30000)

    def run(self) -> None:
        """Two stages: this thread polls Kafka and validates; a writer thread lands batches
        in DuckDB (DuckDB releases the GIL, so fetching and validating the next batch
        overlaps writing this one). Offsets are committed here, for batches the writer has
        committed, in order. The consumer is asyncio's: this thread runs its event loop, and
        what blocks (the DLQ producer) runs in a worker thread so heartbeats go on."""
        asyncio.run(self._run())

    async def _run(self) -> None:
        from aiokafka.structs import TopicPartition

        loop = asyncio.get_running_loop()
        consumer = dlq = None
        work: queue.Queue = queue.Queue(maxsize=1)  # one batch waits while one is written
        done: asyncio.Queue = asyncio.Queue()
        in_flight = 0

        def finished(item) -> None:  # the writer thread hands each outcome to this loop
            try:
                loop.call_soon_threadsafe(done.put_nowait, item)
            except RuntimeError:  # the loop is closed: landing has stopped, the batch was not committed
                pass

        writer = threading.Thread(target=self._write, args=(work, finished), name="landing-writer", daemon=True)
        writer.start()

        async def settle(block: bool) -> None:
            nonlocal in_flight, dlq
            while in_flight:
                try:
                    positions, n, result, error = await asyncio.wait_for(done.get(), 30) if block else done.get_nowait()
                except asyncio.QueueEmpty:
                    return
                except asyncio.TimeoutError:
                    continue
                in_flight -= 1
                if error is not None:
                    raise error
                if result.dead:
                    dlq = dlq or await asyncio.to_thread(self._dlq_producer)
                    # Raises when the broker still refuses them: landing stops before this
                    # batch's offsets are committed, so a restart sends them again.
                    await asyncio.to_thread(send_dead_letters, dlq, self.topics["dlq"], result.dead,
                                            self.settings.events.max_event_bytes)
                    self.dead_total += len(result.dead)
                self.refused_total += result.refused
                try:
                    await consumer.commit({TopicPartition(t, p): o for (t, p), o in positions.items()})
                except Exception as e:  # noqa: BLE001 - a rebalance: the rows are landed; redelivery is ignored
                    log.warning("offset commit failed after landing (%s); redelivered records will be skipped", e)
                self.batches += 1
                self.landed_total += n
                self.last_batch_at = time.time()

        idle_since = time.monotonic()
        batch_max = self.settings.landing.batch_max
        batch = self.lander.batch()
        try:
            while not self.stop_now.is_set():
                if consumer is None:
                    try:
                        consumer = await self._consumer()
                    except Exception as e:  # noqa: BLE001 - broker not reachable yet: keep trying
                        log.warning("landing cannot reach Kafka (%s); retrying", e)
                        if self.stop.is_set():
                            return
                        await asyncio.sleep(1.0)
                        continue
                await settle(block=False)
                if batch.records and work.empty():  # the writer is free for it (or busy with one before it)
                    work.put_nowait(batch.finish())
                    in_flight += 1
                    batch = self.lander.batch()
                room = batch_max - batch.records
                if room <= 0:  # a full batch waits for the writer
                    await asyncio.sleep(0.002)
                    continue
                # While a batch waits for the writer, records polled meanwhile join it: a busy
                # writer gets fewer, larger transactions (DuckDB's cost per event falls with
                # the batch), an idle one gets each poll at once.
                polled = await consumer.getmany(timeout_ms=5 if batch.records else self.settings.landing.poll_ms,
                                                max_records=room)
                records = [r for rs in polled.values() for r in rs]
                if not records:
                    if not batch.records:
                        await settle(block=True)
                        if self.stop.is_set() and time.monotonic() - idle_since >= self.drain_idle_s:
                            return
                    continue
                idle_since = time.monotonic()
                batch.add(records)
        finally:
            try:
                work.put(None, timeout=60)
            except queue.Full:  # the writer stopped on an error and takes no more
                pass
            writer.join(60)
            if consumer is not None:
                try:
                    await settle(block=False)
                finally:
                    await consumer.stop()
            if dlq is not None:
                dlq.close(timeout=5)

    def _write(self, work: queue.Queue, finished) -> None:
        while (prepared := work.get()) is not None:
            n = sum(t.num_rows for t in prepared.tables.values())
            try:
                finished((prepared.positions, n, self.lander.write(prepared), None))
            except Exception as e:  # noqa: BLE001 - handed to the consumer thread, which stops landing
                finished((prepared.positions, n, None, e))
                return
