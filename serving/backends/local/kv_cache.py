"""The KV cache of the running batch, and the transformers ``Cache`` adapters over it.

Continuous batching needs a cache that rows can join and leave between two decode steps
without copying the whole batch each time. transformers' ``DynamicLayer`` concatenates on
every step (a full copy of the cache per token), and its batch dimension is fixed once
prefill is done, so the batch keeps its own cache here.

:class:`BatchKV` is one preallocated buffer per layer of shape ``[max_batch, kv_heads,
capacity, head_dim]`` plus a boolean ``[max_batch, capacity]`` validity mask. All rows
append their new token in the same column, so a row that joined later is simply
left-padded: its earlier columns are masked out. The model is called with the window
``[start, end)`` of that buffer, a 4-D boolean attention mask built from the validity mask,
and explicit per-row ``position_ids`` (a row's positions count only its own tokens, so
padding never shifts RoPE). Appending writes one column in place; a finished row's slot is
refilled by moving the last row into it; columns no row uses any more are dropped from the
window's left edge. The buffer is re-laid out (copied) only when it is full or a
newcomer's prompt is longer than the window's left room.

A request's prompt is prefilled on its own (an ordinary ``DynamicCache``, batch of one) and
its keys/values then enter the batch through :meth:`BatchKV.add`, once per draft. That
copy is the one way in: KV that comes from anywhere else (a cache of shared prompt
prefixes, for instance) joins the batch the same way.

:class:`StepCache` (made of :class:`WindowLayer` s) is the ``Cache`` object the model gets
for a decode step: each layer writes the step's keys/values into the buffer in place and
hands the window back to attention.

The shared prefix (cascade attention, ``attention.py``): rows whose prompts begin with the
same tokens (the chart app's instructions) would each hold, and read at every decode step,
their own copy of the same keys/values. With ``share_prefixes`` on, the batch keeps one
copy of a prompt prefix, *the shared prefix*, outside the per-row buffers: a row that joins
with a prompt starting with at least ``min_shared`` of its tokens (and computed by the same
model version, its ``owner``) stores only the rest of its prompt in its row, and
``shared_len[slot]`` says how many prefix tokens it uses. The first prompt to join a batch
whose prefix no row uses becomes the new shared prefix (all but its last token, so a row
always holds at least one column itself). :meth:`BatchKV.shared_step` gives attention the
prefix's keys/values and the mask of the columns each row may see; with no row using the
prefix it returns None and the step runs transformers' SDPA over the windows as before.
"""

from __future__ import annotations

import math

import torch
from transformers.cache_utils import Cache, DynamicLayer

from serving.backends.local.attention import SharedPrefix


class WindowLayer(DynamicLayer):
    """A cache layer that is a view on one layer of :class:`BatchKV`.

    ``update`` writes the new keys/values at the batch's current end column (in place) and
    returns the window ``[start, end + q)`` for the active rows. Subclassing
    ``DynamicLayer`` keeps whatever transformers asks of a cache layer (``is_sliding``,
    ``get_seq_length``, ...) working; the model itself only calls ``update``.
    """

    def __init__(self, kv: BatchKV, layer_idx: int):
        super().__init__()
        self._kv = kv
        self._idx = layer_idx
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        kv = self._kv
        q = key_states.shape[-2]
        b = kv.rows
        keys, values = kv.keys[self._idx], kv.values[self._idx]
        keys[:b, :, kv.end : kv.end + q] = key_states
        values[:b, :, kv.end : kv.end + q] = value_states
        self.keys = keys[:b, :, kv.start : kv.end + q]
        self.values = values[:b, :, kv.start : kv.end + q]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._kv.end - self._kv.start


