"""Decode attention over a prompt prefix that the rows of the batch share (cascade attention).

Why: the chart app's 16 concurrent requests share their first ~390 prompt tokens (the
instructions), and once the prefix cache has removed most of their prefill, the 16-way
phase is bound by its decode steps. A decode step is memory-bound: each of the 16 rows
reads its own keys/values of a ~550-token context in every layer (~13.5 MB a layer in
fp32, as much as the layer's weights), although ~390 of those tokens are the same in
every row. Measured on the 2-core machine (one torch thread, CPU time, 16 rows): a decode
step costs ~126 ms with 60-token contexts and ~172 ms with 550-token ones, ~30% of it
attention over the windows (torch's CPU flash kernel; transformers already avoids
repeating K/V for one-token queries, ``pack_gqa``, so no copy is to be saved there).

So the batch keeps one copy of the shared prefix (``kv_cache.py``: ``BatchKV``'s shared
prefix, and each row's own keys/values start after it) and attention runs in two parts
whose scores share one softmax: the queries of all rows (rows x 3 query heads per KV head,
one matrix) against the prefix's keys, which are read once per layer instead of once per
row, and each row's queries against its own window, as before. A row that shares only
part of the prefix (or none of it) masks the rest out. This is vLLM's cascade attention
(FlashInfer's shared-prefix batch decoding) written with plain matrix products, since
torch's SDPA takes one key/value tensor per row. Measured on the chart rows (16 rows,
389 shared tokens of ~480, one thread, CPU time): attention ~30 ms a step instead of
~53 ms, the whole step ~155 ms instead of ~180 ms.

What it is not: not a change of the numbers a row computes, beyond float rounding. The
prefix holds the same keys/values the row would hold itself (the KV of the same tokens at
the same positions, computed by the same model version; rows of another version never
share it), and the softmax runs over exactly the columns SDPA would see; only the order of
the float sums differs (~1e-7 in the attention output, below the ~1e-5 that batch size
already changes, tests/test_local_backend.py).

Grouped-query attention (SmolLM2: 9 query heads, 3 KV heads) is done by viewing the
queries as ``[rows, kv_heads, group, head_dim]``, so keys/values are never repeated per
query head (transformers' SDPA path does the same for one-token queries, ``pack_gqa``).

:func:`install` registers :func:`attention` with transformers under ``NAME`` and makes the
model use it. Everything that is not a decode step with a shared prefix (prefill, steps
where no row shares one, other models) goes to transformers' own SDPA function unchanged.
"""

from __future__ import annotations

import dataclasses

import torch

NAME = "flywheel_cascade"

#: torch's CPU flash-attention kernel, which also returns each query's log-sum-exp (what
#: merging two partial attentions needs); SDPA's public API does not return it. Private
#: to torch (present in 2.13, the pinned version); without it, :func:`_by_products` runs.
_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


#: what a plain causal attention layer (Llama, SmolLM2) passes besides the tensors; anything
#: else (softcap, sinks, sliding windows...) goes to transformers' own function
_PLAIN_KWARGS = {"position_ids", "use_cache", "cache_position"}


