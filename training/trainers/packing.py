"""Shared-prefix packing for SFT: many examples that start with the same prompt tokens
share one copy of that prefix in a single training sequence.

Why: an app's requests repeat a long instruction block (the chart assistant's is ~350 of
its ~470 prompt tokens) while the answer the loss is on is ~60 tokens. Packing examples
that share a prefix into one row, ``[prefix][rest of example 1][rest of example 2]...``,
computes the prefix once for all of them.

How each row is laid out:
- the prefix is the longest common token prefix of the examples in the row, cut so that
  every example keeps at least one non-loss token before its first loss token (the token
  that predicts the first answer token must belong to the example itself);
- attention: prefix tokens are causal among themselves; a token of example *i* sees the
  whole prefix and the tokens of example *i* before it, never another example (a 4D
  additive mask, which the Llama family in transformers takes as is);
- position ids continue from the prefix in every example, so each example sees exactly
  the positions it would see alone;
- labels stay those TRL built (-100 outside the assistant's answer).

The loss of a packed row therefore equals the loss of its examples trained one by one
(the test checks it against the unpacked forward pass); only the prefix's compute is
shared. TRL's own ``packing`` (best-fit, padding-free) concatenates whole sequences and
needs FlashAttention for the block-diagonal mask; it shares nothing.

Rows are grouped after sorting the examples by their token ids, so examples with the
longest common prefixes end up side by side; a group closes when adding the next example
would pass ``max_length`` or ``max_examples``, or when the shared prefix would fall below
``min_shared`` tokens. The examples left alone that way (general replay records share no
prompt with the app's traffic, nor with each other) are then packed side by side with an
empty prefix: each sees only itself, positions from 0, so nothing changes but the number of
rows (one step of the general replay holds up to ``max_examples`` of them, not one).

An example may carry ``replay: True`` (general replay, trained by a loss of its own: see
``training/trainers/sft.py``); replay and app examples never share a row, and a row says
which it is in its ``replay`` key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class PackStats:
    examples: int
    rows: int
    tokens_before: int  # tokens the examples hold one by one
    tokens_after: int   # tokens in the packed rows (without padding)

    @property
    def saved(self) -> float:
        return 1 - self.tokens_after / self.tokens_before if self.tokens_before else 0.0

    def to_dict(self) -> dict:
        return {"examples": self.examples, "rows": self.rows, "tokens_before": self.tokens_before,
                "tokens_after": self.tokens_after, "saved": round(self.saved, 3)}


def _first_label(labels: list[int]) -> int:
    for i, label in enumerate(labels):
        if label != IGNORE:
            return i
    return len(labels)


def _common(a: list[int], b: list[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def pack_shared_prefix(examples: list[dict], *, max_length: int, max_examples: int = 8,
                       min_shared: int = 32) -> tuple[list[dict], PackStats]:
    """Pack tokenized examples (``input_ids``, ``labels``, optional ``replay``) into rows with
    ``input_ids``, ``labels``, ``replay`` and ``seq_lengths`` = [prefix length, length of each
    example's rest]. Examples that share no useful prefix are packed side by side after an
    empty prefix (``[0, length, length, ...]``)."""
    order = sorted(range(len(examples)), key=lambda i: (_replay(examples[i]), examples[i]["input_ids"]))
    rows: list[dict] = []
    alone: list[dict] = []  # examples that shared too little with their neighbours
    group: list[dict] = []
    prefix = 0  # length of the group's shared prefix

    def close() -> None:
        if not group:
            return
        if len(group) == 1:
            alone.append(group[0])
        else:
            rows.append(_row(group, prefix))
        group.clear()

    for i in order:
        ex = examples[i]
        # The shareable part of an example: its tokens before the one that predicts its first label.
        shareable = max(0, _first_label(ex["labels"]) - 1)
        if group:
            shared = _common(group[0]["input_ids"], ex["input_ids"], min(prefix, shareable))
            total = shared + sum(len(g["input_ids"]) - shared for g in group) + len(ex["input_ids"]) - shared
            if (_replay(group[0]) == _replay(ex) and shared >= min_shared and total <= max_length
                    and len(group) < max_examples):
                group.append(ex)
                prefix = shared
                continue
            close()
        group.append(ex)
        prefix = shareable
    close()
    # Side by side, in their sorted order (first fit: a row closes at a limit or a change of kind).
    for ex in alone:
        if (group and (_replay(group[0]) != _replay(ex) or len(group) >= max_examples
                       or sum(len(g["input_ids"]) for g in group) + len(ex["input_ids"]) > max_length)):
            rows.append(_row(group, 0))
            group.clear()
        group.append(ex)
    if group:
        rows.append(_row(group, 0))
    before = sum(len(e["input_ids"]) for e in examples)
    after = sum(len(r["input_ids"]) for r in rows)
    return rows, PackStats(len(examples), len(rows), before, after)


def _row(group: list[dict], prefix: int) -> dict:
    ids = list(group[0]["input_ids"][:prefix])
    labels = [IGNORE] * prefix
    lengths = [prefix]
    for ex in group:
        ids += ex["input_ids"][prefix:]
        labels += ex["labels"][prefix:]
        lengths.append(len(ex["input_ids"]) - prefix)
    return {"input_ids": ids, "labels": labels, "seq_lengths": lengths, "replay": _replay(group[0])}


def _replay(example: dict) -> bool:
    return bool(example.get("replay"))


class SharedPrefixCollator:
    """Pads packed rows into a batch with the block attention mask and position ids, and
    ``replay`` (one bool per row) when a row of the batch is general replay."""

    def __init__(self, pad_token_id: int, dtype: torch.dtype = torch.float32):
        self.pad_token_id = pad_token_id
        self.dtype = dtype

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        batch = len(rows)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE, dtype=torch.long)
        positions = torch.zeros((batch, width), dtype=torch.long)
        allowed = torch.zeros((batch, width, width), dtype=torch.bool)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        for b, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[b, :n] = torch.tensor(row["input_ids"])
            labels[b, :n] = torch.tensor(row["labels"])
            prefix, *parts = row.get("seq_lengths") or [n]  # an unpacked row: all "prefix", causal
            positions[b, :prefix] = torch.arange(prefix)
            allowed[b, :prefix, :prefix] = causal[:prefix, :prefix]
            start = prefix
            for length in parts:
                end = start + length
                positions[b, start:end] = torch.arange(prefix, prefix + length)
                allowed[b, start:end, :prefix] = True
                allowed[b, start:end, start:end] = causal[:length, :length]
                start = end
            # Padding attends to itself only: a query row with nothing to attend to gives NaN.
            idx = torch.arange(n, width)
            allowed[b, idx, idx] = True
        mask = torch.zeros((batch, 1, width, width), dtype=self.dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(self.dtype).min)
        out = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions, "labels": labels}
        if any(map(_replay, rows)):
            out["replay"] = torch.tensor([_replay(r) for r in rows])
        return out


def real_tokens(inputs: dict) -> int:
    """Tokens of a batch that are not padding. Every real token attends to the row's first
    token (the prefix's, or its own example's when the row holds one example); padding
    attends only to itself."""
    mask = inputs["attention_mask"]
    if mask.dim() == 2:
        return int(mask.sum())
    return int((mask[:, 0, :, 0] == 0).sum())
