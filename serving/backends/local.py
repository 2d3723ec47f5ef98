"""Serve the model in-process with transformers on the CPU, with continuous batching.

One worker thread owns the model and runs a decode loop. Every draft of every request is a
*row* of the running batch. At each step boundary the worker

1. drops the rows whose client went away (``Generation.cancelled``),
2. admits queued requests, FIFO, while there are free rows: each prompt is prefilled on
   its own (batch of one, no padding, in chunks cut at fixed offsets, so a prompt's
   prefill is bitwise the same whatever else runs; while rows are decoding, at most
   ``prefill_budget`` prompt tokens per step boundary, so a long prompt never stalls them
   for long), its first token is sampled, and its KV cache is copied into the running
   batch (``n`` times, one per draft),
3. runs one decode step for all rows together, samples the next token of each row with
   its own parameters, turns tokens into text and finishes rows (EOS, stop string,
   ``max_tokens``, context full), whose slots are freed at once.

The KV cache of the running batch (:class:`_BatchKV`) is one preallocated buffer per layer
of shape ``[max_batch, kv_heads, capacity, head_dim]`` plus a boolean ``[max_batch,
capacity]`` validity mask. All rows append their new token in the same column, so a row
that joined later is simply left-padded: its earlier columns are masked out. The model is
called with the window ``[start, end)`` of that buffer, a 4-D boolean attention mask built
from the validity mask, and explicit per-row ``position_ids`` (a row's positions count
only its own tokens, so padding never shifts RoPE). Appending writes one column in place
(transformers' ``DynamicLayer`` concatenates, copying the whole cache every step); a
finished row's slot is refilled by moving the last row into it; columns no row uses any
more are dropped from the window's left edge. The buffer is re-laid out (copied) only
when it is full or a newcomer's prompt is longer than the window's left room.

Each row carries its model ``version``. Only ``"base"`` exists today; LoRA adapters
(PEFT, one base model, per-row ``adapter_names`` in the same forward) plug in at
:meth:`LocalBackend._forward_kwargs` and :meth:`LocalBackend.versions`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import random
import threading
from pathlib import Path

import torch
from transformers.cache_utils import Cache, DynamicLayer

from serving.backends.base import (
    BackendError,
    Generation,
    GenerationRequest,
    PromptTooLong,
    SamplingParams,
)

log = logging.getLogger(__name__)

BASE_VERSION = "base"
_SEED_MIX = 0x9E3779B97F4A7C15  # decorrelates the per-draft seeds of one request
_CANCELLED_STATUS = 499  # "client closed request"


# --------------------------------------------------------------------------------------
# KV cache of the running batch
# --------------------------------------------------------------------------------------
class _WindowLayer(DynamicLayer):
    """A cache layer that is a view on one layer of :class:`_BatchKV`.

    ``update`` writes the new keys/values at the batch's current end column (in place) and
    returns the window ``[start, end + q)`` for the active rows. Subclassing
    ``DynamicLayer`` keeps whatever transformers asks of a cache layer (``is_sliding``,
    ``get_seq_length``, ...) working; the model itself only calls ``update``.
    """

    def __init__(self, kv: _BatchKV, layer_idx: int):
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


class _BatchKV:
    """Preallocated keys/values of the running batch (see the module docstring)."""

    GROW = 256  # columns added at a time

    def __init__(self, n_layers: int, max_batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype):
        self.n_layers, self.max_batch = n_layers, max_batch
        self.kv_heads, self.head_dim, self.dtype = kv_heads, head_dim, dtype
        self.rows = 0
        self.start = self.end = 0
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.valid = torch.zeros(max_batch, 0, dtype=torch.bool)
        self._alloc(0, 0, 0)

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
    def add(self, layers_kv: list[tuple[torch.Tensor, torch.Tensor]], copies: int) -> int:
        """Append ``copies`` rows holding a prefilled prompt (keys/values of shape
        ``[1, kv_heads, L, head_dim]``), right-aligned at ``end``. Returns the first slot."""
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
        self.rows += copies
        return first

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


class _StepCache(Cache):
    """The ``Cache`` object handed to the model for a decode step over :class:`_BatchKV`."""

    def __init__(self, kv: _BatchKV):
        super().__init__(layers=[_WindowLayer(kv, i) for i in range(kv.n_layers)])


# --------------------------------------------------------------------------------------
# Per-request and per-row state
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class _Request:
    request: GenerationRequest
    gen: Generation
    prompt_ids: list[int]
    max_new: int  # max_tokens, capped by the context left after the prompt
    open_rows: int = 0
    failed: bool = False
    prefilled: int = 0  # prompt tokens already in ``cache``
    cache: object = None  # DynamicCache while the prompt is being prefilled


class _Row:
    """One draft being generated: sampling state, detokeniser, stop-string scanner."""

    __slots__ = (
        "req", "index", "version", "params", "generator", "ids", "position",
        "prefix_offset", "read_offset", "text", "emitted", "done",
    )

    def __init__(self, req: _Request, index: int, generator: torch.Generator | None):
        self.req = req
        self.index = index
        self.version = req.request.version
        self.params: SamplingParams = req.request.params
        self.generator = generator
        self.ids: list[int] = []  # generated ids that carry text (not EOS)
        self.position = len(req.prompt_ids)  # position id of the first generated token
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""
        self.emitted = 0
        self.done = False


class _TextTail:
    """Incremental detokenisation and stop-string handling (pure functions on a row)."""

    def __init__(self, decode):
        self._decode = decode

    def new_text(self, row: _Row) -> str:
        """Text added by the last id: decode a small window and hold back an incomplete
        UTF-8 sequence (``"\ufffd"`` at the end) until later ids complete it."""
        ids = row.ids
        prefix = self._decode(ids[row.prefix_offset : row.read_offset])
        full = self._decode(ids[row.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            row.prefix_offset, row.read_offset = row.read_offset, len(ids)
            return full[len(prefix) :]
        return ""

    def flush(self, row: _Row) -> str:
        prefix = self._decode(row.ids[row.prefix_offset : row.read_offset])
        full = self._decode(row.ids[row.prefix_offset :])
        row.prefix_offset = row.read_offset = len(row.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""

    @staticmethod
    def advance(row: _Row, piece: str, final: bool) -> tuple[str, bool]:
        """Add ``piece`` to the row's text; return ``(text to emit now, stop string hit)``."""
        stops = row.params.stop
        old_len = len(row.text)
        row.text += piece
        text = row.text
        if stops:
            longest = max(len(s) for s in stops)
            search_from = max(0, old_len - longest + 1)  # a new hit ends in ``piece``
            hit = -1
            for s in stops:
                if s:
                    p = text.find(s, search_from)
                    if p != -1 and (hit == -1 or p < hit):
                        hit = p
            if hit != -1:
                out = text[row.emitted : hit]
                row.text = text[:hit]
                row.emitted = hit
                return out, True
            if not final:
                # Hold back a tail that could still become a stop string.
                hold = 0
                for k in range(min(longest - 1, len(text) - row.emitted), 0, -1):
                    tail = text[-k:]
                    if any(s.startswith(tail) for s in stops):
                        hold = k
                        break
                end = len(text) - hold
                out = text[row.emitted : end]
                row.emitted = end
                return out, False
        out = text[row.emitted :]
        row.emitted = len(text)
        return out, False


