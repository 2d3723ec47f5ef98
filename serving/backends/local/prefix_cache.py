"""KV of shared prompt prefixes, reused across requests (automatic prefix caching).

The chart app's prompt is ~440 tokens and all but the last few dozen are the same in every
request (the instructions, then the dataset's lists); a follow-up turn repeats the whole
earlier conversation. Prefill dominates such requests, so the keys/values of prompt
prefixes are kept here and a new prompt computes only what is not cached.

How it is keyed: a prompt is cut into blocks of ``block_tokens`` tokens. A block is found
by ``(its parent, its tokens)``: the parent is the block before it, or for the first block
the *owner*, the model version that computed it (its adapter's unique PEFT name, see
``Adapters.kv_owner``). So a block stands for its whole prefix, chained like vLLM's block
hashes, but the dict compares the actual token tuples, so two prefixes never collide, and
KV computed by one version never serves another. Only whole blocks are cached, and a
lookup stops one token short of the prompt's end: the last prompt token is always run,
since its logits give the first generated token.

Memory and eviction: ``max_bytes`` bounds the stored tensors. Blocks sit in LRU order,
and a lookup or insert refreshes its chain from the leaf up to the root, so a parent is
always more recent than its children and eviction (least recent first, childless blocks
only) trims chains from their tails; the shared instruction block, used by every request,
is the last to go.

Copies, never views: a stored block holds its own tensor (cloned out of the prefilled
prompt's cache), and :meth:`PrefixCache.lookup` returns freshly concatenated tensors, so
nothing a request does to its cache (``DynamicCache`` appends with ``torch.cat``; the batch
copies rows in, ``kv_cache.py``) can reach the stored KV, and evicting a block never pulls
KV from under a request that already looked it up.

Exactness: a cached prefix was computed inside another prompt's prefill, whose chunk had
another length, and MKL's matrix products differ by ~1e-5 with the row count (see
tests/test_local_backend.py), so the reused KV is not bitwise the KV an uncached prefill
would compute (measured: ~3e-5 in keys, ~2e-5 in the next token's logits). Greedy text is
the same unless two candidates tie that closely (tests/test_prefix_cache.py compares it).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Sequence

import torch

#: tokens per block: a prefix is reused in whole blocks (vLLM's default size)
BLOCK_TOKENS = 16


@dataclasses.dataclass(eq=False)
class _Block:
    id: int
    key: tuple  # (parent: ("root", owner) or the parent block's id, tokens)
    parent: int | None  # parent block id; None for a first block
    owner: str
    kv: torch.Tensor  # [n_layers, 2 (keys, values), kv_heads, block_tokens, head_dim]
    children: int = 0

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


class PrefixCache:
    """Blocks of prompt KV by ``(owner, token prefix)``, LRU-evicted under ``max_bytes``
    (see the module docstring). Used by the engine's worker thread only; :meth:`stats`
    may be read from any thread."""

    def __init__(self, max_bytes: int, block_tokens: int = BLOCK_TOKENS):
        if block_tokens < 1 or max_bytes < 0:
            raise ValueError("block_tokens must be >= 1 and max_bytes >= 0")
        self.max_bytes = max_bytes
        self.block_tokens = block_tokens
        self._blocks: collections.OrderedDict[tuple, _Block] = collections.OrderedDict()  # LRU first
        self._by_id: dict[int, _Block] = {}
        self._ids = itertools.count(1)
        self.bytes = 0
        # counters (stats)
        self.lookups = 0  # prompts looked up
        self.hits = 0  # prompts that reused at least one block
        self.lookup_tokens = 0  # prompt tokens looked up
        self.hit_tokens = 0  # prompt tokens not prefilled thanks to the cache
        self.inserted = 0  # blocks stored
        self.evictions = 0  # blocks evicted to stay under max_bytes

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    # -- chains -------------------------------------------------------------------------
    def _chain(self, owner: str, ids: Sequence[int], n_blocks: int) -> list[_Block]:
        """The cached blocks of ``ids``' first ``n_blocks`` blocks, from the start, up to
        the first block that is not cached."""
        chain: list[_Block] = []
        parent: object = ("root", owner)
        b = self.block_tokens
        for i in range(n_blocks):
            block = self._blocks.get((parent, tuple(ids[i * b : (i + 1) * b])))
            if block is None:
                break
            chain.append(block)
            parent = block.id
        return chain

    def _touch(self, chain: list[_Block]) -> None:
        """Most recent last, leaf first: the root ends up the most recently used."""
        for block in reversed(chain):
            self._blocks.move_to_end(block.key)

    # -- lookup / insert (worker) ------------------------------------------------------------
    def lookup(self, owner: str, ids: Sequence[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """``(cached, layers)``: how many leading tokens of prompt ``ids`` have cached KV
        for ``owner`` (whole blocks, never the last token), and per layer fresh
        ``(keys, values)`` of shape ``[1, kv_heads, cached, head_dim]``; ``(0, None)`` on a
        miss."""
        if not self.enabled:
            return 0, None
        self.lookups += 1
        self.lookup_tokens += len(ids)
        chain = self._chain(owner, ids, max(len(ids) - 1, 0) // self.block_tokens)
        if not chain:
            return 0, None
        self._touch(chain)
        cached = len(chain) * self.block_tokens
        self.hits += 1
        self.hit_tokens += cached
        kv = torch.cat([block.kv for block in chain], dim=3) if len(chain) > 1 else chain[0].kv.clone()
        return cached, [(kv[layer, 0].unsqueeze(0), kv[layer, 1].unsqueeze(0)) for layer in range(kv.shape[0])]

    def insert(self, owner: str, ids: Sequence[int], layers: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Store the whole blocks of prompt ``ids`` that are not cached yet, from ``layers``
        (per layer ``(keys, values)`` of shape ``[1, kv_heads, >= len(ids), head_dim]``,
        what ``owner`` computed for the prompt). Returns the number of blocks added."""
        if not self.enabled:
            return 0
        b = self.block_tokens
        n_blocks = len(ids) // b
        chain = self._chain(owner, ids, n_blocks)
        pinned = {block.id for block in chain}  # eviction must not cut the chain it extends
        added = 0
        for i in range(len(chain), n_blocks):
            lo, hi = i * b, (i + 1) * b
            kv = torch.stack([torch.stack((k[0, :, lo:hi], v[0, :, lo:hi])) for k, v in layers])  # a copy
            size = kv.numel() * kv.element_size()
            if not self._make_room(size, pinned):
                break
            parent = chain[-1] if chain else None
            block = _Block(next(self._ids), (parent.id if parent else ("root", owner), tuple(ids[lo:hi])),
                           parent.id if parent else None, owner, kv)
            if parent is not None:
                parent.children += 1
            self._blocks[block.key] = block
            self._by_id[block.id] = block
            self.bytes += size
            self.inserted += 1
            added += 1
            chain.append(block)
            pinned.add(block.id)
        self._touch(chain)
        return added

    def _make_room(self, size: int, pinned: set[int]) -> bool:
        """Evict least recently used childless blocks (never ``pinned`` ones) until ``size``
        more bytes fit; False if they cannot."""
        if size > self.max_bytes:
            return False
        while self.bytes + size > self.max_bytes:
            victim = next((blk for blk in self._blocks.values() if not blk.children and blk.id not in pinned), None)
            if victim is None:
                return False
            self._evict(victim)
            self.evictions += 1
        return True

    def _evict(self, block: _Block) -> None:
        del self._blocks[block.key]
        del self._by_id[block.id]
        self.bytes -= block.nbytes
        if block.parent is not None and block.parent in self._by_id:
            self._by_id[block.parent].children -= 1

    def drop(self, owner: str) -> int:
        """Forget every block ``owner`` computed (its adapter was unloaded). Returns how many."""
        gone = [blk for blk in self._blocks.values() if blk.owner == owner]
        for block in gone:
            self._evict(block)
        return len(gone)

    def clear(self) -> None:
        for block in list(self._blocks.values()):
            self._evict(block)

    # -- stats (any thread) --------------------------------------------------------------
    def stats(self) -> dict:
        """Counters and occupancy, for ``health()`` and the benchmarks."""
        return {
            "enabled": self.enabled,
            "block_tokens": self.block_tokens,
            "blocks": len(self._blocks),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "lookups": self.lookups,
            "hits": self.hits,
            "lookup_tokens": self.lookup_tokens,
            "hit_tokens": self.hit_tokens,
            "inserted": self.inserted,
            "evictions": self.evictions,
        }


__all__ = ["BLOCK_TOKENS", "PrefixCache"]
