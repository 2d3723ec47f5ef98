"""Token log-probabilities (``logprobs``, ``top_logprobs``), as OpenAI's
``ChatCompletionTokenLogprob`` entries: ``token``, ``logprob``, ``bytes`` and the
``top_logprobs`` likeliest alternatives.

The log-probabilities are those of the model's own distribution at each step: the
log-softmax of the raw logits, before ``logit_bias``, the penalties, temperature, top-p
and any grammar (vLLM's default, ``raw_logprobs``), so they say how likely the model found
a token whatever the request did to the choice. The chosen token's entry is made in the
sampling step (``engine.py`` calls :func:`token_logprobs` with the same logits), for the
rows that asked; EOS gets none (it is not text). A token's ``bytes`` are its exact UTF-8
bytes (a byte-level BPE token may hold part of a character: its ``token`` is then
``bytes:`` and the bytes in ``\\xNN`` form, as OpenAI writes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from serving.backends.local.rows import Row


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (``bytes_to_unicode``), inverted: character -> byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class TokenBytes:
    """The UTF-8 bytes of every token id, built once from the tokenizer (on the thread that
    owns it); read by the engine's worker."""

    def __init__(self, tokenizer, vocab_size: int):
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        byte_level = type(decoder).__name__ == "ByteLevel"
        table = _byte_decoder()
        special = set(tokenizer.all_special_tokens)
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.table: list[bytes] = []
        for i, piece in enumerate(pieces):
            if piece is None:
                self.table.append(b"")
            elif byte_level and piece not in special and all(ch in table for ch in piece):
                self.table.append(bytes(table[ch] for ch in piece))
            elif byte_level:
                self.table.append(piece.encode())
            else:
                self.table.append(tokenizer.decode([i]).encode())
        self.table += [b""] * max(0, vocab_size - len(self.table))

    def entry(self, token: int, logprob: float) -> dict[str, Any]:
        raw = self.table[token]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        return {"token": text, "logprob": logprob, "bytes": list(raw)}


def token_logprobs(logits: torch.Tensor, rows: Sequence[Row], tokens: Sequence[int],
                   token_bytes: TokenBytes) -> dict[int, dict[str, Any]]:
    """Entries for the rows that asked for log-probabilities: ``{position in rows: entry}``."""
    wanted = [i for i, r in enumerate(rows) if r.params.logprobs]
    if not wanted:
        return {}
    idx = torch.tensor(wanted, dtype=torch.long)
    logp = torch.log_softmax(logits.index_select(0, idx).float(), dim=-1)
    chosen = logp.gather(1, torch.tensor([tokens[i] for i in wanted], dtype=torch.long).unsqueeze(1)).squeeze(1)
    top_n = max(rows[i].params.top_logprobs for i in wanted)
    if top_n:
        top_values, top_ids = logp.topk(top_n, dim=-1)
    out = {}
    for k, i in enumerate(wanted):
        entry = token_bytes.entry(tokens[i], float(chosen[k]))
        n = rows[i].params.top_logprobs
        entry["top_logprobs"] = [token_bytes.entry(int(t), float(v)) for t, v in
                                 zip(top_ids[k, :n].tolist(), top_values[k, :n].tolist())] if n else []
        out[i] = entry
    return out


__all__ = ["TokenBytes", "token_logprobs"]
