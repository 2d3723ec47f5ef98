"""Fixtures with real parts: the tansu broker, a DuckDB file, the small model, real HTTP.

One broker serves the session; each test gets its own topic prefix, consumer group, data
folder and ports, so tests never see each other's events. Tests that stop the broker
start their own (``own_broker``).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from flywheel.settings import Settings, load_settings
from services.gateway.auth import KeyStore
from streams.broker import EmbeddedBroker
from streams.topics import ensure_topics, topic_names
from streams.warehouse import connect

REPO = Path(__file__).resolve().parent.parent
# Tests are an edge: the model cache follows the settings (FLYWHEEL_MODEL__CACHE_DIR), shared across runs.
MODEL_CACHE = load_settings(None, env={k: v for k, v in os.environ.items() if k.startswith("FLYWHEEL_MODEL__")}).model_cache_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def broker():
    b = EmbeddedBroker(free_port()).start()
    yield b
    b.stop()


@pytest.fixture
def own_broker():
    """A broker of this test's own, which the test may stop and restart."""
    b = EmbeddedBroker(free_port()).start()
    yield b
    b.stop()


def make_settings(tmp_path: Path, bootstrap: str, **changes) -> Settings:
    tag = uuid.uuid4().hex[:8]
    base = Settings(data_dir=str(tmp_path / "data")).replace(
        kafka={"bootstrap": bootstrap, "topic_prefix": f"t{tag}.", "partitions": 2},
        landing={"group_id": f"landing-{tag}", "poll_ms": 100},
        stream={"group_id": f"metrics-{tag}"},
        # One test key drives all the load: per-key limits are off here, on in tests/test_rate_limit.py.
        gateway={"port": free_port(), "rate_limit_rps": 0, "max_concurrent_per_key": 0},
        control={"port": free_port()},
        model={"cache_dir": str(MODEL_CACHE)},
        privacy={"user_salt": "salt-of-the-tests"},  # an external broker needs one (streams/privacy.py)
    )
    return base.replace(**changes) if changes else base


@pytest.fixture
def settings(tmp_path, broker) -> Settings:
    s = make_settings(tmp_path, broker.bootstrap)
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    return s


@pytest.fixture(scope="session")
def model_dir():
    from serving.model_store import ensure_hf_model

    return ensure_hf_model(MODEL_CACHE)


@pytest.fixture(scope="session")
def local_backend(model_dir):
    """The real SmolLM2-135M-Instruct behind the continuous-batching backend, shared."""
    from serving.backends.local import LocalBackend

    backend = LocalBackend(model_dir, max_batch=16)
    yield backend
    backend.close()


class _Shared:
    """Wraps a session-wide backend so closing one gateway does not close it."""

    def __init__(self, inner):
        self._inner = inner
        self.name = inner.name

    def __getattr__(self, item):
        return getattr(self._inner, item)

    def close(self):
        pass


class RunningGateway:
    def __init__(self, settings: Settings, backend, keys: KeyStore, tokens: dict[str, str]):
        from services.gateway.app import create_app

        self.settings = settings
        self.tokens = tokens
        self.app = create_app(settings, backend=backend, keys=keys)
        self.server = make_server("127.0.0.1", settings.gateway.port, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.gateway.port}"

    @property
    def gw(self):
        return self.app.extensions["flywheel"]

    def client(self, role: str = "chat", **kw):
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.tokens[role], max_retries=0, **kw)

    def stop(self, drain_timeout: float = 10.0):
        self.server.shutdown()
        self.thread.join(5)
        self.gw.close(drain_timeout)


def _keys() -> tuple[KeyStore, dict[str, str]]:
    store = KeyStore([])
    return store, {role: store.create(role) for role in ("chat", "ingest", "admin")}


@pytest.fixture
def start_gateway():
    """Start gateways on demand: start_gateway(settings, backend)."""
    started: list[RunningGateway] = []
    keys, tokens = _keys()

    def start(settings: Settings, backend) -> RunningGateway:
        gw = RunningGateway(settings, _Shared(backend), keys, tokens)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        try:
            gw.stop()
        except Exception:  # noqa: BLE001 - already stopped by the test
            pass


@pytest.fixture
def scripted_gateway(settings, start_gateway):
    from serving.backends.scripted import ScriptedBackend

    return start_gateway(settings, ScriptedBackend())


