"""How cost grows with landed traffic: landing rate, DuckDB file size and the curation's
stages at 10^5 .. 10^7 interactions, one curation run, and the growth order of each.

The warehouse: a seed of `flywheel.simulate.synthetic` traffic (sessions, regenerations,
feedback of every kind, the ~470-token chart prompt, paraphrased repeats) is landed through
the real landing path (`streams.landing.land_events`) into a seed file; each size is a
fresh warehouse (the project's migrations) filled in DuckDB SQL with copies of the seed's
rows, new event, request, session and user ids per copy (each copy is a new population of
users, so users grow with traffic) and shifted timestamps. Text lengths, sessions and the
feedback mix are the landed ones; prompt texts repeat across copies, so the share of exact
duplicates rises with the size (the run prints the distinct prompts).

For each size N (`--sizes`, landed interactions; feedback comes with them, ~1.27 per
interaction):
- the file's size after CHECKPOINT, and the seconds the fill took;
- SQL stages: mining's assembly query (`training.curation.mine`) into a temporary table,
  and the raters' feedback query (`pipeline.label_feedback_sql`);
- Python stages, for N up to `--python-max`: mining as a curation run does it (the query,
  the candidates as Python objects, boilerplate removal), cleaning and raters
  (`bench/mining.py`'s `time_stages`), with the memory they grew; above it they are
  projected from the fitted growth (a candidate held in Python costs kilobytes, the
  reason a run of 10^7 does not fit this machine);
- landing: a fixed batch (`--batch` events, the seed's interaction/feedback mix, new ids)
  landed with `Lander.land` (validation + the landing's SQL) in batches of
  `landing.batch_max` into the warehouse holding N rows, against the same batch landed into
  an empty warehouse at the start and the end of the run (the baseline, after a warm-up
  batch): `landing_vs_empty` is the ratio, with the CPU µs per event beside it.
Then one curation run (`training.curation.pipeline.curate`, full, the real stages) over
the `--curate` warehouse. Its embedding is projected: the MiniLM encoder embeds each
distinct text once (a measured slice) and repeats reuse the vector; the projected embed
time is every text at the measured rate, as the pipeline embeds them all.

Stages are timed in wall and CPU seconds (all threads of the process: steadier on a shared
machine). Growth order: the slope of log(CPU seconds) on log(N) over the measured sizes
(1: linear); sizes of `--project` beyond them are extrapolated with it.
Plots: docs/images/scaling-stages.png and scaling-landing.png.
    python bench/scaling.py [--sizes 1e5,1e6,1e7] [--batch 50000] [--curate 1e5] [--python-max 3e5]
    python bench/scaling.py --replot LINES   # summary and plots from an interrupted run's printed lines
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _stack import emit  # noqa: E402
from mining import time_stages  # noqa: E402

from flywheel.settings import Settings  # noqa: E402
from flywheel.simulate.synthetic import synthetic_events  # noqa: E402
from services.control.migrations import ALL  # noqa: E402
from streams.landing import Lander, Record, land_events  # noqa: E402
from streams.warehouse import apply_migrations, connect  # noqa: E402
from training.curation.mine import _MINE_SQL  # noqa: E402
from training.curation.pipeline import curate, label_feedback_sql  # noqa: E402

IMAGES = REPO / "docs" / "images"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def log(msg: str) -> None:
    print(f"[scaling {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_gb() -> float:
    """The process's peak resident memory so far, GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def tune(conn, args) -> None:
    conn.execute(f"SET memory_limit = '{args.memory_limit}'")
    conn.execute(f"SET threads = {args.threads}")
    conn.execute(f"SET temp_directory = '{args.dir / 'spill'}'")
    conn.execute("SET enable_progress_bar = false")


# ----------------------------------------------------------------------------- the warehouse


