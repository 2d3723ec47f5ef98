"""bench/scaling.py's synthetic warehouse is faithful: copies of landed seed traffic, in the
real tables, that curation reads as that many times the seed's sessions and feedback
(no timing asserted)."""

from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import scaling  # noqa: E402
from streams.warehouse import connect  # noqa: E402
from training.curation.mine import mine, mining_window  # noqa: E402


def test_copies_of_the_seed_mine_like_the_seed_times_the_copies(tmp_path):
    args = Namespace(seed_sessions=30, seed=0, dir=tmp_path, memory_limit="1GB", threads=1)
    seed_path, n_seed, span, traffic = scaling.make_seed(args)
    with connect(seed_path) as conn:
        seed = mine(conn, mining_window(conn, 0))

    size = 3 * n_seed
    conn = connect(tmp_path / "w.duckdb")
    scaling.tune(conn, args)
    scaling.apply_migrations(conn, scaling.ALL)
    scaling.fill(conn, seed_path, n_seed, span, size)
    n_i, n_f, orphans = conn.execute(
        "SELECT (SELECT count(*) FROM interactions), (SELECT count(*) FROM feedback), "
        "(SELECT count(*) FROM feedback f ANTI JOIN interactions i USING (request_id))").fetchone()
    assert (n_i, n_f, orphans) == (size, 3 * len(traffic.feedback), 0)

    mined = mine(conn, mining_window(conn, 0))
    assert len(mined.candidates) == 3 * len(seed.candidates)
    assert mined.sessions == 3 * seed.sessions
    # each copy keeps the seed's texts and feedback; only ids and users are new
    by_text = sorted((c.response or "", c.feedback.thumbs_up, c.feedback.edits) for c in seed.candidates)
    assert sorted((c.response or "", c.feedback.thumbs_up, c.feedback.edits) for c in mined.candidates) == sorted(by_text * 3)
    assert len({c.user_id for c in mined.candidates}) == 3 * len({c.user_id for c in seed.candidates})

    stages = scaling.sql_stages(conn)
    assert stages["candidates"] == len(mined.candidates)
    assert stages["counted_feedback"] == conn.execute(
        f"SELECT count(*) FROM ({scaling.label_feedback_sql()})", [mined.window.end]).fetchone()[0]
    conn.close()


def test_a_truncated_copy_brings_only_the_feedback_of_its_interactions(tmp_path):
    args = Namespace(seed_sessions=20, seed=1, dir=tmp_path, memory_limit="1GB", threads=1)
    seed_path, n_seed, span, _ = scaling.make_seed(args)
    conn = connect(tmp_path / "w.duckdb")
    scaling.apply_migrations(conn, scaling.ALL)
    scaling.fill(conn, seed_path, n_seed, span, n_seed + n_seed // 2)
    n_i, orphans = conn.execute(
        "SELECT (SELECT count(*) FROM interactions), "
        "(SELECT count(*) FROM feedback f ANTI JOIN interactions i USING (request_id))").fetchone()
    assert (n_i, orphans) == (n_seed + n_seed // 2, 0)
    conn.close()


def test_growth_order_is_the_log_log_slope():
    rows = [{"size": 10 ** k, "a": 3.0 * 10 ** k, "b": 2.0 * 100 ** k} for k in (3, 4, 5)]
    assert scaling.growth(rows, "a") == 1.0
    assert scaling.growth(rows, "b") == 2.0
    assert scaling.growth(rows[:1], "a") is None
