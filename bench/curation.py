"""Curation semantics at scale: exact + semantic dedup + K-Center-Greedy to 5,000 on
synthetic prompts, against embedding the same prompts alone (the baseline, same run).

Prompts are the user turns of `flywheel.simulate.synthetic` traffic (half of them the
~470-token chart-config prompt; a share reworded repeats). The pipeline measured is what
curation runs: `focus_texts` (template lines out), MiniLM embedding, `dedup` (exact hash,
then cosine within k-means clusters, threshold chosen from the data), `k_center_greedy`
over the kept items, and, as an extra figure, `select_by_budget` with the taxonomy's
per-type weights. The prompts are embedded once in chunks of 10,000, so each size is a
prefix of the largest and its embedding time is the sum of its chunks.

Targets (issue 4): total <= 1.3x the embedding time; K-Center-Greedy alone <= 10 s;
peak memory <= 4 GB (the process's max RSS, model included).
    python bench/curation.py [--sizes 10000,30000,100000] [--select 5000]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flywheel.simulate.synthetic import synthetic_events  # noqa: E402
from training.curation.dedup import dedup  # noqa: E402
from training.curation.embed import Embedder, focus_texts  # noqa: E402
from training.curation.select import k_center_greedy, select_by_budget  # noqa: E402
from training.curation.task_types import Taxonomy  # noqa: E402

CHUNK = 10_000


def prompts(n: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """`n` user prompts of synthetic traffic with their task types and a quality score
    (the best draft's checker score, what dedup keeps the best of)."""
    texts: list[str] = []
    types: list[str] = []
    scores: list[float] = []
    batch = 0
    while len(texts) < n:
        traffic = synthetic_events(max(1000, n // 2), seed=seed, run_tag=f"bench{batch}")
        for event in traffic.interactions:
            truth = traffic.truth[event.request_id]
            texts.append(event.messages[-1]["content"])
            types.append(truth["task_type"])
            scores.append(max(truth["drafts_score"] or [0.0]))
        batch += 1
    return texts[:n], types[:n], np.asarray(scores[:n])


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,30000,100000", help="comma-separated prompt counts (prefixes of the largest)")
    ap.add_argument("--select", type=int, default=5000, help="items K-Center-Greedy selects")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch and BLAS threads (on a shared 2-core VM, 2 threads embed ~5x slower than 1: spin-waits)")
    args = ap.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    largest = sizes[-1]

    t0 = time.perf_counter()
    texts, types, scores = prompts(largest, args.seed)
    generate_s = time.perf_counter() - t0

    embedder = Embedder.shared()
    embedder.encode(["warm up"] * 64)
    # template lines are found on the largest corpus; each size re-runs focus_texts on its
    # own prefix for its timing
    t0 = time.perf_counter()
    focused = focus_texts(texts)
    focus_largest_s = time.perf_counter() - t0
    vectors = np.empty((largest, embedder.dim), dtype=np.float32)
    chunk_s: list[float] = []
    done = 0
    weights = Taxonomy.load().weights()
    progress = tqdm(total=largest, desc="embedding", unit="prompt")

    results = []
    for n in sizes:
        # embed up to n (sizes are prefixes, so each size's figures print as soon as they can)
        while done < n:
            t0 = time.perf_counter()
            vectors[done : done + CHUNK] = embedder.encode(focused[done : done + CHUNK], batch_size=64)
            chunk_s.append(time.perf_counter() - t0)
            progress.update(min(CHUNK, largest - done))
            done = min(done + CHUNK, largest)
        chunks = -(-n // CHUNK)
        embed_s = sum(chunk_s[:chunks]) * n / min(chunks * CHUNK, largest)
        t0 = time.perf_counter()
        focus_texts(texts[:n])
        focus_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = dedup(focused[:n], vectors[:n], scores[:n])
        dedup_s = time.perf_counter() - t0
        kept = result.keep
        t0 = time.perf_counter()
        picked = k_center_greedy(vectors[kept], min(args.select, kept.size))
        kcg_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        budget = select_by_budget(vectors[kept], [types[i] for i in kept], weights, min(args.select, kept.size))
        budget_s = time.perf_counter() - t0
        total_s = focus_s + embed_s + dedup_s + kcg_s
        line = {
            "bench": "curation",
            "size": n,
            "embed_s": round(embed_s, 2),
            "embed_per_s": round(n / embed_s, 1),
            "focus_s": round(focus_s, 2),
            "dedup_s": round(dedup_s, 2),
            "kcg_s": round(kcg_s, 2),
            "total_s": round(total_s, 2),
            "total_x_embed": round(total_s / embed_s, 3),
            "budget_select_s": round(budget_s, 2),
            "kept_after_dedup": int(kept.size),
            "exact_duplicates": result.report["exact_duplicates"],
            "near_duplicates": result.report["near_duplicates"],
            "threshold": result.report["threshold"],
            "clusters": result.report["clusters"],
            "selected": int(picked.size),
            "budget_selected": int(budget.keep.size),
            "peak_rss_gb": round(peak_rss_gb(), 2),
        }
        results.append(line)
        print(json.dumps(line), flush=True)

    top = results[-1]
    summary = {
        "bench": "curation",
        "summary": True,
        "sizes": sizes,
        "select": args.select,
        "threads": args.threads,
        "generate_s": round(generate_s, 2),
        "focus_largest_s": round(focus_largest_s, 2),
        "scaling": {str(r["size"]): {k: r[k] for k in ("embed_s", "dedup_s", "kcg_s", "total_x_embed")} for r in results},
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "targets": {
            "total<=1.3x_embed": top["total_x_embed"] <= 1.3,
            "kcg<=10s": top["kcg_s"] <= 10,
            "peak<=4GB": peak_rss_gb() <= 4,
        },
    }
    progress.close()
    print(json.dumps(summary))
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "curation.json").write_text("".join(json.dumps(r) + "\n" for r in [*results, summary]))


if __name__ == "__main__":
    main()