def make_seed(args):
    """Land `--seed-sessions` of synthetic traffic through the landing path into seed.duckdb,
    with each interaction's position (`seq`) for the copies; returns the events too (the
    landing batch is made from them)."""
    t = time.perf_counter()
    traffic = synthetic_events(args.seed_sessions, seed=args.seed, run_tag="seed")
    path = args.dir / "seed.duckdb"
    conn = connect(path)
    tune(conn, args)
    apply_migrations(conn, ALL)
    land_events(conn, traffic.interactions, traffic.feedback)
    conn.execute("CREATE TABLE seed_i AS SELECT row_number() OVER (ORDER BY created_at, event_id) - 1 AS seq, * "
                 "FROM interactions")
    conn.execute("CREATE TABLE seed_f AS SELECT i.seq AS iseq, f.* FROM feedback f "
                 "LEFT JOIN seed_i i USING (request_id)")
    n, span = conn.execute("SELECT count(*), epoch(max(created_at) - min(created_at)) + 1 FROM seed_i").fetchone()
    conn.close()
    log(f"seed: {n:,} interactions, {len(traffic.feedback):,} feedback in {time.perf_counter() - t:.1f} s")
    return path, n, span, traffic


_COPY = """
INSERT INTO {table} BY NAME
SELECT * EXCLUDE ({seq}, r) REPLACE (
    event_id || '~' || r AS event_id, request_id || '~' || r AS request_id,
    session_id || '~' || r AS session_id, user_id || '~' || r AS user_id,
    created_at + to_seconds(r * $span) AS created_at)
FROM seed.{source}, range($r0, $r1) t(r)
WHERE r * $n + coalesce({seq}, 0) < $limit
"""


def fill(conn, seed: Path, n_seed: int, span: float, size: int) -> None:
    """`size` interactions (and their feedback): copies of the seed with new ids, ~1M rows a statement."""
    conn.execute(f"ATTACH '{seed}' AS seed (READ_ONLY)")
    copies = math.ceil(size / n_seed)
    step = max(1, 1_000_000 // n_seed)
    for r0 in range(0, copies, step):
        params = {"span": span, "r0": r0, "r1": min(copies, r0 + step), "n": n_seed, "limit": size}
        conn.execute(_COPY.format(table="interactions", source="seed_i", seq="seq"), params)
        conn.execute(_COPY.format(table="feedback", source="seed_f", seq="iseq"), params)
        if copies > step:
            log(f"  filled {min(size, (r0 + step) * n_seed):,} of {size:,}")
    conn.execute("DETACH seed")


def file_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in (path, Path(f"{path}.wal")) if p.exists()) / 1e9


# ----------------------------------------------------------------------------- measurements


def landing_batch(traffic, events: int, tag: str) -> list[Record]:
    """`events` records in the seed's mix (interactions, then the feedback on them), new ids."""
    per_request: dict[str, list] = {}
    for f in traffic.feedback:
        per_request.setdefault(f.request_id, []).append(f)
    records: list[Record] = []
    k = 0
    while len(records) < events:
        for i in traffic.interactions:
            new = {"event_id": f"{i.event_id}~{tag}{k}", "request_id": f"{i.request_id}~{tag}{k}",
                   "session_id": f"{i.session_id}~{tag}{k}"}
            records.append(Record("i", 0, len(records), new["session_id"].encode(),
                                  i.model_copy(update=new).model_dump_json().encode()))
            for f in per_request.get(i.request_id, ()):
                fb = f.model_copy(update={"event_id": f"{f.event_id}~{tag}{k}", "request_id": new["request_id"]})
                records.append(Record("f", 0, len(records), new["request_id"].encode(), fb.model_dump_json().encode()))
            if len(records) >= events:
                break
        k += 1
    return records[:events]


def land_rate(conn, records: list[Record], batch: int) -> tuple[float, float]:
    """Events/s of `Lander.land` (validation + the landing's INSERTs) over `records`, and
    CPU µs per event (all threads of this process)."""
    lander = Lander(conn, {"interactions": "i", "feedback": "f", "dlq": "d"})
    t, c = time.perf_counter(), time.process_time()
    for i in range(0, len(records), batch):
        lander.land(records[i:i + batch])
    return len(records) / (time.perf_counter() - t), (time.process_time() - c) / len(records) * 1e6