# --------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------
class LocalBackend:
    """In-process transformers backend with continuous batching (see module docstring)."""

    name = "local"
    #: prompts are prefilled in chunks of this many tokens ...
    prefill_chunk = 512
    #: ... and at most this many prompt tokens per step boundary while rows are decoding
    prefill_budget = 512

    def __init__(
        self,
        model_dir: Path | str,
        *,
        max_batch: int = 16,
        max_queue: int = 256,
        max_context: int | None = None,
        torch_threads: int | None = None,
    ):
        from serving.model_store import load_model

        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model_dir = Path(model_dir)
        self.model, self.tokenizer = load_model(self.model_dir)
        cfg = self.model.config
        limit = int(getattr(cfg, "max_position_embeddings", 0) or 2048)
        self.max_context = min(max_context, limit) if max_context else limit
        self.max_batch = max_batch
        self.max_queue = max_queue

        # Ids that end a draft: the tokenizer's EOS (<|im_end|> for SmolLM2) and whatever
        # the generation config lists.
        eos = set()
        for tid in (self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")):
            if isinstance(tid, int) and tid >= 0 and tid != self.tokenizer.unk_token_id:
                eos.add(tid)
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        eos.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
        self._eos = eos

        # The worker decodes with its own copy of the Rust tokenizer; request threads
        # encode prompts under a lock (a fast tokenizer must not be used concurrently).
        from tokenizers import Tokenizer

        self._decoder_tok = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
        self._text = _TextTail(lambda ids: self._decoder_tok.decode(ids, skip_special_tokens=True))
        self._encode_lock = threading.Lock()

        text_cfg = cfg.get_text_config(decoder=True)
        head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
        self._kv = _BatchKV(
            text_cfg.num_hidden_layers, max_batch, text_cfg.num_key_value_heads, head_dim, self.model.dtype
        )
        self._step_cache = _StepCache(self._kv)
        self._rows: list[_Row] = []
        # Per-slot tensors mirroring ``self._rows``.
        self._last = torch.zeros(max_batch, dtype=torch.long)
        self._pos = torch.zeros(max_batch, dtype=torch.long)

        self._versions: dict[str, object] = {BASE_VERSION: None}  # version -> adapter (None: base)
        self._queue: collections.deque[_Request] = collections.deque()
        self._prefilling: _Request | None = None  # the request whose prompt is being prefilled
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="local-backend", daemon=True)
        self._thread.start()

    # -- Backend protocol ------------------------------------------------------------------
    def versions(self) -> list[str]:
        return list(self._versions)

    def health(self) -> dict:
        with self._cond:
            queued = len(self._queue) + (self._prefilling is not None)
        return {
            "ok": self._thread.is_alive() and not self._closed,
            "running": sum(1 for r in list(self._rows) if not r.done),
            "queued": queued,
            "loaded": True,
        }

    def submit(self, request: GenerationRequest) -> Generation:
        if self._closed:
            raise BackendError("local backend is closed", 503)
        if request.version not in self._versions:
            raise BackendError(f"model version {request.version!r} is not loaded on this backend", 503)
        if request.n < 1:
            raise BackendError("n must be at least 1", 400)
        if request.n > self.max_batch:
            raise BackendError(f"n={request.n} exceeds this backend's batch size {self.max_batch}", 400)
        prompt_ids = self._encode(request.messages)
        if len(prompt_ids) >= self.max_context:
            raise PromptTooLong(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.max_context} tokens "
                f"(including at least one generated token)"
            )
        max_new = max(0, min(request.params.max_tokens, self.max_context - len(prompt_ids)))
        gen = Generation(request.n)
        gen.prompt_tokens = len(prompt_ids)
        req = _Request(request, gen, prompt_ids, max_new)
        with self._cond:
            if self._closed:
                raise BackendError("local backend is closed", 503)
            if len(self._queue) >= self.max_queue:
                raise BackendError(f"local backend overloaded: {len(self._queue)} requests queued", 503)
            self._queue.append(req)
            self._cond.notify_all()
        return gen

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        with self._cond:
            pending = list(self._queue)
            self._queue.clear()
        for req in pending:
            req.gen.fail(BackendError("local backend closed", 503))
        # Requests still running (the worker fails them on exit; this covers a stuck join).
        running = [r.req for r in self._rows] + ([self._prefilling] if self._prefilling else [])
        for req in {id(r): r for r in running}.values():
            if not req.failed:
                req.failed = True
                req.gen.fail(BackendError("local backend closed", 503))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- prompt --------------------------------------------------------------------------
    def _encode(self, messages) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # a template error is the caller's input
            raise BackendError(f"cannot build the prompt from these messages: {exc}", 400) from exc
        with self._encode_lock:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closed and not self._queue and not self._rows and not self._prefilling:
                        self._cond.wait()
                    if self._closed:
                        break
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self._rows:
                        self._decode_step()
                except Exception as exc:  # never leave clients hanging; keep serving
                    log.exception("local backend step failed")
                    self._fail_all(BackendError(f"generation failed: {exc}", 502))
            self._fail_all(BackendError("local backend closed", 503))

    def _fail_request(self, req: _Request, error: BackendError) -> None:
        if not req.failed:
            req.failed = True
            req.gen.fail(error)

    def _fail_all(self, error: BackendError) -> None:
        if self._prefilling is not None:
            self._fail_request(self._prefilling, error)
            self._prefilling = None
        for row in self._rows:
            self._fail_request(row.req, error)
        self._rows = []
        self._kv.reset()

    def _drop_cancelled(self) -> None:
        gone = [i for i, r in enumerate(self._rows) if r.req.gen.cancelled or r.req.failed]
        for i in gone:
            self._fail_request(self._rows[i].req, BackendError("request cancelled", _CANCELLED_STATUS))
        if gone:
            self._remove(gone)

    def _remove(self, slots: list[int]) -> None:
        for src, dst in self._kv.remove(slots):
            self._rows[dst] = self._rows[src]
            self._last[dst] = self._last[src]
            self._pos[dst] = self._pos[src]
        del self._rows[self._kv.rows :]

    # -- admission: prefill newcomers and merge them into the running batch --------------
    def _admit(self) -> None:
        """Prefill queued requests, FIFO, while their drafts fit in the batch.

        A prompt is prefilled in chunks of ``prefill_chunk`` tokens (always cut at the same
        offsets, so a prompt's cache does not depend on other traffic). While other rows
        are decoding, at most ``prefill_budget`` prompt tokens are prefilled per step
        boundary, so a long prompt delays the running rows by one chunk at a time instead
        of stalling them for its whole prefill."""
        budget = self.prefill_budget if self._rows else None
        spent = 0
        while budget is None or spent < budget:
            req = self._prefilling
            if req is None:
                req = self._next_request()
                if req is None:
                    return
                self._prefilling = req
            if req.gen.cancelled:
                self._prefilling = None
                self._fail_request(req, BackendError("request cancelled", _CANCELLED_STATUS))
                continue
            try:
                spent += self._prefill_chunk(req)
            except Exception as exc:
                log.exception("prefill failed")
                self._prefilling = None
                self._fail_request(req, BackendError(f"generation failed: {exc}", 502))

    def _next_request(self) -> _Request | None:
        with self._cond:
            while self._queue:
                req = self._queue[0]
                if req.gen.cancelled:
                    self._queue.popleft()
                    self._fail_request(req, BackendError("request cancelled", _CANCELLED_STATUS))
                    continue
                if len(self._rows) + req.request.n > self.max_batch:
                    return None  # FIFO: wait for free rows
                return self._queue.popleft()
        return None

    def _prefill_chunk(self, req: _Request) -> int:
        """Run the next chunk of ``req``'s prompt; after the last one, sample each draft's
        first token and move the drafts into the running batch. Returns tokens processed."""
        request = req.request
        if req.max_new == 0:  # max_tokens=0: nothing to generate
            self._prefilling = None
            for i in range(request.n):
                self._finish(_Row(req, i, None), "length")
            return 0
        if req.cache is None:
            from transformers import DynamicCache

            req.cache = DynamicCache(config=self.model.config)
        begin = req.prefilled
        end = min(len(req.prompt_ids), (begin // self.prefill_chunk + 1) * self.prefill_chunk)
        out = self.model(
            input_ids=torch.tensor([req.prompt_ids[begin:end]], dtype=torch.long),
            position_ids=torch.arange(begin, end).unsqueeze(0),
            past_key_values=req.cache,
            use_cache=True,
            logits_to_keep=1,
            **self._forward_kwargs([request.version]),
        )
        req.prefilled = end
        if end < len(req.prompt_ids):
            return end - begin

        self._prefilling = None
        cache, req.cache = req.cache, None
        rows = [_Row(req, i, self._make_generator(request.params, i)) for i in range(request.n)]
        tokens = self._sample(out.logits[:, -1, :].expand(request.n, -1), rows)
        first = self._kv.add([(layer.keys, layer.values) for layer in cache.layers], request.n)
        del cache
        for j, row in enumerate(rows):
            self._rows.append(row)
            self._pos[first + j] = row.position
        req.open_rows = request.n
        self._after_tokens(list(range(first, first + request.n)), tokens)
        return end - begin

    # -- one decode step over the running batch --------------------------------------------
    def _decode_step(self) -> None:
        b = len(self._rows)
        kv = self._kv
        mask = kv.begin_step()
        try:
            out = self.model(
                input_ids=self._last[:b].view(b, 1),
                position_ids=self._pos[:b].view(b, 1),
                attention_mask=mask,
                past_key_values=self._step_cache,
                use_cache=True,
                **self._forward_kwargs([r.version for r in self._rows]),
            )
        except Exception:
            kv.valid[:b, kv.end] = False
            raise
        kv.end_step()
        self._pos[:b] += 1
        tokens = self._sample(out.logits[:, -1, :], self._rows)
        self._after_tokens(list(range(b)), tokens)

    def _forward_kwargs(self, versions: list[str]) -> dict:
        """Extra model kwargs for rows of these versions. Today every row is the base model;
        with PEFT adapters this returns ``{"adapter_names": [...]}`` (``"__base__"`` for base)."""
        for v in versions:
            if self._versions.get(v) is not None:
                raise BackendError(f"version {v!r} needs an adapter this backend cannot apply", 503)
        return {}

    # -- sampling -------------------------------------------------------------------------
    @staticmethod
    def _make_generator(params: SamplingParams, index: int) -> torch.Generator | None:
        if params.greedy:
            return None
        g = torch.Generator()
        if params.seed is None:
            g.manual_seed(random.SystemRandom().getrandbits(63))
        else:
            seed = params.seed if index == 0 else (params.seed * _SEED_MIX + index) % (1 << 63)
            g.manual_seed(seed % (1 << 63))
        return g

    @staticmethod
    def _sample(logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """Next token per row: argmax for greedy rows; temperature + top-p (inverse CDF
        with each row's own generator) for the others, vectorised over the rows."""
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

    # -- tokens -> text, finishing rows ---------------------------------------------------
    def _after_tokens(self, slots: list[int], tokens: list[int]) -> None:
        finished: list[int] = []
        for slot, tok in zip(slots, tokens):
            row = self._rows[slot]
            req = row.req
            if req.failed:
                finished.append(slot)
                continue
            try:
                req.gen.completion_tokens[row.index] += 1
                if tok in self._eos:
                    self._finish(row, "stop")
                else:
                    row.ids.append(tok)
                    piece, stopped = self._text.advance(row, self._text.new_text(row), final=False)
                    if stopped:
                        if piece:
                            req.gen.put(row.index, piece)
                        self._finish(row, "stop", flush=False)
                    elif req.gen.completion_tokens[row.index] >= req.max_new:
                        if piece:
                            req.gen.put(row.index, piece)
                        self._finish(row, "length")
                    elif piece:
                        req.gen.put(row.index, piece)
            except Exception as exc:
                log.exception("post-processing failed")
                self._fail_request(req, BackendError(f"generation failed: {exc}", 502))
            if row.done or req.failed:
                finished.append(slot)
            else:
                self._last[slot] = tok
        if finished:
            self._remove(finished)

    def _finish(self, row: _Row, reason: str, flush: bool = True) -> None:
        text = ""
        if flush:
            piece, stopped = self._text.advance(row, self._text.flush(row), final=True)
            text = piece
            if stopped:
                reason = "stop"
        row.done = True
        row.req.open_rows -= 1
        row.req.gen.put(row.index, text, finish_reason=reason)


__all__ = ["LocalBackend", "BASE_VERSION"]
