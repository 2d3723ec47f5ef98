"""Choosing the next token of every row from one forward's logits.

Rows of one batch have different parameters (greedy or not, temperature, top-p) and each
draft has its own random stream: :func:`make_generator` gives every sampled draft a
``torch.Generator`` (seeded from the request's ``seed``, decorrelated per draft, or from
the system's entropy), so a seeded request draws the same numbers whatever else shares its
batch. :func:`sample` is vectorised over the rows and takes everything per row from the
rows themselves (``row.params``, ``row.generator``, ``row.grammar``): a row with
``logit_bias`` or penalties first has its logits changed (:func:`adjust_logits`, OpenAI's
formula), a row decoding under a grammar (``response_format``, forced tool calls) then has
every token its grammar does not allow next set to ``-inf`` (``grammar.mask_logits``), and
chooses as any other row.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from serving.backends.base import SamplingParams
from serving.backends.local.grammar import mask_logits
from serving.backends.local.rows import Row

_SEED_MIX = 0x9E3779B97F4A7C15  # decorrelates the per-draft seeds of one request


def make_generator(params: SamplingParams, index: int) -> torch.Generator | None:
    """The random stream of draft ``index`` (None for greedy decoding)."""
    if params.greedy:
        return None
    g = torch.Generator()
    if params.seed is None:
        g.manual_seed(random.SystemRandom().getrandbits(63))
    else:
        seed = params.seed if index == 0 else (params.seed * _SEED_MIX + index) % (1 << 63)
        g.manual_seed(seed % (1 << 63))
    return g


def adjust_logits(logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """``logits`` with each row's ``logit_bias`` added and its penalties subtracted, as
    OpenAI defines them: ``frequency_penalty * count + presence_penalty * (count > 0)`` for
    every token the draft has generated so far. Returns ``logits`` itself when no row asks
    for either, else a copy."""
    changed = [i for i, r in enumerate(rows) if r.params.penalised]
    if not changed:
        return logits
    out = logits.float().clone()
    vocab = out.shape[-1]
    for i in changed:
        p = rows[i].params
        if p.logit_bias:
            ids, bias = zip(*p.logit_bias)
            out[i, list(ids)] += torch.tensor(bias, dtype=out.dtype)
        if (p.presence_penalty or p.frequency_penalty) and rows[i].ids:
            counts = torch.bincount(torch.tensor(rows[i].ids, dtype=torch.long), minlength=vocab)[:vocab].to(out.dtype)
            out[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(out.dtype)
    return out


def sample(logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
    """Next token per row: argmax for greedy rows; temperature + top-p (inverse CDF
    with each row's own generator) for the others, vectorised over the rows. A row with a
    grammar chooses among the tokens it allows."""
    logits = mask_logits(adjust_logits(logits, rows), rows)
    tokens = logits.argmax(-1)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        idx = torch.tensor(sampled, dtype=torch.long)
        temps = torch.tensor([rows[i].params.temperature for i in sampled], dtype=logits.dtype)
        top_ps = [rows[i].params.top_p for i in sampled]
        probs = torch.softmax(logits.index_select(0, idx).float() / temps.unsqueeze(1), dim=-1)
        u = torch.cat([torch.rand(1, generator=rows[i].generator, dtype=torch.float64) for i in sampled])
        if any(p < 1.0 for p in top_ps):
            sorted_p, order = probs.sort(dim=-1, descending=True)
            cum = sorted_p.cumsum(-1)
            top = torch.tensor(top_ps, dtype=cum.dtype).unsqueeze(1)
            # keep the smallest prefix whose mass reaches top_p (always the first token)
            sorted_p = sorted_p.masked_fill((cum - sorted_p) >= top, 0.0)
            cdf = sorted_p.double().cumsum(-1)
            pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).clamp_(max=cdf.shape[1] - 1)
            choice = order.gather(1, pick).squeeze(1)
        else:
            cdf = probs.double().cumsum(-1)
            choice = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).clamp_(max=cdf.shape[1] - 1)
            choice = choice.squeeze(1)
        tokens[idx] = choice
    return tokens.tolist()


__all__ = ["adjust_logits", "make_generator", "sample"]
