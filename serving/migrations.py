"""Tables owned by serving/: the model registry and the routing history."""

from __future__ import annotations


def m101_model_versions(conn) -> None:
    conn.execute("""
        CREATE TABLE model_versions (
            version        VARCHAR PRIMARY KEY,  -- immutable name, also the adapter name in backends
            base_model     VARCHAR NOT NULL,
            adapter_path   VARCHAR,              -- PEFT folder under DATA_DIR/models; NULL for the base
            parent_version VARCHAR,
            dataset        VARCHAR,              -- dataset version that trained it (learning issue)
            training_run   VARCHAR,
            status         VARCHAR NOT NULL,     -- candidate | canary | production | retired | rolled_back
            notes          VARCHAR,
            created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
            updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")


def m102_routing_tables(conn) -> None:
    # Append-only: every routing change is a new revision, with why.
    conn.execute("""
        CREATE TABLE routing_tables (
            revision   BIGINT PRIMARY KEY,
            routes     JSON NOT NULL,
            reason     VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")


def m103_rollouts(conn) -> None:
    # The current rollout of each alias (its controller state); the decisions themselves
    # are deployment events, landed in `deployments`.
    conn.execute("""
        CREATE TABLE rollouts (
            alias      VARCHAR PRIMARY KEY,
            state      JSON NOT NULL,
            status     VARCHAR NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""")


MIGRATIONS = [m101_model_versions, m102_routing_tables, m103_rollouts]