@dataclasses.dataclass(eq=False)
class SharedPrefix:
    """What one decode step's attention needs about the shared prefix.

    ``keys[layer]`` / ``values[layer]`` are ``[kv_heads, P, head_dim]``, one copy for all
    rows; ``in_prefix`` is ``[rows, P]``, True for the prefix columns a row attends to (the
    part it shares); ``window`` is ``[rows, W]``, True for the valid columns of the row's
    own window (the step's attention mask). The masks in the forms the kernels take are
    made once per step, on the first layer (:meth:`masks`)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    in_prefix: torch.Tensor
    window: torch.Tensor
    _masks: dict = dataclasses.field(default_factory=dict, repr=False)

    def masks(self, group: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if not self._masks:
            rows = self.in_prefix.shape[0]
            blocked_prefix = ~self.in_prefix.repeat_interleave(group, dim=0)  # queries in (row, group) order
            self._masks.update(
                # additive masks for the flash kernel: the prefix's queries are all rows' at once
                prefix=torch.zeros(blocked_prefix.shape, dtype=dtype).masked_fill_(blocked_prefix, float("-inf"))
                .view(1, 1, rows * group, -1),
                own=torch.zeros(self.window.shape, dtype=dtype).masked_fill_(~self.window, float("-inf"))
                .view(rows, 1, 1, -1),
                no_prefix=~self.in_prefix.any(dim=1).view(rows, 1, 1),  # rows sharing none of it
                # one boolean mask over (prefix, window) for the product path
                blocked=~torch.cat([self.in_prefix, self.window], dim=1).view(rows, 1, 1, -1),
            )
        return self._masks


def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, shared_prefix=None,
              **kwargs):
    """transformers' attention-function signature; see the module docstring.

    ``query`` is ``[rows, q_heads, 1, head_dim]``; ``key``/``value`` are the rows' own
    windows, ``[rows, kv_heads, W, head_dim]``. Returns ``([rows, 1, q_heads, head_dim],
    None)`` like transformers' SDPA function."""
    if shared_prefix is None or query.shape[2] != 1:
        if (query.shape[2] > 1 and attention_mask is not None and attention_mask.dtype == torch.bool
                and query.device.type == "cpu" and not module.training and set(kwargs) <= _PLAIN_KWARGS):
            # A prompt chunk after cached tokens: transformers repeats K/V for every query
            # head here (``repeat_kv``: it only passes ``enable_gqa`` without a mask); torch's
            # CPU kernel takes the grouped heads as they are, bitwise the same, ~8% faster
            # a forward (a 46-token chunk after 440 cached tokens: 99 against 108 ms).
            out = torch.nn.functional.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=True)
            return out.transpose(1, 2).contiguous(), None
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, q_heads, _, head_dim = query.shape
    kv_heads = key.shape[1]
    group = q_heads // kv_heads
    if scaling is None:
        scaling = head_dim**-0.5
    q = query.reshape(rows, kv_heads, group, head_dim)  # a KV head's query heads side by side
    pk = shared_prefix.keys[module.layer_idx]  # [kv_heads, P, head_dim]
    pv = shared_prefix.values[module.layer_idx]
    masks = shared_prefix.masks(group, query.dtype)
    run = _by_flash if _flash is not None else _by_products
    out = run(q, key, value, pk, pv, masks, scaling)  # [rows, kv_heads, group, head_dim]
    return out.reshape(rows, 1, q_heads, head_dim), None


def _by_flash(q, key, value, pk, pv, masks, scaling):
    """Two flash-attention calls, merged by their log-sum-exps (FlashInfer's merge_state):
    the prefix with all rows' queries as one sequence (its keys read once), then each row's
    own window."""
    rows, kv_heads, group, head_dim = q.shape
    q_all = q.transpose(0, 1).reshape(1, kv_heads, rows * group, head_dim)
    o_prefix, lse_prefix = _flash(q_all, pk[None], pv[None], attn_mask=masks["prefix"], scale=scaling)
    o_own, lse_own = _flash(q, key, value, attn_mask=masks["own"], scale=scaling)
    o_prefix = o_prefix.reshape(kv_heads, rows, group, head_dim).transpose(0, 1)
    lse_prefix = lse_prefix.reshape(kv_heads, rows, group).transpose(0, 1)
    # a row sharing none of the prefix: the kernel gives it output 0 and log-sum-exp 0, not -inf
    lse_prefix = lse_prefix.masked_fill(masks["no_prefix"], float("-inf"))
    # softmax over both parts = each part's softmax weighted by its share of the total mass
    weight = torch.sigmoid(lse_prefix - lse_own).unsqueeze(-1)
    return o_own + weight * (o_prefix - o_own)


def _by_products(q, key, value, pk, pv, masks, scaling):
    """The same with plain matrix products and one softmax over (prefix, window) scores."""
    rows, kv_heads, group, head_dim = q.shape
    prefix = pk.shape[1]
    q = q * scaling
    q_all = q.transpose(0, 1).reshape(kv_heads, rows * group, head_dim)
    s_prefix = torch.bmm(q_all, pk.transpose(1, 2)).view(kv_heads, rows, group, prefix).transpose(0, 1)
    s_own = torch.matmul(q, key.transpose(-1, -2))  # [rows, kv_heads, group, W]
    scores = torch.cat([s_prefix, s_own], dim=-1).masked_fill_(masks["blocked"], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    p_prefix = probs[..., :prefix].transpose(0, 1).reshape(kv_heads, rows * group, prefix)
    out = torch.bmm(p_prefix, pv).view(kv_heads, rows, group, head_dim).transpose(0, 1)
    return out + torch.matmul(probs[..., prefix:], value)


def install(model) -> None:
    """Make ``model`` (a transformers model using SDPA) run its attention through
    :func:`attention`; a no-op for other attention implementations (eager, flash...)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if model.config._attn_implementation not in ("sdpa", NAME):
        return
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # prefill masks: as for SDPA
    model.set_attn_implementation(NAME)


def installed(model) -> bool:
    return model.config._attn_implementation == NAME


__all__ = ["NAME", "SharedPrefix", "attention", "install", "installed"]