class BatchKV:
    """Preallocated keys/values of the running batch (see the module docstring)."""

    GROW = 256  # columns added at a time
    #: a row uses the shared prefix only if it shares at least this many tokens: below that
    #: (SmolLM2's default system prompt is ~30 tokens) the two-part attention costs more
    #: than the few columns it saves
    min_shared = 64

    def __init__(self, n_layers: int, max_batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 share_prefixes: bool = False):
        self.n_layers, self.max_batch = n_layers, max_batch
        self.kv_heads, self.head_dim, self.dtype = kv_heads, head_dim, dtype
        self.share_prefixes = share_prefixes  # keep a shared prefix (needs attention.py's attention)
        self.rows = 0
        self.start = self.end = 0
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.valid = torch.zeros(max_batch, 0, dtype=torch.bool)
        # the shared prefix: per layer [kv_heads, P, head_dim], its tokens and owner
        self.shared_keys: list[torch.Tensor] = []
        self.shared_values: list[torch.Tensor] = []
        self.shared_ids: list[int] = []
        self.shared_owner: str | None = None
        self.shared_len = torch.zeros(max_batch, dtype=torch.long)  # prefix tokens each slot uses
        self.shared_rows = self.shared_tokens = 0  # counters: rows that joined using it, tokens not copied
        self._alloc(0, 0, 0)

    @classmethod
    def for_model(cls, model, max_batch: int, share_prefixes: bool = False) -> BatchKV:
        """A cache shaped for ``model``'s attention layers (its text decoder's config)."""
        text_cfg = model.config.get_text_config(decoder=True)
        head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
        return cls(text_cfg.num_hidden_layers, max_batch, text_cfg.num_key_value_heads, head_dim, model.dtype,
                   share_prefixes=share_prefixes)

    # -- layout ------------------------------------------------------------------------
    def _alloc(self, capacity: int, new_start: int, copy_rows: int) -> None:
        """(Re)allocate ``capacity`` columns; the current window moves to ``new_start``."""
        width = self.end - self.start
        shape = (self.max_batch, self.kv_heads, capacity, self.head_dim)
        keys = [torch.zeros(shape, dtype=self.dtype) for _ in range(self.n_layers)]
        values = [torch.zeros(shape, dtype=self.dtype) for _ in range(self.n_layers)]
        valid = torch.zeros(self.max_batch, capacity, dtype=torch.bool)
        if copy_rows and width:
            src, dst = slice(self.start, self.end), slice(new_start, new_start + width)
            for layer in range(self.n_layers):
                keys[layer][:copy_rows, :, dst] = self.keys[layer][:copy_rows, :, src]
                values[layer][:copy_rows, :, dst] = self.values[layer][:copy_rows, :, src]
            valid[:copy_rows, dst] = self.valid[:copy_rows, src]
        self.keys, self.values, self.valid = keys, values, valid
        self.capacity = capacity
        self.start, self.end = new_start, new_start + width

    def reset(self) -> None:
        self.rows = 0
        self.start = self.end = 0
        self._set_shared([], [], None)
        if self.capacity > 4 * self.GROW:  # give memory back after a burst of long prompts
            self._alloc(0, 0, 0)
        else:
            self.valid.zero_()

    def _ensure(self, need_left: int, need_right: int) -> None:
        """Make room for ``need_left`` columns before ``end`` and ``need_right`` after it."""
        room_left = self.end  # columns left of ``start`` are free to reuse
        if room_left >= need_left and self.end + need_right <= self.capacity:
            return
        width = self.end - self.start
        # leave some room on the left so the next longer prompt does not move everything again
        new_start = max(need_left - width, 0) + (self.GROW // 2 if need_left > width else 0)
        new_capacity = new_start + width + need_right
        new_capacity = max(self.capacity, int(math.ceil(new_capacity / self.GROW)) * self.GROW)
        if new_capacity == self.capacity and new_start == self.start:
            return
        if new_start + width + need_right > new_capacity:
            new_capacity += self.GROW
        self._alloc(new_capacity, new_start, self.rows)

    # -- rows ----------------------------------------------------------------------------
    def add(self, layers_kv: list[tuple[torch.Tensor, torch.Tensor]], copies: int,
            prompt_ids: list[int] | None = None, owner: str | None = None) -> int:
        """Append ``copies`` rows holding a prefilled prompt (keys/values of shape
        ``[1, kv_heads, L, head_dim]``), right-aligned at ``end``. Returns the first slot.

        With ``share_prefixes`` on, ``prompt_ids`` (the prompt's tokens) and ``owner`` (the
        model version that computed its KV) let the rows use the shared prefix: only the
        prompt's tokens after the part they share are stored in the rows."""
        shared = self._share(layers_kv, prompt_ids, owner)
        if shared:
            layers_kv = [(k[..., shared:, :], v[..., shared:, :]) for k, v in layers_kv]
        length = layers_kv[0][0].shape[-2]
        if self.rows == 0:
            self.start = self.end = min(length, self.capacity)
        self._ensure(need_left=length, need_right=self.GROW // 4)
        first = self.rows
        rows = slice(first, first + copies)
        cols = slice(self.end - length, self.end)
        for layer, (k, v) in enumerate(layers_kv):
            self.keys[layer][rows, :, cols] = k
            self.values[layer][rows, :, cols] = v
        self.valid[rows] = False
        self.valid[rows, cols] = True
        new_start = self.end - length
        if first == 0:
            self.start = new_start
        elif new_start < self.start:
            # the window grows to the left: those columns are padding for the running rows
            self.valid[:first, new_start : self.start] = False
            self.start = new_start
        self.shared_len[rows] = shared
        if shared:
            self.shared_rows += copies
            self.shared_tokens += shared * copies
        self.rows += copies
        return first

    # -- the shared prefix -----------------------------------------------------------------
    def _share(self, layers_kv, prompt_ids: list[int] | None, owner: str | None) -> int:
        """How many leading tokens of this prompt the new rows take from the shared prefix
        (adopting the prompt as the shared prefix when no running row uses the current one)."""
        if not self.share_prefixes or prompt_ids is None:
            return 0
        usable = len(prompt_ids) - 1  # a row always keeps its last prompt token itself
        if usable < self.min_shared:
            return 0
        if self.rows == 0 or not bool(self.shared_len[: self.rows].any()):
            self._set_shared([k[0, :, :usable].clone() for k, _ in layers_kv],
                             [v[0, :, :usable].clone() for _, v in layers_kv],
                             owner, list(prompt_ids[:usable]))
            return usable
        if owner != self.shared_owner:
            return 0  # another version's keys/values differ
        n = 0
        for a, b in zip(self.shared_ids, prompt_ids[:usable]):
            if a != b:
                break
            n += 1
        return n if n >= self.min_shared else 0

    def _set_shared(self, keys: list[torch.Tensor], values: list[torch.Tensor], owner: str | None,
                    ids: list[int] | None = None) -> None:
        self.shared_keys, self.shared_values = keys, values
        self.shared_owner, self.shared_ids = owner, ids or []
        self.shared_len.zero_()

    def shared_step(self, mask: torch.Tensor) -> SharedPrefix | None:
        """The shared prefix as this step's attention sees it (``mask`` is what
        :meth:`begin_step` returned), or None when no running row uses it. (Rows that joined
        using it keep it even if ``share_prefixes`` is switched off meanwhile.)"""
        if self.rows == 0:
            return None
        used = self.shared_len[: self.rows]
        width = int(used.max())
        if width == 0:
            return None
        return SharedPrefix(
            keys=[k[:, :width] for k in self.shared_keys],
            values=[v[:, :width] for v in self.shared_values],
            in_prefix=torch.arange(width) < used[:, None],
            window=mask.reshape(self.rows, -1),
        )

    def remove(self, slots: list[int]) -> list[tuple[int, int]]:
        """Free ``slots``; rows from the end move into the holes. Returns ``(from, to)``
        moves so the caller can keep its per-row state in the same order."""
        moves = []
        gone = set(slots)
        keep = self.rows - len(gone)
        holes = sorted(s for s in gone if s < keep)
        movers = [s for s in range(keep, self.rows) if s not in gone]
        src = slice(self.start, self.end)
        for hole, mover in zip(holes, movers):
            for layer in range(self.n_layers):
                self.keys[layer][hole, :, src] = self.keys[layer][mover, :, src]
                self.values[layer][hole, :, src] = self.values[layer][mover, :, src]
            self.valid[hole] = self.valid[mover]
            self.shared_len[hole] = self.shared_len[mover]
            moves.append((mover, hole))
        self.rows = keep
        if keep == 0:
            self.reset()
        else:
            self._trim()
        return moves

    def _trim(self) -> None:
        """Drop leading columns that no active row uses."""
        used = self.valid[: self.rows, self.start : self.end].any(0)
        if used.numel() and not bool(used[0]):
            first = int(used.to(torch.int8).argmax())
            self.start += first

    # -- decode step ----------------------------------------------------------------------
    def begin_step(self) -> torch.Tensor:
        """Reserve the next column for every row and return the 4-D attention mask."""
        self._ensure(need_left=0, need_right=1)
        self.valid[: self.rows, self.end] = True
        return self.valid[: self.rows, self.start : self.end + 1].view(self.rows, 1, 1, -1)

    def end_step(self) -> None:
        self.end += 1


class StepCache(Cache):
    """The ``Cache`` object handed to the model for a decode step over :class:`BatchKV`."""

    def __init__(self, kv: BatchKV):
        super().__init__(layers=[WindowLayer(kv, i) for i in range(kv.n_layers)])


__all__ = ["BatchKV", "StepCache", "WindowLayer"]