def empty_rate(args, traffic, tag: str) -> tuple[float, float]:
    """The baseline: the landing batch into a fresh, empty warehouse (after a warm-up batch)."""
    path = args.dir / f"empty-{tag}.duckdb"
    conn = connect(path)
    tune(conn, args)
    apply_migrations(conn, ALL)
    batch = Settings().landing.batch_max
    land_rate(conn, landing_batch(traffic, batch, f"{tag}w"), batch)  # warm-up: first-call costs out of the clock
    conn.execute("DELETE FROM interactions; DELETE FROM feedback; CHECKPOINT")
    rate, cpu_us = land_rate(conn, landing_batch(traffic, args.batch, tag), batch)
    conn.close()
    path.unlink()
    return rate, cpu_us


def sql_stages(conn) -> dict:
    """Seconds of the curation's two big queries over everything landed, results materialised
    in DuckDB (a temporary table), so no Python object is built."""
    params = {"start": EPOCH, "end": datetime.now(timezone.utc)}
    t, c = time.perf_counter(), time.process_time()
    conn.execute(f"CREATE TEMP TABLE _mined AS {_MINE_SQL}", params)
    mine_sql_s, mine_sql_cpu_s = time.perf_counter() - t, time.process_time() - c
    candidates = conn.execute("SELECT count(*) FROM _mined").fetchone()[0]
    conn.execute("DROP TABLE _mined")
    t, c = time.perf_counter(), time.process_time()
    conn.execute(f"CREATE TEMP TABLE _rated AS {label_feedback_sql()}", [params["end"]])
    raters_sql_s, raters_sql_cpu_s = time.perf_counter() - t, time.process_time() - c
    rated = conn.execute("SELECT count(*) FROM _rated").fetchone()[0]
    conn.execute("DROP TABLE _rated")
    return {"mine_sql_s": mine_sql_s, "raters_sql_s": raters_sql_s, "mine_sql_cpu_s": mine_sql_cpu_s,
            "raters_sql_cpu_s": raters_sql_cpu_s, "candidates": candidates,
            "counted_feedback": rated}


def one_size(size: int, args, seed, records_for, curate_size: int) -> tuple[dict, dict | None]:
    seed_path, n_seed, span, _ = seed
    path = args.dir / f"warehouse-{size}.duckdb"
    conn = connect(path)
    tune(conn, args)
    apply_migrations(conn, ALL)
    t = time.perf_counter()
    fill(conn, seed_path, n_seed, span, size)
    conn.execute("CHECKPOINT")
    fill_s = time.perf_counter() - t
    rows, feedback, prompts = conn.execute(
        "SELECT (SELECT count(*) FROM interactions), (SELECT count(*) FROM feedback), "
        "(SELECT count(DISTINCT messages) FROM interactions)").fetchone()
    row = {"size": size, "interactions": rows, "feedback": feedback, "distinct_messages": prompts,
           "fill_s": round(fill_s, 1), "file_gb": round(file_gb(path), 3)}
    log(f"{size:,}: filled in {fill_s:.0f} s, {row['file_gb']} GB")

    row.update({k: round(v, 2) if isinstance(v, float) else v for k, v in sql_stages(conn).items()})
    log(f"{size:,}: mining SQL {row['mine_sql_s']} s, raters SQL {row['raters_sql_s']} s")
    if size <= args.python_max:
        before = peak_rss_gb()
        stages = time_stages(conn)
        row.update({f"py_{k}": round(v, 2) for k, v in stages.items() if k != "candidates"})
        row["py_peak_rss_gb"] = round(peak_rss_gb(), 2)
        row["py_peak_rss_before_gb"] = round(before, 2)
        log(f"{size:,}: mine {row['py_mine_s']} s, clean {row['py_clean_s']} s, raters {row['py_raters_s']} s "
            f"(Python; peak RSS {before:.2f} -> {row['py_peak_rss_gb']} GB)")
    curation = None
    if size == curate_size:
        log(f"curation run over {size:,} interactions")
        curation = curation_run(conn, args)
        log(f"curation: {curation}")

    rate, cpu_us = land_rate(conn, records_for(size), Settings().landing.batch_max)
    row["landing_events_per_s"] = round(rate)
    row["landing_cpu_us_per_event"] = round(cpu_us, 1)
    log(f"{size:,}: landed {args.batch:,} events at {rate:,.0f}/s")
    conn.close()
    if not args.keep:
        path.unlink(missing_ok=True)
        Path(f"{path}.wal").unlink(missing_ok=True)
    return row, curation


