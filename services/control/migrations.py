"""The one ordered list of migrations: each package's own list, in import order, then the
control plane's own tables."""

from serving.migrations import MIGRATIONS as SERVING
from streams.migrations import MIGRATIONS as STREAMS
from training.migrations import MIGRATIONS as TRAINING


def m301_audit_log(conn) -> None:
    # Every state change made through the control plane (services/control/audit.py): who
    # (the operator token's id, name and role, and how it came: bearer token, console
    # session, the plane's own jobs), what (method, path, endpoint, a summary of the body,
    # the answer's status), when. Explicit actions (a rollout that overrides the gate) add
    # their own rows.
    conn.execute("""
        CREATE TABLE audit_log (
            audit_id       VARCHAR PRIMARY KEY,
            created_at     TIMESTAMPTZ NOT NULL,
            operator_id    VARCHAR,
            operator_name  VARCHAR,
            role           VARCHAR,
            via            VARCHAR,            -- token | session | login | job | process
            action         VARCHAR NOT NULL,   -- the endpoint (e.g. set_routing) or a named action
            method         VARCHAR,
            path           VARCHAR,
            target         VARCHAR,
            status         INTEGER,
            detail         VARCHAR             -- JSON summary of the request body, capped
        )""")


#: The control plane's own tables; new ones go at the end.
CONTROL = [m301_audit_log]

ALL = [*STREAMS, *SERVING, *TRAINING, *CONTROL]
