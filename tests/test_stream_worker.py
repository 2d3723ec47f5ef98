"""Live metrics: the counting (pure) and the faust stream worker against the real broker,
landed by the real control plane. Worker restarts (SIGKILL after a commit, SIGTERM with
uncounted events) must neither lose nor double-count anything, and nothing here reads end
offsets (the local broker's are wrong)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from serving.rollout.windows import stream_version_window, version_window
from streams.live_metrics import (UNKNOWN, LiveMetrics, WindowFigures, figures_of, latency_bucket,
                                  quantile_from_buckets, read_windows, version_figures)
from streams.producer import EventProducer
from streams.schemas import Feedback, Interaction, new_id
from streams.stream_worker import ready_path
from tests.conftest import REPO, count, query, wait_for

T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=timezone.utc)


def interaction(version: str, at: datetime, total_ms: float = 100.0, status: str = "ok", alias: str = "chat") -> dict:
    rid = new_id("req_")
    ev = Interaction(event_id=new_id(), request_id=rid, session_id=new_id("s_"), created_at=at, model_alias=alias,
                     model_version=version, messages=[{"role": "user", "content": "hi"}],
                     drafts=[{"index": 0, "content": "hello"}] if status == "ok" else [],
                     status=status, error={"type": "backend_error", "message": "down"} if status == "error" else None,
                     timing={"total_ms": total_ms})
    return ev.model_dump(mode="json")


def feedback(request_id: str, at: datetime, kind: str = "thumb", value: int | None = 1) -> dict:
    return Feedback(event_id=new_id(), request_id=request_id, kind=kind, value=value, created_at=at).model_dump(mode="json")


# -- the counting ---------------------------------------------------------------------
def test_histogram_percentiles_are_within_five_percent():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=5.0, sigma=0.8, size=5000)
    buckets: dict[int, int] = {}
    for v in values:
        buckets[latency_bucket(v)] = buckets.get(latency_bucket(v), 0) + 1
    for q in (0.5, 0.95, 0.99):
        exact = float(np.quantile(values, q))
        assert abs(quantile_from_buckets(buckets, q) - exact) / exact < 0.05, q
    assert quantile_from_buckets({}, 0.5) is None


def test_windows_split_by_version_and_time_and_deltas_add_up():
    lm = LiveMetrics(window_s=60, worker="w")
    a = interaction("base", T0 + timedelta(seconds=5), total_ms=100)
    b = interaction("base", T0 + timedelta(seconds=65), total_ms=300, status="error")
    c = interaction("v2", T0 + timedelta(seconds=10), total_ms=200)
    for rec in (a, b, c):
        lm.add_interaction(rec, now=0)
    lm.add_feedback(feedback(a["request_id"], T0 + timedelta(seconds=20)), now=0)
    lm.add_feedback(feedback(c["request_id"], T0 + timedelta(seconds=30), "rating", 2), now=0)
    first = lm.flush(now=1)
    assert {(m.model_version, m.window_start) for m in first} == {
        ("base", T0), ("base", T0 + timedelta(seconds=60)), ("v2", T0)}
    by = {(m.model_version, m.window_start): m for m in first}
    assert by[("base", T0)].requests == 1 and by[("base", T0)].thumbs_up == 1
    assert by[("base", T0 + timedelta(seconds=60))].errors == 1
    assert by[("v2", T0)].ratings == [0, 1, 0, 0, 0]
    assert lm.flush(now=2) == []  # nothing new, nothing published

    # A late event for an already published window is just another delta; merged on read.
    lm.add_feedback(feedback(a["request_id"], T0 + timedelta(seconds=50), "thumb", -1), now=3)
    late = lm.flush(now=3)
    assert [(m.model_version, m.window_start, m.thumbs_down) for m in late] == [("base", T0, 1)]
    rows = [m.model_dump() for m in first + late if m.model_version == "base" and m.window_start == T0]
    merged = figures_of(rows)
    assert (merged.requests, merged.thumbs_up, merged.thumbs_down) == (1, 1, 1)
    assert len({m.event_id for m in first + late}) == len(first + late)


def test_feedback_waits_for_its_interaction_then_counts_as_unknown():
    lm = LiveMetrics(window_s=60, join_wait_s=10, worker="w")
    early = interaction("v2", T0)
    lm.add_feedback(feedback(early["request_id"], T0 + timedelta(seconds=1)), now=0)
    assert lm.flush(now=1) == [] and lm.pending_feedback == 1  # waiting, not dropped
    lm.add_interaction(early, now=2)
    out = lm.flush(now=2)
    assert [(m.model_version, m.requests, m.thumbs_up) for m in out] == [("v2", 1, 1)]

    lm.add_feedback(feedback("req_never_seen", T0), now=3)
    assert lm.flush(now=5) == []
    out = lm.flush(now=14)
    assert [(m.alias, m.model_version, m.thumbs_up) for m in out] == [(UNKNOWN, UNKNOWN, 1)]
    assert lm.pending_feedback == 0 and lm.counted["feedback_unknown"] == 1


def test_forgets_requests_after_their_ttl_and_beyond_the_bound():
    lm = LiveMetrics(window_s=60, request_ttl_s=100, max_requests=2, join_wait_s=0, worker="w")
    recs = [interaction("base", T0) for _ in range(3)]
    for i, rec in enumerate(recs):
        lm.add_interaction(rec, now=i)
    lm.flush(now=3)
    lm.add_feedback(feedback(recs[0]["request_id"], T0), now=3)  # evicted by the bound
    lm.add_feedback(feedback(recs[2]["request_id"], T0), now=3)
    out = {m.model_version: m.thumbs_up for m in lm.flush(now=3)}
    assert out == {"base": 1, UNKNOWN: 1}
    lm.flush(now=500)  # past the TTL: forgotten
    lm.add_feedback(feedback(recs[2]["request_id"], T0), now=500)
    assert {m.model_version for m in lm.flush(now=500)} == {UNKNOWN}


def test_summary_figures():
    fig = WindowFigures()
    for ms in (100, 100, 100, 1000):
        fig.requests += 1
        fig.latency_sum_ms += ms
        fig.latency_buckets[latency_bucket(ms)] += 1
    fig.ratings = [0, 0, 1, 0, 1]
    s = fig.summary()
    assert s["latency_p50_ms"] == pytest.approx(100, rel=0.05)
    assert s["latency_p95_ms"] == pytest.approx(np.quantile([100, 100, 100, 1000], 0.95), rel=0.05)
    assert s["mean_rating"] == 4.0 and s["ratings"] == 2


# -- the worker process ---------------------------------------------------------------
def worker_env(s, **extra) -> dict:
    return {**os.environ, "FLYWHEEL_DATA_DIR": str(s.data_path), "FLYWHEEL_KAFKA__BOOTSTRAP": s.bootstrap,
            "FLYWHEEL_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix, "FLYWHEEL_KAFKA__PARTITIONS": str(s.kafka.partitions),
            "FLYWHEEL_STREAM__GROUP_ID": s.stream.group_id, "FLYWHEEL_STREAM__FLUSH_S": "1",
            "FLYWHEEL_STREAM__SESSION_TIMEOUT_S": "6", **extra}


class Worker:
    def __init__(self, s, **extra):
        self.s = s
        ready_path(s).unlink(missing_ok=True)
        self.log = open(s.data_path / f"worker-{len(list(s.data_path.glob('worker-*.log')))}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "flywheel", "stream-worker"], cwd=REPO,
                                     env=worker_env(s, **extra), stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: ready_path(s).exists() or self.proc.poll() is not None, timeout=90,
                 what="the stream worker to get its partitions")
        assert self.proc.poll() is None, open(self.log.name).read()[-3000:]

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()


@pytest.fixture
def workers():
    started: list[Worker] = []

    def start(s, **extra) -> Worker:
        w = Worker(s, **extra)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop(signal.SIGKILL)


def send_traffic(producer: EventProducer, s, rng: random.Random, n: int, at: datetime) -> None:
    for i in range(n):
        version = "candidate" if rng.random() < 0.3 else "base"
        rec = interaction(version, at + timedelta(seconds=i % 50), total_ms=rng.uniform(50, 500),
                          status="error" if rng.random() < 0.1 else "ok")
        producer.emit(s.topic("interactions"), rec["session_id"], json.dumps(rec).encode())
        if rng.random() < 0.7:
            fb = feedback(rec["request_id"], at + timedelta(seconds=i % 50), "thumb", rng.choice([1, -1]))
            producer.emit(s.topic("feedback"), fb["request_id"], json.dumps(fb).encode())
    assert producer.flush(timeout=30)


def truth_from_landed(plane) -> dict:
    """What the landed interactions and feedback say, per version (the reference)."""
    rows = query(plane, """
        SELECT i.model_version, count(DISTINCT i.event_id), count(DISTINCT i.event_id) FILTER (WHERE i.status = 'error'),
               (SELECT count(*) FROM feedback f JOIN interactions j USING (request_id)
                 WHERE j.model_version = i.model_version AND f.kind = 'thumb' AND f.value = 1),
               (SELECT count(*) FROM feedback f JOIN interactions j USING (request_id)
                 WHERE j.model_version = i.model_version AND f.kind = 'thumb' AND f.value = -1)
        FROM interactions i GROUP BY 1""")
    return {v: (n, e, up, down) for v, n, e, up, down in rows}


def streamed(plane) -> dict:
    with plane.reader() as cur:
        out = {}
        for version in ("base", "candidate"):
            f = version_figures(cur, version, T0 - timedelta(days=1), T0 + timedelta(days=1))
            out[version] = (f.requests, f.errors, f.thumbs_up, f.thumbs_down)
        return out


def test_worker_counts_land_and_survive_a_kill_and_a_restart(settings, control_plane, workers, tmp_path):
    producer = EventProducer(settings.bootstrap, tmp_path / "spool", client_id="test")
    rng = random.Random(7)
    try:
        first = workers(settings)
        send_traffic(producer, settings, rng, 120, T0)
        wait_for(lambda: streamed(control_plane) == truth_from_landed(control_plane) and count(control_plane, "interactions") == 120,
                 timeout=60, what="the first batch's figures to land")
        # Let the commit that follows the publish go through, then kill without warning.
        wait_for(lambda: "published" in open(first.log.name).read(), timeout=10)
        time.sleep(3)
        first.stop(signal.SIGKILL)

        send_traffic(producer, settings, rng, 80, T0)  # while no worker runs
        second = workers(settings)
        wait_for(lambda: count(control_plane, "interactions") == 200 and
                 streamed(control_plane) == truth_from_landed(control_plane),
                 timeout=60, what="the figures after the restart to match the landed events")
        truth = truth_from_landed(control_plane)
        assert sum(n for n, *_ in truth.values()) == 200 and set(truth) == {"base", "candidate"}
        second.stop(signal.SIGTERM)
        windows = [w for w in read_windows(control_plane.conn.cursor()) if w["model_version"] == "base"]
        assert {w["window_s"] for w in windows} == {60.0}
        assert all(w["latency_p95_ms"] >= w["latency_p50_ms"] > 0 for w in windows)
        # The rollout analysis reads the same figures from either source (rollout.source).
        with control_plane.reader() as cur:
            for version in ("base", "candidate"):
                landed = version_window(cur, version, T0 - timedelta(days=1), T0 + timedelta(days=1))
                live = stream_version_window(cur, version, T0 - timedelta(days=1), T0 + timedelta(days=1))
                assert (live.requests, live.errors, live.thumbs_up, live.thumbs_down) == \
                    (landed.requests, landed.errors, landed.thumbs_up, landed.thumbs_down)
                assert live.latency_p95_ms == pytest.approx(landed.latency_p95_ms, rel=0.06)
    finally:
        producer.close(drain_timeout=5)


def test_sigterm_publishes_what_was_counted_and_a_restart_does_not_count_it_again(settings, control_plane, workers,
                                                                                   tmp_path):
    producer = EventProducer(settings.bootstrap, tmp_path / "spool", client_id="test")
    rng = random.Random(11)
    try:
        # The timer never fires in this run: only the shutdown flush can publish.
        first = workers(settings, FLYWHEEL_STREAM__FLUSH_S="3600")
        send_traffic(producer, settings, rng, 60, T0)
        wait_for(lambda: count(control_plane, "interactions") == 60, timeout=30, what="landing")
        time.sleep(3)  # the worker reads the same topics
        assert first.stop(signal.SIGTERM) == 0
        wait_for(lambda: count(control_plane, "live_metrics") > 0, timeout=30, what="the shutdown flush to land")
        workers(settings)
        send_traffic(producer, settings, rng, 20, T0)
        wait_for(lambda: count(control_plane, "interactions") == 80 and
                 streamed(control_plane) == truth_from_landed(control_plane),
                 timeout=60, what="exact figures after the restart")
        workers_seen = query(control_plane, "SELECT count(DISTINCT worker) FROM live_metrics")[0][0]
        assert workers_seen == 2
    finally:
        producer.close(drain_timeout=5)


def test_invalid_records_in_a_batch_are_skipped_and_the_rest_of_the_batch_counts(settings, control_plane, workers,
                                                                                 tmp_path):
    producer = EventProducer(settings.bootstrap, tmp_path / "spool", client_id="test")
    rng = random.Random(5)
    try:
        # Everything is in the topics before the worker starts, so it reads them in few batches.
        send_traffic(producer, settings, rng, 30, T0)
        producer.emit(settings.topic("interactions"), "s_bad", b"{not json")
        producer.emit(settings.topic("feedback"), "req_bad", json.dumps({"request_id": "req_bad"}).encode())  # no kind
        send_traffic(producer, settings, rng, 30, T0)
        worker = workers(settings)
        wait_for(lambda: count(control_plane, "interactions") == 60 and
                 streamed(control_plane) == truth_from_landed(control_plane),
                 timeout=60, what="the valid events' figures to land")
        wait_for(lambda: "2 invalid skipped" in open(worker.log.name).read(), timeout=10, what="the skips logged")
    finally:
        producer.close(drain_timeout=5)