class MeasuredEmbedder:
    """The real MiniLM encoder, each distinct text embedded once (the measured slice);
    repeats reuse its vector. `rate` is the measured texts per second."""

    def __init__(self):
        from training.curation.embed import Embedder

        self.inner = Embedder.shared()
        self.dim = self.inner.dim
        self.cache: dict[str, np.ndarray] = {}
        self.seconds = 0.0
        self.encoded = 0
        self.asked = 0

    def encode(self, texts, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        texts = list(texts)
        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:
            t = time.perf_counter()
            for text, vector in zip(new, self.inner.encode(new, batch_size=batch_size)):
                self.cache[text] = vector
            self.seconds += time.perf_counter() - t
            self.encoded += len(new)
        self.asked += len(texts)
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    @property
    def rate(self) -> float:
        return self.encoded / self.seconds


def curation_run(conn, args) -> dict:
    """One full curation run over the warehouse of `conn`, embedding projected (see the module docstring)."""
    import torch

    torch.set_num_threads(1)  # one thread embeds fastest on a shared 2-core machine (bench/curation.py)
    embedder = MeasuredEmbedder()
    embedder.inner.encode(["warm up"] * 64)
    settings = Settings(data_dir=str(args.dir / "data"))
    before = peak_rss_gb()
    t = time.perf_counter()
    result = curate(conn, settings, full=True, embedder=embedder, emit=lambda *a, **k: None,
                    progress=lambda stage, done, total: log(f"curate: {stage} {done:,}/{total:,}") if done == 0 else None)
    total_s = time.perf_counter() - t
    timings = result.funnel["timings_s"]
    texts = len(result.candidates)
    projected_embed_s = texts / embedder.rate
    return {"prompts": texts, "kept": len(result.kept), "stage_s": timings, "measured_total_s": round(total_s, 1),
            "embed_measured_texts": embedder.encoded, "embed_measured_s": round(embedder.seconds, 1),
            "embed_texts_per_s": round(embedder.rate, 1), "embed_projected_s": round(projected_embed_s),
            "projected_total_s": round(total_s - timings.get("embed", 0.0) + projected_embed_s),
            "peak_rss_before_gb": round(before, 2), "peak_rss_gb": round(peak_rss_gb(), 2)}


# ----------------------------------------------------------------------------- growth and plots

#: The stages plotted and fitted, by their wall-seconds key; CPU seconds (`*_cpu_s`, all
#: threads of the process, steadier than wall time on a shared machine) are used where the rows have them.
STAGES = {"mine_sql_s": "mining SQL", "raters_sql_s": "raters SQL",
          "py_mine_s": "mining (SQL + candidates in Python)", "py_clean_s": "cleaning (Python)",
          "py_raters_s": "raters (SQL + Python)"}


def stage_keys(rows: list[dict]) -> dict[str, str]:
    """Key -> label of the figures to fit and plot: CPU seconds when measured, else wall."""
    cpu = any("mine_sql_cpu_s" in r for r in rows)
    return {(k[:-2] + "_cpu_s" if cpu else k): v for k, v in STAGES.items()}


def growth(rows: list[dict], key: str) -> float | None:
    """Slope of log(value) on log(size): the stage's growth order."""
    pts = [(r["size"], r[key]) for r in rows if r.get(key) and r[key] > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return round(float(np.polyfit(x, y, 1)[0]), 2)


def project(rows: list[dict], key: str, size: int, order: float) -> float:
    last = max((r for r in rows if r.get(key)), key=lambda r: r["size"])
    return last[key] * (size / last["size"]) ** order


def plot(rows: list[dict], orders: dict, baseline: float, projected: dict, stages: dict[str, str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMAGES.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for key, label in stages.items():
        pts = [(r["size"], r[key]) for r in rows if r.get(key)]
        if not pts:
            continue
        line = ax.plot(*zip(*pts), "o-", label=f"{label} (order {orders.get(key)})")[0]
        for size, value in projected.get(key, {}).items():
            ax.plot([pts[-1][0], size], [pts[-1][1], value], ":", color=line.get_color())
            ax.plot([size], [value], "o", mfc="none", color=line.get_color())
    unit = "CPU seconds" if any("_cpu_" in k for k in stages) else "seconds (wall)"
    ax.set(xscale="log", yscale="log", xlabel="landed interactions", ylabel=unit,
           title="Curation stages against warehouse size (hollow: projected)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = [IMAGES / "scaling-stages.png"]
    fig.savefig(out[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sizes = [r["size"] for r in rows]
    # CPU per event where measured: the rate follows the machine's load, the CPU much less
    key, unit = (("landing_cpu_us_per_event", "CPU µs per event") if all("landing_cpu_us_per_event" in r for r in rows)
                 else ("landing_events_per_s", "events/s"))
    values = [r[key] for r in rows]
    ax.plot(sizes, values, "o-", label=f"landing into N rows, {unit}")
    if baseline:
        ax.axhline(baseline, ls="--", color="grey", label="same batch into an empty warehouse")
    ax.set(xscale="log", xlabel="landed interactions already in the warehouse", ylabel=unit,
           title="Landing cost and DuckDB file size against warehouse size")
    ax.set_ylim(0, max(baseline or 0, *values) * 1.2)
    ax2 = ax.twinx()
    ax2.plot(sizes, [r["file_gb"] for r in rows], "s-", color="tab:red", label="DuckDB file, GB")
    ax2.set(yscale="log", ylabel="GB")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out.append(IMAGES / "scaling-landing.png")
    fig.savefig(out[1], dpi=110)
    plt.close(fig)
    return [str(p.relative_to(REPO)) for p in out]


def summarize(rows: list[dict], baselines: list, curation: dict | None, args, started: float) -> None:
    """Growth orders, projections, the plots and the JSON line of figures. `baselines`: the
    empty warehouse's (events/s, CPU µs per event) pairs (or bare events/s)."""
    pairs = [b if isinstance(b, (list, tuple)) else (b, None) for b in baselines]
    baseline = sum(p[0] for p in pairs) / len(pairs)
    cpus = [p[1] for p in pairs if p[1] is not None]
    baseline_cpu = sum(cpus) / len(cpus) if cpus else None
    for row in rows:
        row["landing_vs_empty"] = round(row["landing_events_per_s"] / baseline, 3)
        if baseline_cpu and row.get("landing_cpu_us_per_event"):
            row["landing_cpu_vs_empty"] = round(row["landing_cpu_us_per_event"] / baseline_cpu, 3)
    stages = stage_keys(rows)
    orders = {k: growth(rows, k) for k in [*stages, "file_gb", "fill_s"]}
    targets = sorted(int(float(s)) for s in args.project.split(",") if s)
    projected: dict[str, dict[int, float]] = {}
    for key in stages:
        measured = {r["size"] for r in rows if r.get(key)}
        if orders.get(key) is None or not measured:
            continue
        for size in targets:
            if size > max(measured):
                projected.setdefault(key, {})[size] = round(project(rows, key, size, orders[key]), 1)
    images = plot(rows, orders, baseline_cpu if any("landing_cpu_us_per_event" in r for r in rows) else baseline,
                  projected, stages)
    emit({
        "bench": "scaling", "sizes": [r["size"] for r in rows], "batch": args.batch, "seed_sessions": args.seed_sessions,
        "duckdb": {"memory_limit": args.memory_limit, "threads": args.threads},
        "landing_empty_events_per_s": [round(p[0]) for p in pairs],
        "landing_empty_cpu_us_per_event": [round(c, 1) for c in cpus], "rows": rows, "growth_order": orders,
        "projected": {k: {str(s): v for s, v in p.items()} for k, p in projected.items()},
        "projection": "value at the largest measured size x (size ratio) ^ growth order",
        "curation": curation, "images": images, "wall_s": round(time.perf_counter() - started),
    })


def replot(path: Path, args) -> None:
    """Figures, plots and JSON line again from the lines an interrupted run printed (its
    ``partial`` size lines, a ``baseline`` line, a ``curation`` line), without measuring."""
    rows, baselines, curation = [], [], None
    for line in path.read_text().splitlines():
        figures = json.loads(line) if line.startswith("{") else {}
        if figures.get("partial"):
            rows.append({k: v for k, v in figures.items() if k not in ("bench", "partial")})
        baselines += figures.get("baseline", [])
        curation = figures.get("curation", curation)
    summarize(sorted(rows, key=lambda r: r["size"]), baselines, curation, args, time.perf_counter())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e5,1e6,1e7", help="landed interactions, comma-separated (1e6 or 1000000)")
    ap.add_argument("--project", default="1e7", help="sizes to project the stages to when not measured")
    ap.add_argument("--batch", type=int, default=50_000, help="events landed at each size")
    # A run holds ~6-10 KB of Python per candidate: 10^6 needs ~10 GB (docs/scaling.md).
    ap.add_argument("--curate", type=float, default=1e5, help="warehouse size of the curation run (0: none)")
    ap.add_argument("--python-max", type=float, default=3e5,
                    help="largest size whose candidates are built in Python (mine, clean, raters)")
    ap.add_argument("--seed-sessions", type=int, default=10_000, help="synthetic sessions copied to fill each size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the warehouse files")
    ap.add_argument("--memory-limit", default="4GB", help="DuckDB's memory_limit")
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    ap.add_argument("--replot", type=Path, default=None,
                    help="no measuring: summarise and plot the JSON lines an interrupted run printed")
    args = ap.parse_args()
    if args.replot:
        return replot(args.replot, args)
    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    curate_size = int(args.curate)
    args.dir = args.dir or Path(tempfile.mkdtemp(prefix="flywheel-scaling-"))
    args.dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        seed = make_seed(args)
        traffic = seed[3]
        baselines = [empty_rate(args, traffic, "base0")]
        log(f"baseline: {args.batch:,} events into an empty warehouse at {baselines[0][0]:,.0f}/s")
        print(json.dumps({"bench": "scaling", "baseline": baselines}), flush=True)
        rows, curation = [], None
        for size in sorted(set(sizes) | ({curate_size} if curate_size else set())):
            t = time.perf_counter()
            row, ran = one_size(size, args, seed, lambda n: landing_batch(traffic, args.batch, f"s{n}"), curate_size)
            if ran:
                curation = ran
                print(json.dumps({"bench": "scaling", "curation": ran}), flush=True)
            row["wall_s"] = round(time.perf_counter() - t)
            if size in sizes:
                rows.append(row)
            print(json.dumps({"bench": "scaling", "partial": True, **row}), flush=True)  # figures so far
        baselines.append(empty_rate(args, traffic, "base1"))  # again at the end: the machine's load drifts
        log(f"baseline again: {baselines[1][0]:,.0f}/s")
        print(json.dumps({"bench": "scaling", "baseline": baselines[1:]}), flush=True)
        summarize(rows, baselines, curation, args, started)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
