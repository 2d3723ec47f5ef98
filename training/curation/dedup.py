"""Deduplication: exact (normalised hash) then semantic (cosine, SemDeDup-style).

1. **Exact**: texts equal after :func:`normalise` (Unicode NFKC, case-folded, whitespace
   collapsed) form one group.
2. **Semantic** over one representative per exact group: the vectors are split into
   k-means clusters (spherical, numpy; one cluster below ``cluster_size`` items) and
   similarities are computed only within a cluster, in row blocks, as SemDeDup does; so
   100k items need ~100 (1k x 1k) products instead of one 100k x 100k. Pairs at or above
   the threshold are near-duplicates unless the **slot guard** tells them apart: MiniLM
   puts "monthly sales by region" and "monthly profit by region" (0.88) as close as a
   real paraphrase, and "return rate above 10%" vs "20%" at 0.96. Two texts whose content
   words mostly overlap (Jaccard >= ``guard_overlap``) but differ in a content word or a
   number are the same template with a different slot: kept apart. Paraphrases share
   few words and pass; texts that differ only in filler words ("show me", "please")
   merge.
3. In each group the best-scored member is kept (ties: the earlier item); the others
   carry the reason. Items are visited best first and dropped when near a kept one, so
   a chain a~b~c never drops c for b when b itself went.

The threshold, when not given, is chosen from the distribution of nearest-neighbour
similarities: Otsu's split of the upper part (>= ``search_range[0]``), which separates
the near-duplicate mode from the rest, clipped to ``search_range``. The report says how.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = ["DedupResult", "dedup", "kmeans", "normalise", "otsu_threshold", "slot_guard"]

DEFAULT_THRESHOLD = 0.9
SEARCH_RANGE = (0.82, 0.97)

_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+|[\u3400-\u9fff]", re.UNICODE)
# Function words and the filler of requests: differences in these never make two texts
# different prompts.
_FILLER = frozenset(
    """a an the and or of for to in on at by with from as is are was were be been it its this that these those
    i me my we our you your he she they them their please pls plz can could would will should may might do does
    did just also so then now there here what which who how show display give get see want need like let us
    make tell list plot chart draw view i'd i'm id im hi hello hey thanks thank kindly some any all each per
    over into out about up explain describe define help find know wonder curious quick quickly again""".split()
)
_NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "twenty": "20",
}


def normalise(text: str | None) -> str:
    """The text exact dedup compares: NFKC, case-folded, whitespace collapsed."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text or "").casefold()).strip()


def _content(text: str) -> frozenset[str]:
    words = (_NUMBER_WORDS.get(w, w) for w in _TOKEN.findall(normalise(text)))
    # single letters are the debris of contractions ("i'd", "don't") and articles
    return frozenset(w for w in words if w not in _FILLER and (len(w) > 1 or w.isdigit() or not w.isascii()))


def slot_guard(a: str, b: str, overlap: float = 0.5) -> bool:
    """True when ``a`` and ``b`` are the same template with a different slot (so NOT
    duplicates however close their vectors): their content words overlap by at least
    ``overlap`` (Jaccard) yet differ, or their numbers differ."""
    ca, cb = _content(a), _content(b)
    if ca == cb:
        return False
    na = {w for w in ca if w[0].isdigit()}
    nb = {w for w in cb if w[0].isdigit()}
    if na != nb:
        return True
    union = len(ca | cb)
    return union > 0 and len(ca & cb) / union >= overlap


@dataclass
class DedupResult:
    keep: np.ndarray  # indices kept, ascending
    group: np.ndarray  # per item: the index of the kept member of its group
    reason: list[str | None]  # per item: None if kept, else why it was dropped
    threshold: float
    report: dict = field(default_factory=dict)


