"""Tables owned by training/: curation candidates and their vectors, curation runs, the
mining watermark, the review state view, datasets, evaluations, flywheel turns and
teacher calls."""

from __future__ import annotations


def m201_candidates(conn) -> None:
    # One row per mined request (a session's turn, regenerations collapsed): the latest
    # curation run that touched it decides status/stage/drop_reason. Reviewers (training
    # .review) and later stages read it; only the curation run writes it.
    conn.execute("""
        CREATE TABLE candidates (
            candidate_id      VARCHAR PRIMARY KEY,  -- sha1 of session_id and turn: stable when late events arrive
            run_id            VARCHAR NOT NULL,
            created_at        TIMESTAMPTZ NOT NULL,
            session_id        VARCHAR NOT NULL,
            request_id        VARCHAR NOT NULL,     -- the last attempt of the turn
            user_id           VARCHAR,
            app               VARCHAR,
            model_version     VARCHAR,
            kind              VARCHAR NOT NULL,     -- single | multi
            turn              INTEGER NOT NULL,
            messages          JSON NOT NULL,        -- up to and including the last user turn
            prompt_text       VARCHAR,              -- what dedup and task typing read (boilerplate removed)
            response          VARCHAR,
            response_source   VARCHAR,              -- edit | choice | draft
            response_draft    INTEGER,
            rejected_response VARCHAR,
            feedback          JSON NOT NULL,
            label             VARCHAR,              -- good | bad | unknown
            label_confidence  DOUBLE,
            task_type         VARCHAR,
            task_confidence   DOUBLE,
            language          VARCHAR,
            tags              JSON NOT NULL,
            status            VARCHAR NOT NULL,     -- kept | dropped
            stage             VARCHAR,              -- the stage that dropped it
            drop_reason       VARCHAR,
            dedup_group       BIGINT,
            golden_score      DOUBLE,
            hardness          DOUBLE,
            source_event_ids  JSON NOT NULL,
            updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")


def m202_curation_runs(conn) -> None:
    conn.execute("""
        CREATE TABLE curation_runs (
            run_id          VARCHAR PRIMARY KEY,
            started_at      TIMESTAMPTZ NOT NULL,
            finished_at     TIMESTAMPTZ,
            watermark_from  TIMESTAMPTZ,
            watermark_to    TIMESTAMPTZ,
            status          VARCHAR NOT NULL,   -- running | finished | failed
            funnel          JSON,
            settings        JSON,
            error           VARCHAR
        )""")


def m203_curation_watermarks(conn) -> None:
    # How far mining has read, by landed_at (one row per source; 'landed' for now).
    conn.execute("""
        CREATE TABLE curation_watermarks (
            name        VARCHAR PRIMARY KEY,
            landed_at   TIMESTAMPTZ NOT NULL,
            run_id      VARCHAR NOT NULL,
            updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")


def m204_candidate_vectors(conn) -> None:
    # The prompt embedding (all-MiniLM-L6-v2, normalised) of every candidate a curation run
    # kept, so later runs dedup semantically against earlier ones without re-embedding.
    conn.execute("""
        CREATE TABLE candidate_vectors (
            candidate_id  VARCHAR PRIMARY KEY,
            run_id        VARCHAR NOT NULL,
            vector        FLOAT[384] NOT NULL
        )""")


def m210_datasets(conn) -> None:
    # Immutable dataset versions (content hashes) and the lineage of every record in them.
    conn.execute("""
        CREATE TABLE datasets (
            version        VARCHAR PRIMARY KEY,  -- ds-<12 hex of the content>
            created_at     TIMESTAMPTZ NOT NULL,
            path           VARCHAR NOT NULL,
            counts         JSON NOT NULL,
            task_types     JSON NOT NULL,
            curation_runs  JSON NOT NULL,
            excluded       JSON NOT NULL,
            settings       JSON NOT NULL
        )""")
    conn.execute("""
        CREATE TABLE dataset_items (
            version          VARCHAR NOT NULL,
            split            VARCHAR NOT NULL,   -- sft | dpo | eval
            line             INTEGER NOT NULL,   -- 0-based line in the split's file
            candidate_id     VARCHAR,            -- NULL for the general replay set
            task_type        VARCHAR NOT NULL,
            target_source    VARCHAR,            -- operator-edit | user-edit | choice | draft | verified-draft | teacher | replay
            source_event_ids JSON NOT NULL,
            PRIMARY KEY (version, split, line)
        )""")



def m211_evaluations(conn) -> None:
    conn.execute("""
        CREATE TABLE evaluations (
            eval_id      VARCHAR PRIMARY KEY,   -- the report folder's name under DATA_DIR/evals
            candidate    VARCHAR NOT NULL,
            production   VARCHAR NOT NULL,
            dataset      VARCHAR,
            passed       BOOLEAN NOT NULL,
            reasons      JSON NOT NULL,
            overall      JSON NOT NULL,
            report_path  VARCHAR NOT NULL,
            created_at   TIMESTAMPTZ NOT NULL
        )""")

def m220_teacher_calls(conn) -> None:
    # Every teacher call, for audit (training/labeling/teacher.py): what was asked, every sample,
    # the verifiers' verdicts and which sample became the answer.
    conn.execute("""
        CREATE TABLE teacher_calls (
            call_id            VARCHAR PRIMARY KEY,
            created_at         TIMESTAMPTZ NOT NULL,
            kind               VARCHAR NOT NULL,   -- local | openai
            model              VARCHAR,
            task_type          VARCHAR,
            prompt             JSON NOT NULL,      -- the messages (without few-shot examples)
            samples            JSON NOT NULL,
            verdicts           JSON NOT NULL,      -- [{passed, score, reasons}] per sample
            chosen             INTEGER,            -- index into samples; NULL when none
            answer             VARCHAR,            -- the chosen sample's final answer
            passed             BOOLEAN NOT NULL,
            prompt_tokens      INTEGER NOT NULL,
            completion_tokens  INTEGER NOT NULL,
            latency_ms         DOUBLE,
            error              VARCHAR             -- why the call failed, when it did
        )""")



def m212_refresh_runs(conn) -> None:
    # One row per flywheel turn (services/control/turn.py): its steps, where it stopped and why.
    conn.execute("""
        CREATE TABLE refresh_runs (
            run_id      VARCHAR PRIMARY KEY,
            status      VARCHAR NOT NULL,   -- running | finished | stopped | failed
            steps       JSON NOT NULL,
            dataset     VARCHAR,
            candidate   VARCHAR,
            passed      BOOLEAN,
            reason      VARCHAR,
            started_at  TIMESTAMPTZ NOT NULL,
            updated_at  TIMESTAMPTZ NOT NULL
        )""")


def m250_candidate_review(conn) -> None:
    # The review state of every candidate (training/curation/review.py): its latest landed
    # decision (streams' review_latest), else pending.
    conn.execute("""
        CREATE VIEW candidate_review AS
        SELECT c.candidate_id,
               CASE l.action WHEN 'approve' THEN 'approved' WHEN 'reject' THEN 'rejected'
                             WHEN 'edit' THEN 'edited' ELSE 'pending' END AS state,
               l.edited_response, l.reviewer, l.decided_at, l.reason, l.source AS decision_source
        FROM candidates c LEFT JOIN review_latest l ON l.candidate_id = c.candidate_id""")


def m205_candidate_vectors_any_width(conn) -> None:
    # m204 fixed the width at MiniLM's 384; the vectors are as wide as the embedder makes
    # them (training/curation/embed.py `Embedder.dim`), and a run compares only vectors of
    # its own width. Existing vectors keep their values.
    conn.execute("ALTER TABLE candidate_vectors ALTER vector TYPE FLOAT[]")


def m213_evaluation_source(conn) -> None:
    # Where an evaluation's result came from (issue #13): "job" (the control plane recorded the
    # report its own evaluation job wrote), "cli" (`flywheel eval` wrote it to the file with no
    # control plane running) or "api" (posted by an admin: recorded_by names the token).
    # Rows from before this migration were recorded by evaluation jobs.
    conn.execute("ALTER TABLE evaluations ADD COLUMN source VARCHAR DEFAULT 'job'")
    conn.execute("ALTER TABLE evaluations ADD COLUMN recorded_by VARCHAR")


def m214_candidate_user_trust(conn) -> None:
    # The rater trust of a candidate's user at curation (training.curation.raters.RaterReport.trust):
    # the auto rule approve_edits applies only above review.approve_edits_min_trust (issue #13).
    conn.execute("ALTER TABLE candidates ADD COLUMN user_trust DOUBLE")


def m215_candidate_tools(conn) -> None:
    # Tool calling (issue #12): the tools a candidate's request offered and its tool_choice, as
    # the interaction recorded them; its response and rejected_response hold the calls in the
    # Hermes text form (flywheel/domains/tool_calls.py). NULL: a request without tools.
    conn.execute("ALTER TABLE candidates ADD COLUMN tools JSON")
    conn.execute("ALTER TABLE candidates ADD COLUMN tool_choice JSON")


# New migrations go at the end: a database applies what it has not recorded, in this order.
MIGRATIONS = [m201_candidates, m202_curation_runs, m203_curation_watermarks, m204_candidate_vectors, m210_datasets,
              m211_evaluations, m212_refresh_runs, m220_teacher_calls, m250_candidate_review,
              m205_candidate_vectors_any_width, m213_evaluation_source, m214_candidate_user_trust,
              m215_candidate_tools]
