"""Selection: cover the embedding space with few items, per task-type budget; optional
model-based scores (Nuggets golden score, hardness).

- :func:`k_center_greedy` (Sener & Savarese's core-set): repeatedly take the point
  farthest from the chosen centres; exact, with distances computed for batches of
  candidates by one matrix product (see the function).
- :func:`select_by_budget`: splits ``total`` over task types in proportion to
  ``weight x available`` (hard types weigh more), at least one item per type present,
  never more than a type has; then K-Center-Greedy within each type.
- :func:`golden_scores` (Nuggets, Li et al. 2023): GS(z) = 1/m sum_j 1[s1_j(z) > s0_j],
  where s0_j is the served model's score of anchor j's reference answer zero-shot and
  s1_j(z) the score with candidate z given as a one-shot example.
- :func:`hardness`: the per-token loss of a good answer under the served model; the
  highest are the examples the model most needs (flagged for up-weighting).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["ModelScorer", "SelectResult", "golden_scores", "hardness", "k_center_greedy", "select_by_budget", "split_budget"]


def k_center_greedy(
    embeddings: np.ndarray, k: int, initial: Sequence[int] | None = None, *, batch: int = 128, max_batch: int = 512
) -> np.ndarray:
    """Indices of ``k`` new centres chosen greedily (farthest point first, Euclidean),
    in the order chosen; ``initial``: indices already selected (they count as centres
    and are not returned). Without ``initial`` the first centre is the point nearest
    the mean.

    Exact, but batched: the ``batch`` farthest points are candidates and their distances
    to every point come from one matrix product; candidates are then taken one by one,
    updating the minimum distances, for as long as the best remaining candidate is still
    at least as far as every non-candidate was (minimum distances only shrink, so it is
    the true farthest point). A matrix product runs ~50x faster per distance than one
    centre at a time. Candidates' distance rows are kept for later batches (at most
    ``max_batch`` rows: 200 MB for 100k points), so a rejected candidate costs nothing."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    initial = list(dict.fromkeys(int(i) for i in (initial or [])))
    k = max(0, min(int(k), n - len(initial)))
    if k == 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    sq = np.einsum("ij,ij->i", x, x)
    # ||p - c||^2 = ||p||^2 - (2 p.c - ||c||^2): with p' = [p, 1] and c' = [2c, -||c||^2]
    # one matrix product gives the bracket, and a point's nearest centre is the one with
    # the largest bracket ("gain"), so each new centre costs a single np.maximum pass.
    xa = np.empty((n, x.shape[1] + 1), dtype=np.float32)
    xa[:, :-1] = x
    xa[:, -1] = 1.0
    gain = np.full(n, -np.inf, dtype=np.float32)  # max over centres of 2 p.c - ||c||^2

    def gains(rows: np.ndarray) -> np.ndarray:
        c = np.empty((rows.size, xa.shape[1]), dtype=np.float32)
        c[:, :-1] = 2.0 * x[rows]
        c[:, -1] = -sq[rows]
        return c @ xa.T

    def min_d() -> np.ndarray:  # squared distance to the nearest centre
        return np.maximum(sq - gain, 0.0)

    for s in range(0, len(initial), 256):
        np.maximum(gain, gains(np.asarray(initial[s : s + 256])).max(axis=0), out=gain)
    chosen: list[int] = []
    if not initial:
        first = int(np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1)))
        chosen.append(first)
        np.maximum(gain, gains(np.asarray([first]))[0], out=gain)
        gain[first] = sq[first]
    gain[initial] = sq[initial]
    # Distances of candidates to every point never change: rows of candidates not taken
    # yet stay in a pool and are reused by the next batch when they are candidates again.
    cap = max(1, min(int(max_batch), n))
    pool = np.empty((cap, n), dtype=np.float32)
    slot_of: dict[int, int] = {}
    free_slots = list(range(cap))
    size = max(1, min(int(batch), cap))
    while len(chosen) < k:
        b = min(size, n)
        dist = min_d()
        if b < n:
            part = np.argpartition(-dist, b)
            cand, bound = part[:b], float(dist[part[b]])
        else:
            cand, bound = np.arange(n), -1.0
        if float(dist[cand].max()) <= 0.0:
            # only copies of centres are left: take unchosen points in index order
            taken = np.zeros(n, dtype=bool)
            taken[initial + chosen] = True
            chosen.extend(np.flatnonzero(~taken)[: k - len(chosen)].tolist())
            break
        wanted = set(cand.tolist())
        for p in [p for p in slot_of if p not in wanted]:
            free_slots.append(slot_of.pop(p))
        new = [p for p in cand.tolist() if p not in slot_of]
        if new:
            rows = [free_slots.pop() for _ in new]
            pool[rows] = gains(np.asarray(new))
            slot_of.update(zip(new, rows))
        slots = np.asarray([slot_of[p] for p in cand.tolist()])
        free = np.ones(b, dtype=bool)
        accepted = 0
        while len(chosen) < k:
            vals = np.where(free, sq[cand] - gain[cand], -1.0)
            j = int(np.argmax(vals))
            if vals[j] < bound or vals[j] <= 0.0:
                break
            p = int(cand[j])
            chosen.append(p)
            free[j] = False
            np.maximum(gain, pool[slots[j]], out=gain)
            gain[p] = sq[p]  # exactly zero distance to itself, whatever the rounding
            free_slots.append(slot_of.pop(p))
            accepted += 1
        # grow the batch while most candidates are taken, shrink it when few are
        size = int(np.clip(2 * accepted if accepted > b // 2 else max(accepted, 16), 16, cap))
    return np.asarray(chosen, dtype=np.int64)


@dataclass
class SelectResult:
    keep: np.ndarray  # selected indices, ascending
    per_type: dict[str, dict] = field(default_factory=dict)


def split_budget(available: Mapping[str, int], weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Quotas per type: proportional to ``weight x available``, at least 1 for each type
    with items (even past ``total``), at most what a type has; what a capped type
    cannot use goes to the others."""
    types = [t for t, n in available.items() if n > 0]
    quota = {t: 1 for t in types}
    left = max(0, int(total) - len(types))
    open_ = [t for t in types if available[t] > 1]
    while left > 0 and open_:
        w = np.array([max(weights.get(t, 1.0), 0.0) * available[t] for t in open_], dtype=float)
        if w.sum() <= 0:
            w = np.ones(len(open_))
        share = w / w.sum() * left
        give = np.floor(share).astype(int)
        # largest remainders get the rounding leftovers, so the sum is exact
        for j in np.argsort(-(share - give))[: left - int(give.sum())]:
            give[j] += 1
        spent = 0
        for t, g in zip(open_, give):
            g = min(int(g), available[t] - quota[t])
            quota[t] += g
            spent += g
        left -= spent
        open_ = [t for t in open_ if quota[t] < available[t]]
        if spent == 0:
            break
    return quota


def select_by_budget(
    embeddings: np.ndarray, task_types: Sequence[str], budgets: Mapping[str, float], total: int
) -> SelectResult:
    """Choose about ``total`` items: quotas from :func:`split_budget` (``budgets``:
    relative weights per type, missing types 1.0), K-Center-Greedy within each type."""
    x = np.asarray(embeddings, dtype=np.float32)
    types = np.asarray([t or "unknown" for t in task_types], dtype=object)
    if x.shape[0] != types.size:
        raise ValueError(f"select_by_budget: {x.shape[0]} embeddings but {types.size} task types")
    names, counts = np.unique(types, return_counts=True) if types.size else ([], [])
    available = {str(t): int(c) for t, c in zip(names, counts)}
    quota = split_budget(available, budgets, total)
    keep, per_type = [], {}
    for t, q in quota.items():
        idx = np.flatnonzero(types == t)
        picked = idx if q >= idx.size else idx[k_center_greedy(x[idx], q)]
        keep.append(picked)
        per_type[t] = {"available": int(idx.size), "weight": float(budgets.get(t, 1.0)), "quota": int(q), "selected": int(picked.size)}
    keep_arr = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
    return SelectResult(keep_arr, per_type)


# ----------------------------------------------------------------------------- model scores


def _as_pair(item) -> tuple[list[dict], str]:
    """(messages, answer) from a (prompt, answer) tuple, or a dict with messages/prompt
    and response/answer."""
    if isinstance(item, Mapping):
        prompt = item.get("messages", item.get("prompt"))
        answer = item.get("response", item.get("answer"))
    else:
        prompt, answer = item
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or answer is None:
        raise ValueError(f"expected (prompt or messages, answer), got {type(item).__name__}")
    return [dict(m) for m in prompt], str(answer)


class ModelScorer:
    """Answer log-likelihoods under the served model (the bundled SmolLM2 by default).

    ``model_dir_or_settings``: a converted model folder, or the settings object (its
    ``model.cache_dir`` holds the converted bundled model)."""

    def __init__(self, model_dir_or_settings=None, max_length: int = 2048, batch_size: int = 4):
        from serving.model_store import ensure_hf_model, load_model

        if model_dir_or_settings is None or hasattr(model_dir_or_settings, "model_cache_path"):
            cache = getattr(model_dir_or_settings, "model_cache_path", None)
            model_dir = ensure_hf_model(cache)
        else:
            model_dir = Path(model_dir_or_settings)
        self.model, self.tokenizer = load_model(model_dir)
        self.max_length = max_length
        self.batch_size = batch_size

    def mean_logprob(self, pairs: Sequence) -> np.ndarray:
        """Mean log-probability per answer token of each (messages, answer)."""
        import torch

        encoded = []
        for item in pairs:
            messages, answer = _as_pair(item)
            prefix = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            p_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            a_ids = self.tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
            a_ids = a_ids[: self.max_length // 2]
            p_ids = p_ids[-(self.max_length - len(a_ids)) :]  # keep the end of a long context
            encoded.append((p_ids, a_ids))
        out = np.empty(len(encoded), dtype=np.float64)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for s in range(0, len(encoded), self.batch_size):
            batch = encoded[s : s + self.batch_size]
            width = max(len(p) + len(a) for p, a in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            for r, (p, a) in enumerate(batch):
                ids[r, : len(p) + len(a)] = torch.tensor(p + a)
                attn[r, : len(p) + len(a)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=attn).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for r, (p, a) in enumerate(batch):
                out[s + r] = float(logp[r, len(p) - 1 : len(p) + len(a) - 1].mean())
        return out


def golden_scores(candidates: Sequence, anchors: Sequence, scorer: ModelScorer) -> np.ndarray:
    """Nuggets golden score of each candidate against the anchors (each a (prompt or
    messages, answer) pair): the share of anchors whose reference answer becomes more
    likely under the model with the candidate as a one-shot example."""
    anchors = [_as_pair(a) for a in anchors]
    if not anchors:
        raise ValueError("golden_scores needs at least one anchor")
    zero = scorer.mean_logprob(anchors)
    out = np.empty(len(candidates), dtype=np.float64)
    for i, cand in enumerate(candidates):
        c_msgs, c_answer = _as_pair(cand)
        shot = [m for m in c_msgs if m.get("role") != "system"] + [{"role": "assistant", "content": c_answer}]
        one = scorer.mean_logprob([(shot + msgs, ans) for msgs, ans in anchors])
        out[i] = float(np.mean(one > zero))
    return out


def hardness(prompts_and_answers: Sequence, scorer: ModelScorer) -> np.ndarray:
    """Per-token loss (negative mean log-likelihood) of each answer given its prompt:
    higher means the served model finds the (good) answer harder."""
    return -scorer.mean_logprob(list(prompts_and_answers))
