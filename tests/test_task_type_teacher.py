"""Candidates the nearest-seeds classifier leaves `unknown` go to the teacher for a task
type when the teacher is an endpoint (here a stand-in OpenAI server: the model edge)."""

from __future__ import annotations

import json

from flywheel.settings import Settings
from flywheel.simulate.synthetic import synthetic_events
from services.control.migrations import ALL
from streams.landing import land_events
from streams.warehouse import apply_migrations, connect
from tests.conftest import free_port
from tests.openai_standin import StandIn
from training.chat_client import ChatClient
from training.curation.pipeline import curate
from training.curation.task_types import Taxonomy, teacher_labels


def _reply(messages, _i):
    request = messages[-1]["content"].rsplit("Request:", 1)[-1].lower()
    if "chart" in request or "json" in request or "dimensions" in request:
        return "data-viz/chart-config"
    if "summar" in request:
        return "`writing/summarize`."
    return "I am not sure"


def test_teacher_labels_accept_only_names_of_the_taxonomy():
    server = StandIn(_reply, free_port()).start()
    try:
        client = ChatClient(server.url, "teacher", retries=0, what="teacher")
        labels = teacher_labels(client, Taxonomy.load(), ["Summarize this memo for me", "a chart of sales", "hmm"])
        assert labels == ["writing/summarize", "data-viz/chart-config", None]
        shown = server.requests[0]["messages"][-1]["content"]
        assert "writing/summarize" in shown and "Summarize this memo" in shown
    finally:
        server.stop()


def test_curation_asks_the_teacher_for_unknown_task_types(tmp_path):
    server = StandIn(_reply, free_port()).start()
    try:
        settings = Settings(data_dir=str(tmp_path)).replace(
            curation={"watermark_lag_s": 0, "task_threshold": 0.99},  # almost nothing is sure: the teacher decides
            review={"auto_approve": False}, teacher={"kind": "openai", "base_url": server.url, "model": "teacher",
                                                     "retries": 0})
        interactions, feedback, _ = synthetic_events(60, seed=2)
        conn = connect(settings.db_path)
        apply_migrations(conn, ALL)
        land_events(conn, interactions, feedback)
        curate(conn, settings)
        rows = conn.execute("SELECT task_type, tags FROM candidates WHERE status = 'kept'").fetchall()
        taught = [t for t, tags in rows if "task-type:teacher" in json.loads(tags)]
        assert server.requests and taught
        assert set(taught) <= {"data-viz/chart-config", "writing/summarize"}
        # What the teacher could not name stays unknown (it answered "I am not sure").
        assert any(t == "unknown" for t, _ in rows)
        conn.close()
    finally:
        server.stop()