@pytest.fixture
def model_gateway(settings, start_gateway, local_backend):
    return start_gateway(settings, local_backend)


@pytest.fixture
def control_plane(settings):
    from services.control.plane import ControlPlane

    plane = ControlPlane(settings, serve_api=False).start()
    yield plane
    plane.stop(drain=False)


def query(plane_or_path, sql: str, params=None):
    """Run a read query against a control plane's DuckDB (or a closed database file)."""
    if hasattr(plane_or_path, "reader"):
        with plane_or_path.reader() as cur:
            return cur.execute(sql, params or []).fetchall()
    with connect(plane_or_path, read_only=True) as conn:
        return conn.execute(sql, params or []).fetchall()


def count(plane, table: str, where: str = "true", params=None) -> int:
    return query(plane, f"SELECT count(*) FROM {table} WHERE {where}", params)[0][0]


CANDIDATES_T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def seed_candidates(plane, rows: list[dict]) -> list[str]:
    """Candidates as a curation run writes them (the columns later stages read), created
    one second apart from 2026-03-01; `rows` give what differs (task_type, label, response...)."""
    with plane.reader() as cur:
        for k, r in enumerate(rows):
            cid = r.get("candidate_id", f"cand{k:03d}")
            cur.execute(
                "INSERT INTO candidates (candidate_id, run_id, created_at, session_id, request_id, user_id, kind, turn, "
                "messages, prompt_text, response, response_source, feedback, label, label_confidence, task_type, tags, "
                "status, source_event_ids) VALUES (?, ?, ?, ?, ?, 'u', 'single', 1, ?, ?, ?, ?, '{}', ?, ?, ?, '[]', ?, '[]')",
                [cid, r.get("run_id", "run-1"), CANDIDATES_T0 + timedelta(seconds=k), f"s{k}", f"r{k}",
                 json.dumps([{"role": "user", "content": f"question {k}"}]), f"question {k}", r.get("response", f"answer {k}"),
                 r.get("response_source", "draft"), r.get("label", "unknown"), r.get("label_confidence", 0.5),
                 r.get("task_type", "chat/chitchat"), r.get("status", "kept")])
    return [r.get("candidate_id", f"cand{k:03d}") for k, r in enumerate(rows)]


def record_gate(plane, candidate: str, passed: bool = True, reasons: tuple[str, ...] = ("test gate",),
                folder: Path | None = None) -> str:
    """An evaluation of ``candidate`` as the control plane records its own evaluation job's
    report (source "job"): a rollout starts only for a candidate whose latest one passed."""
    from training.evaluation.evaluate import record_evaluation

    report = {"candidate": candidate, "production": "base", "dataset": None, "overall": {},
              "created_at": datetime.now(timezone.utc).isoformat(),
              "gate": {"passed": passed, "reasons": list(reasons)}}
    folder = folder or plane.settings.data_path / "evals" / f"{candidate}-vs-base-{uuid.uuid4().hex[:8]}"
    with plane.reader() as cur:
        return record_evaluation(cur, report, folder, source="job", recorded_by="test")


def operator_token(settings: Settings) -> str:
    """The local admin token the control plane's first start wrote (DATA_DIR/operator_token)."""
    return settings.operator_token_path.read_text().strip()


def operator_get(plane, url: str, path: str) -> tuple[int, str]:
    """GET ``url + path`` as the local admin operator: (status, body), errors included."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {operator_token(plane.settings)}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for_turn(plane, run_id: str, timeout: float) -> str:
    """Wait until the flywheel turn ``run_id`` has ended (and no turn runs); its status."""
    def status() -> str:
        rows = query(plane, "SELECT status FROM refresh_runs WHERE run_id = ?", [run_id])
        return rows[0][0] if rows else "running"

    wait_for(lambda: status() != "running" and not plane.refresh.running, timeout=timeout, interval=2,
             what=f"the flywheel turn {run_id}")
    return status()


def landed_warehouse(settings: Settings, interactions, feedback):
    """A migrated DuckDB file at ``settings.db_path`` with these events landed (open connection)."""
    from services.control.migrations import ALL
    from streams.landing import land_events
    from streams.warehouse import apply_migrations

    conn = connect(settings.db_path)
    apply_migrations(conn, ALL)
    land_events(conn, interactions, feedback)
    return conn
