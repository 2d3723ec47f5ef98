"""Tables owned by streams/: the landed events and the landing's own bookkeeping."""

from __future__ import annotations

import duckdb


def m001_interactions(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("""
        CREATE TABLE interactions (
            event_id          VARCHAR PRIMARY KEY,
            schema_version    INTEGER NOT NULL,
            request_id        VARCHAR NOT NULL,
            session_id        VARCHAR NOT NULL,
            turn              INTEGER NOT NULL,
            user_id           VARCHAR,
            app               VARCHAR NOT NULL,
            created_at        TIMESTAMPTZ NOT NULL,
            model_alias       VARCHAR NOT NULL,
            model_version     VARCHAR NOT NULL,
            messages          JSON NOT NULL,
            drafts            JSON NOT NULL,
            params            JSON NOT NULL,
            prompt_tokens     INTEGER,
            completion_tokens INTEGER,
            ttft_ms           DOUBLE,
            total_ms          DOUBLE,
            status            VARCHAR NOT NULL,
            error             JSON,
            tags              JSON NOT NULL,
            task_type         VARCHAR,
            source            VARCHAR,
            kafka_partition   INTEGER,
            kafka_offset      BIGINT,
            landed_at         TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")


def m002_feedback(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("""
        CREATE TABLE feedback (
            event_id        VARCHAR PRIMARY KEY,
            schema_version  INTEGER NOT NULL,
            request_id      VARCHAR NOT NULL,
            draft           INTEGER NOT NULL,
            kind            VARCHAR NOT NULL,
            value           INTEGER,
            text            VARCHAR,
            user_id         VARCHAR,
            session_id      VARCHAR,
            app             VARCHAR NOT NULL,
            created_at      TIMESTAMPTZ NOT NULL,
            comment         VARCHAR,
            kafka_partition INTEGER,
            kafka_offset    BIGINT,
            landed_at       TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")


def m003_dead_letters(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("""
        CREATE TABLE dead_letters (
            event_id     VARCHAR PRIMARY KEY,   -- source_topic:partition:offset
            source_topic VARCHAR NOT NULL,
            partition    INTEGER NOT NULL,
            "offset"     BIGINT NOT NULL,
            key          VARCHAR,
            reason       VARCHAR NOT NULL,
            payload      VARCHAR NOT NULL,
            created_at   TIMESTAMPTZ NOT NULL,
            landed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")


def m004_landing_offsets(conn: duckdb.DuckDBPyConnection) -> None:
    # Written in the same transaction as each batch: the landed position per partition,
    # which `flywheel status` compares with what producers had acknowledged.
    conn.execute("""
        CREATE TABLE landing_offsets (
            topic       VARCHAR NOT NULL,
            partition   INTEGER NOT NULL,
            next_offset BIGINT NOT NULL,
            updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (topic, partition)
        )""")


def m005_deployments(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("""
        CREATE TABLE deployments (
            event_id    VARCHAR PRIMARY KEY,
            alias       VARCHAR NOT NULL,
            candidate   VARCHAR NOT NULL,
            production  VARCHAR NOT NULL,
            action      VARCHAR NOT NULL,
            status      VARCHAR NOT NULL,
            weights     JSON NOT NULL,
            reason      VARCHAR NOT NULL,
            figures     JSON NOT NULL,
            created_at  TIMESTAMPTZ NOT NULL,
            landed_at   TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")


def m006_live_metrics(conn: duckdb.DuckDBPyConnection) -> None:
    # Deltas published by the stream worker (streams/stream_worker.py): several rows may
    # add up to one (alias, version, window); streams/live_metrics.py merges them on read.
    conn.execute("""
        CREATE TABLE live_metrics (
            event_id        VARCHAR PRIMARY KEY,
            alias           VARCHAR NOT NULL,
            model_version   VARCHAR NOT NULL,
            window_start    TIMESTAMPTZ NOT NULL,
            window_s        DOUBLE NOT NULL,
            requests        INTEGER NOT NULL,
            errors          INTEGER NOT NULL,
            latency_sum_ms  DOUBLE NOT NULL,
            latency_buckets JSON NOT NULL,
            thumbs_up       INTEGER NOT NULL,
            thumbs_down     INTEGER NOT NULL,
            ratings         JSON NOT NULL,
            regenerations   INTEGER NOT NULL,
            choices         INTEGER NOT NULL,
            edits           INTEGER NOT NULL,
            copies          INTEGER NOT NULL,
            worker          VARCHAR NOT NULL,
            created_at      TIMESTAMPTZ NOT NULL,
            landed_at       TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")
    conn.execute("CREATE INDEX live_metrics_window ON live_metrics (model_version, window_start)")


def m007_review_decisions(conn: duckdb.DuckDBPyConnection) -> None:
    # Review events (training/curation/review.py): every decision is kept; the latest per candidate
    # (created_at, then Kafka position) is its state. The view reads that latest one.
    conn.execute("""
        CREATE TABLE review_decisions (
            event_id        VARCHAR PRIMARY KEY,
            candidate_id    VARCHAR NOT NULL,
            action          VARCHAR NOT NULL,
            edited_response VARCHAR,
            reviewer        VARCHAR NOT NULL,
            reason          VARCHAR,
            source          VARCHAR NOT NULL,
            created_at      TIMESTAMPTZ NOT NULL,
            kafka_partition INTEGER,
            kafka_offset    BIGINT,
            landed_at       TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")
    conn.execute("CREATE INDEX review_decisions_candidate ON review_decisions (candidate_id)")
    conn.execute("""
        CREATE VIEW review_latest AS
        SELECT candidate_id, action, edited_response, reviewer, reason, source, created_at AS decided_at, event_id
        FROM review_decisions
        QUALIFY row_number() OVER (PARTITION BY candidate_id
                                   ORDER BY created_at DESC, landed_at DESC, kafka_offset DESC NULLS LAST, event_id DESC) = 1""")


def m008_tool_calls(conn: duckdb.DuckDBPyConnection) -> None:
    # Event schema version 2 (issue #12): an interaction's tools, tool_choice and response_format
    # as sent (tool calls and tool results stay in its messages and drafts JSON); feedback about one
    # tool call, and an edit's corrected calls. Version 1 kept response_format in params: it is
    # copied here, and the landing does the same for version-1 events still arriving.
    conn.execute("ALTER TABLE interactions ADD COLUMN tools JSON")
    conn.execute("ALTER TABLE interactions ADD COLUMN tool_choice JSON")
    conn.execute("ALTER TABLE interactions ADD COLUMN response_format JSON")
    conn.execute("UPDATE interactions SET response_format = params->'response_format' "
                 "WHERE json_type(params->'response_format') = 'OBJECT'")
    conn.execute("ALTER TABLE feedback ADD COLUMN tool_call_id VARCHAR")
    conn.execute("ALTER TABLE feedback ADD COLUMN tool_calls JSON")


# New migrations go at the end: a database applies what it has not recorded, in this order.
MIGRATIONS = [m001_interactions, m002_feedback, m003_dead_letters, m004_landing_offsets, m005_deployments,
              m006_live_metrics, m007_review_decisions, m008_tool_calls]