def kmeans(x: np.ndarray, k: int, iterations: int = 12, seed: int = 0, sample: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on normalised rows: fitted on a sample (k-means++-lite seeding:
    random distinct rows), then every row assigned. Returns (centroids, labels)."""
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    k = max(1, min(k, n))
    fit = x if n <= sample else x[rng.choice(n, sample, replace=False)]
    centroids = fit[rng.choice(fit.shape[0], k, replace=False)].copy()
    for _ in range(iterations):
        labels = _assign(fit, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, fit)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        if empty.any():  # an empty cluster takes a random row again
            sums[empty] = fit[rng.choice(fit.shape[0], int(empty.sum()), replace=False)]
            norms[empty] = 1.0
        centroids = (sums / norms).astype(np.float32)
    return centroids, _assign(x, centroids)


def _assign(x: np.ndarray, centroids: np.ndarray, block: int = 16384) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], block):
        out[s : s + block] = (x[s : s + block] @ centroids.T).argmax(axis=1)
    return out


def otsu_threshold(values: np.ndarray, lo: float, hi: float, bins: int = 100) -> float | None:
    """Otsu's threshold of ``values`` within [lo, 1], clipped to [lo, hi]; None when
    fewer than 20 values lie there (nothing to split)."""
    v = values[(values >= lo) & np.isfinite(values)]
    if v.size < 20:
        return None
    hist, edges = np.histogram(v, bins=bins, range=(lo, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0, dtype=float), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0, dtype=float), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(np.clip(edges[int(np.argmax(between)) + 1], lo, hi))


def dedup(
    texts: Sequence[str],
    embeddings: np.ndarray,
    scores: np.ndarray | Sequence[float],
    threshold: float | None = None,
    *,
    cluster_size: int = 1000,
    guard_overlap: float = 0.5,
    search_range: tuple[float, float] = SEARCH_RANGE,
    seed: int = 0,
) -> DedupResult:
    """Exact then semantic dedup of ``texts`` (``embeddings``: their normalised vectors,
    ``scores``: higher is better, the member kept in each group). ``threshold``: cosine
    at or above which two items are near-duplicates; None chooses it from the data.
    ``cluster_size``: the mean k-means cluster size for the within-cluster comparison."""
    n = len(texts)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    s = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n or s.shape != (n,):
        raise ValueError(f"dedup: {n} texts need embeddings of shape ({n}, d) and {n} scores; got {x.shape} and {s.shape}")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"dedup: threshold must be within (0, 1], got {threshold}")
    group = np.arange(n)
    reason: list[str | None] = [None] * n
    if n == 0:
        return DedupResult(np.zeros(0, dtype=np.int64), group, reason, threshold or DEFAULT_THRESHOLD, {"items": 0})

    # Visiting order: best score first, then earlier index.
    order = np.lexsort((np.arange(n), -s))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)

    # -- exact
    rep_of: dict[str, int] = {}
    exact_rep = np.empty(n, dtype=np.int64)
    for i in order:
        key = hashlib.blake2b(normalise(texts[i]).encode("utf-8"), digest_size=16).hexdigest()
        r = rep_of.setdefault(key, int(i))
        exact_rep[i] = r
    reps = np.array(sorted(set(rep_of.values()), key=lambda i: rank[i]), dtype=np.int64)
    exact_dropped = n - reps.size

    # -- semantic, within clusters
    m = reps.size
    xr = x[reps]
    k = max(1, int(round(m / cluster_size)))
    labels = kmeans(xr, k, seed=seed)[1] if k > 1 else np.zeros(m, dtype=np.int64)
    nn_sim = np.full(m, -1.0, dtype=np.float32)
    pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (a, b, sim) in rep positions
    floor = min(search_range[0], threshold) if threshold is not None else search_range[0]
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if members.size < 2:
            continue
        xc = xr[members]
        for start in range(0, members.size, 2048):
            sim = xc[start : start + 2048] @ xc.T
            rows = np.arange(start, min(start + 2048, members.size))
            sim[rows - start, rows] = -1.0  # self
            nn_sim[members[rows]] = sim.max(axis=1)
            # keep pairs a<b (positions in visiting order) above the lowest threshold we may pick
            ra, cb = np.nonzero(sim >= floor)
            a, b = members[rows[ra]], members[cb]
            sel = a < b
            pairs.append((a[sel], b[sel], sim[ra[sel], cb[sel]]))
    a = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, dtype=np.int64)
    b = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, dtype=np.int64)
    sims = np.concatenate([p[2] for p in pairs]) if pairs else np.zeros(0, dtype=np.float32)

    how = "given"
    if threshold is None:
        chosen = otsu_threshold(nn_sim, *search_range)
        threshold, how = (chosen, "otsu on nearest-neighbour similarities") if chosen is not None else (
            DEFAULT_THRESHOLD,
            f"default (fewer than 20 nearest-neighbour similarities >= {search_range[0]})",
        )
    sel = sims >= threshold
    a, b, sims = a[sel], b[sel], sims[sel]

    # Greedy in visiting order: b (worse) goes when it is near a kept a (better) unless the
    # slot guard tells them apart. reps are sorted by rank, so position order = visiting order.
    kept = np.ones(m, dtype=bool)
    near_of = np.full(m, -1, dtype=np.int64)
    near_sim = np.zeros(m, dtype=np.float32)
    guarded = 0
    by_b = np.lexsort((-sims, b))
    for j in by_b:
        ai, bi = int(a[j]), int(b[j])
        if not kept[bi] and near_of[bi] >= 0:
            continue
        if not kept[ai]:
            continue
        if slot_guard(texts[reps[ai]], texts[reps[bi]], guard_overlap):
            guarded += 1
            continue
        kept[bi] = False
        near_of[bi] = ai
        near_sim[bi] = sims[j]
    # Pairs are visited per b with b ascending, and every a < b is settled before b
    # is visited, so a "kept" a is final.

    final = np.empty(m, dtype=np.int64)
    for pos in range(m):
        final[pos] = reps[pos] if kept[pos] else reps[near_of[pos]]
        if not kept[pos]:
            reason[reps[pos]] = f"near-duplicate of {reps[near_of[pos]]} (cos={near_sim[pos]:.2f})"
    rep_final = dict(zip(reps.tolist(), final.tolist()))
    for i in range(n):
        r = int(exact_rep[i])
        group[i] = rep_final[r]
        if r != i:
            reason[i] = f"exact-duplicate of {r}"
    keep = np.sort(reps[kept])

    valid = nn_sim[nn_sim > -1]
    report = {
        "items": n,
        "kept": int(keep.size),
        "exact_duplicates": int(exact_dropped),
        "near_duplicates": int((~kept).sum()),
        "slot_guarded_pairs": int(guarded),
        "threshold": round(float(threshold), 4),
        "threshold_method": how,
        "clusters": int(k),
        "largest_cluster": int(np.bincount(labels).max()) if m else 0,
        "nn_similarity": {
            f"p{q}": round(float(np.percentile(valid, q)), 4) for q in (5, 25, 50, 75, 90, 95, 99)
        }
        if valid.size
        else {},
        "nn_histogram": _histogram(valid),
    }
    return DedupResult(keep, group, reason, float(threshold), report)


def _histogram(values: np.ndarray, lo: float = 0.5) -> dict[str, int]:
    if values.size == 0:
        return {}
    edges = np.array([-1.0, lo, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0001])
    hist, _ = np.histogram(values, bins=edges)
    names = [f"<{lo}"] + [f"{edges[i]:.2f}-{min(edges[i + 1], 1.0):.2f}" for i in range(1, len(edges) - 1)]
    return dict(zip(names, hist.tolist()))
