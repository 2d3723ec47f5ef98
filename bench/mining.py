"""Mining and cleaning throughput at 10k / 30k / 100k prompts, against reading the same
landed rows, in the same run.

For each size: synthetic traffic (`flywheel.simulate.synthetic`, no model) is landed with
the control plane's `Lander` into a fresh DuckDB file, then
- baseline: fetch every landed interaction and feedback row into Python (what any miner
  has to read at least);
- mining: `training.curation.mine.mine` (sessions assembled, regenerations collapsed, best answer,
  feedback aggregated, lineage) + boilerplate removal (`focus_texts`);
- cleaning: `training.curation.clean.clean` (rules, language, robustness flags);
- raters: rater reliability and cleaned labels over all feedback (`training.curation.raters`).
Embedding, dedup and selection are `bench/curation.py`'s.

Prints one JSON line; `mine_clean_vs_read` is the cost of mining + cleaning in units of
the baseline read (no target set: the issue sets none for these stages).
    python bench/mining.py [--sizes 10000,30000,100000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.settings import Settings  # noqa: E402
from flywheel.simulate.synthetic import synthetic_events  # noqa: E402
from services.control.migrations import ALL  # noqa: E402
from streams.landing import land_events  # noqa: E402
from streams.warehouse import apply_migrations, connect  # noqa: E402
from training.curation.clean import CleanRules, clean  # noqa: E402
from training.curation.pipeline import _label, _prompt_texts  # noqa: E402
from training.curation.mine import mine, mining_window  # noqa: E402



def one(prompts: int, seed: int, tmp: Path) -> dict:
    sessions = max(1, int(prompts / 1.42))  # ~1.42 requests per simulated session
    t = time.perf_counter()
    interactions, feedback, _ = synthetic_events(sessions, seed=seed)
    synth_s = time.perf_counter() - t
    conn = connect(tmp / f"mining-{prompts}.duckdb")
    apply_migrations(conn, ALL)
    land_events(conn, interactions, feedback)

    t = time.perf_counter()
    conn.execute("SELECT * FROM interactions").fetchall()
    conn.execute("SELECT * FROM feedback").fetchall()
    read_s = time.perf_counter() - t

    stages = time_stages(conn)
    conn.close()
    return {
        "prompts": len(interactions), "feedback": len(feedback), "candidates": stages["candidates"],
        "synthetic_s": round(synth_s, 2), "baseline_read_s": round(read_s, 2), "mine_s": round(stages["mine_s"], 2),
        "clean_s": round(stages["clean_s"], 2), "raters_s": round(stages["raters_s"], 2),
        "mine_clean_vs_read": round((stages["mine_s"] + stages["clean_s"]) / read_s, 2),
        "synthetic_prompts_per_s": round(len(interactions) / synth_s),
    }


def time_stages(conn) -> dict:
    """Seconds (wall and CPU) of mining (SQL + candidates in Python + boilerplate removal),
    cleaning and raters over everything landed in `conn`, and the number of candidates
    (bench/scaling.py calls this too)."""
    figures: dict = {}

    def lap(stage: str, wall: float, cpu: float) -> None:
        figures[f"{stage}_s"] = time.perf_counter() - wall
        figures[f"{stage}_cpu_s"] = time.process_time() - cpu  # all threads: steadier on a shared machine

    t, c = time.perf_counter(), time.process_time()
    mined = mine(conn, mining_window(conn, 0))
    _prompt_texts(mined.candidates)
    lap("mine", t, c)
    t, c = time.perf_counter(), time.process_time()
    clean(mined.candidates, CleanRules())
    lap("clean", t, c)
    t, c = time.perf_counter(), time.process_time()
    _label(conn, mined.candidates, mined.window.end, Settings().curation)
    lap("raters", t, c)
    return {"candidates": len(mined.candidates), **figures}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,30000,100000", help="Prompt counts, comma-separated.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        runs = [one(int(n), args.seed, Path(d)) for n in args.sizes.split(",")]
    print(json.dumps({"bench": "mining", "runs": runs}))


if __name__ == "__main__":
    main()
