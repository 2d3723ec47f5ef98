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

Model versions: each row carries its model ``version``: ``"base"`` or the name a LoRA
adapter (PEFT format) was loaded under with :meth:`LocalBackend.load_adapter`. There is
one copy of the base weights. On the first adapter the model is wrapped in a
``PeftModel`` (until then, and again after the last adapter is unloaded, the plain
transformers model runs: the base-only path has no PEFT overhead); adapters are added to
it and deleted from it by name. Rows of different versions share every forward: the
model gets ``adapter_names=[...]``, one per row (``"__base__"`` for the base), and PEFT's
mixed-batch LoRA forward (``LoraLayer._mixed_batch_forward``) runs each linear layer's
base weight over the whole batch, then adds each adapter's low-rank update to its own
rows only. A row's output therefore does not depend on which versions share its batch
(up to the ~1e-5 float noise of batch size discussed in tests/test_local_backend.py).
PEFT's limits for mixed batches apply: no DoRA, no merged adapters, no adapters that
change base weights (``bias`` other than ``"none"``, PiSSA/OLoRA/CorDA/LoftQ
initialisations), which :meth:`LocalBackend.load_adapter` refuses, as well as
``modules_to_save``/trainable tokens (full copies of base modules), aLoRA and
``layer_replication``.

Loading and unloading run on the worker thread between two steps (the caller waits), so
a forward never sees a half-loaded adapter and the decode loop needs no lock. Version
names are immutable: the same name with another path is refused, the same name with the
same path is a no-op.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import logging
import math
import random
import re
import threading
from collections.abc import Callable
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
_PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in ``adapter_names``
_SEED_MIX = 0x9E3779B97F4A7C15  # decorrelates the per-draft seeds of one request
_CANCELLED_STATUS = 499  # "client closed request"


class VersionBusy(BackendError):
    """An adapter cannot be unloaded while requests of its version run or wait (HTTP 409)."""

    def __init__(self, message: str):
        super().__init__(message, status=409)


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
class _Op:
    """A change to the model (load/unload an adapter) that the worker applies between steps."""

    fn: Callable[[], object]
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None


@dataclasses.dataclass(frozen=True)
class _AdapterFiles:
    """An adapter read from disk and checked against the base, ready to be installed."""

    version: str
    path: Path
    config: object  # peft.LoraConfig
    weights: dict  # PEFT state dict (keys without the adapter name)


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

        # Versions: version -> adapter folder (None: base). Changed by the worker (under
        # ``_cond``) when an adapter has been installed or removed, read by request threads.
        self._versions: dict[str, Path | None] = {BASE_VERSION: None}
        self._base_model = self.model  # the transformers model; ``self.model`` is what runs
        self._peft = None  # the PeftModel wrapping ``_base_model`` while any adapter is loaded
        self._adapter_names: dict[str, str] = {}  # version -> PEFT adapter name (worker-owned)
        self._adapter_ids = itertools.count(1)
        self._base_requires_grad: dict[str, bool] = {}
        # Shapes of the base's linear layers, for checking adapters without touching the model.
        self._linear_shapes = {
            name: (m.in_features, m.out_features)
            for name, m in self._base_model.named_modules()
            if isinstance(m, torch.nn.Linear)
        }
        self._ops: collections.deque[_Op] = collections.deque()
        self._queue: collections.deque[_Request] = collections.deque()
        self._prefilling: _Request | None = None  # the request whose prompt is being prefilled
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="local-backend", daemon=True)
        self._thread.start()

    # -- Backend protocol ------------------------------------------------------------------
    def versions(self) -> list[str]:
        """``["base", *adapter versions]``, in the order they were loaded."""
        with self._cond:
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
            if request.version not in self._versions:  # unloaded meanwhile
                raise BackendError(f"model version {request.version!r} is not loaded on this backend", 503)
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
        self._fail_ops()
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

    # -- versions: LoRA adapters -----------------------------------------------------------
    def load_adapter(self, version: str, adapter_path: Path | str) -> None:
        """Serve the LoRA adapter (PEFT format) in ``adapter_path`` as model ``version``.

        Returns once requests for ``version`` can be submitted. Names are immutable: loading
        a loaded version again with the same folder is a no-op, with another folder a
        ``ValueError``; ``"base"`` is reserved. The adapter is read and checked against the
        base model on the calling thread (a ``ValueError`` naming the version and the folder
        when it does not fit: other layer shapes, modules the base does not have, missing
        weights, an unsupported kind of adapter), then installed by the worker between two
        decode steps. Raises ``BackendError`` (503) if the backend is closed."""
        if not isinstance(version, str) or not version.strip():
            raise ValueError("a version name must be a non-empty string")
        if version == BASE_VERSION:
            raise ValueError(f"version name {BASE_VERSION!r} is reserved for the base model")
        path = Path(adapter_path).expanduser().resolve()
        if self._same_version(version, path):
            return
        files = self._read_adapter(version, path)
        self._call_in_worker(lambda: self._install_adapter(files))

    def unload_adapter(self, version: str) -> None:
        """Stop serving adapter ``version`` and free its weights.

        Refused with :class:`VersionBusy` (a ``BackendError``, status 409) while requests of
        that version are queued or running; after it returns, new requests for the version
        get a 503. Unloading a version that is not loaded is a no-op; ``"base"`` cannot be
        unloaded (``ValueError``)."""
        if version == BASE_VERSION:
            raise ValueError("the base model cannot be unloaded")
        self._call_in_worker(lambda: self._remove_adapter(version))

    def _same_version(self, version: str, path: Path) -> bool:
        """True if ``version`` is loaded from ``path``; ValueError if from another folder."""
        with self._cond:
            if version not in self._versions:
                return False
            loaded = self._versions[version]
        if loaded == path:
            return True
        raise ValueError(
            f"version {version!r} is loaded already from {loaded}, not {path}: version names are immutable"
        )

    def _read_adapter(self, version: str, path: Path) -> _AdapterFiles:
        """Read an adapter folder and check it against the base (no model change)."""
        from peft import LoraConfig, load_peft_weights

        def bad(why: str) -> ValueError:
            return ValueError(f"adapter {version!r} at {path} cannot be served on {self.model_dir.name}: {why}")

        config_file = path / "adapter_config.json"
        if not config_file.is_file():
            raise bad("no adapter_config.json (not a PEFT adapter folder)")
        if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            raise bad("no adapter_model.safetensors or adapter_model.bin")
        try:
            raw = json.loads(config_file.read_text())
        except ValueError as exc:
            raise bad(f"adapter_config.json is not valid JSON ({exc})") from None
        if raw.get("peft_type") != "LORA":
            raise bad(f"only LoRA adapters are supported, this one is {raw.get('peft_type')!r}")
        try:
            config = LoraConfig.from_pretrained(str(path))
            weights = load_peft_weights(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - whatever PEFT or safetensors say
            raise bad(f"cannot read it ({type(exc).__name__}: {exc})") from exc

        # What PEFT's mixed-batch forward cannot serve next to other versions.
        init = config.init_lora_weights
        if config.use_dora:
            raise bad("DoRA adapters cannot be served in mixed batches (PEFT limitation)")
        if config.bias != "none":
            raise bad(f"bias={config.bias!r} trains base-model biases, which all versions share")
        if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "corda", "loftq")):
            raise bad(f"init_lora_weights={init!r} changes the base weights; convert it to a plain LoRA first")
        for field, why in (
            ("modules_to_save", "full copies of base modules"),
            ("trainable_token_indices", "trainable token embeddings"),
            ("layer_replication", "layer replication"),
            ("alora_invocation_tokens", "activated LoRA"),
            ("target_parameters", "LoRA on parameters"),
        ):
            if getattr(config, field, None):
                raise bad(f"{field} ({why}) is not supported for serving")

        # Shapes against the base's linear layers: a clear error before the model is touched.
        pattern = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])\.weight$")
        shapes: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, tensor in weights.items():
            m = pattern.match(key)
            if m is None:
                if "lora_embedding_" in key or key.endswith(".lora_B.bias"):
                    continue  # embeddings and lora_bias: left to PEFT's own checks
                raise bad(f"unexpected tensor {key!r} in the adapter weights")
            shapes.setdefault(m.group(1), {})[m.group(2)] = tuple(tensor.shape)
        if not shapes:
            raise bad("the adapter has no LoRA weights")
        for module, ab in sorted(shapes.items()):
            if module not in self._linear_shapes:
                raise bad(f"it adapts module {module!r}, which the base model does not have (or is not linear)")
            in_f, out_f = self._linear_shapes[module]
            a, b = ab.get("A"), ab.get("B")
            if a is None or b is None:
                raise bad(f"module {module!r} has lora_{'A' if a is None else 'B'} missing")
            if len(a) != 2 or len(b) != 2 or a[1] != in_f or b[0] != out_f or a[0] != b[1]:
                raise bad(
                    f"module {module!r} is [{out_f} x {in_f}] in the base, but the adapter has lora_A {list(a)} "
                    f"and lora_B {list(b)} (expected [r, {in_f}] and [{out_f}, r])"
                )
            if not config.rank_pattern and a[0] != config.r:  # (per-module ranks: PEFT checks)
                raise bad(f"module {module!r} has rank {a[0]} in the weights but r={config.r} in the config")
        config.inference_mode = True
        config.init_lora_weights = False  # the weights are loaded below; skip PEFT's init
        return _AdapterFiles(version, path, config, weights)

    def _call_in_worker(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the worker thread between two steps and wait for it."""
        if threading.current_thread() is self._thread:
            return self._run_op_fn(fn)
        op = _Op(fn)
        with self._cond:
            if self._closed or not self._thread.is_alive():
                raise BackendError("local backend is closed", 503)
            self._ops.append(op)
            self._cond.notify_all()
        while not op.done.wait(1.0):
            if not self._thread.is_alive():
                raise BackendError("local backend is closed", 503)
        if op.error is not None:
            raise op.error
        return op.result

    @staticmethod
    def _run_op_fn(fn: Callable[[], object]) -> object:
        # New parameters must be ordinary tensors, not inference tensors of the worker's mode.
        with torch.inference_mode(False), torch.no_grad():
            return fn()

    def _run_ops(self) -> None:
        with self._cond:
            ops = list(self._ops)
            self._ops.clear()
        for op in ops:
            try:
                op.result = self._run_op_fn(op.fn)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                op.error = exc
            op.done.set()

    def _fail_ops(self) -> None:
        with self._cond:
            ops = list(self._ops)
            self._ops.clear()
        for op in ops:
            op.error = BackendError("local backend closed", 503)
            op.done.set()

    def _install_adapter(self, files: _AdapterFiles) -> None:
        """(Worker) add an adapter to the model; on any failure the model is left as it was."""
        from peft import PeftModel, set_peft_model_state_dict

        version, path = files.version, files.path
        if self._same_version(version, path):  # loaded by a concurrent call meanwhile
            return
        name = f"v{next(self._adapter_ids)}"  # PEFT names become module keys: no dots, no clashes
        first = self._peft is None
        try:
            if first:
                # PEFT freezes the base parameters; they are restored when the last adapter goes.
                self._base_requires_grad = {n: p.requires_grad for n, p in self._base_model.named_parameters()}
                self._peft = PeftModel(self._base_model, files.config, adapter_name=name)
            else:
                self._peft.add_adapter(name, files.config)
            result = set_peft_model_state_dict(self._peft, files.weights, adapter_name=name)
            missing = [k for k in result.missing_keys if f".{name}." in k or k.endswith(f".{name}")]
            if missing:
                raise ValueError(f"no weights for {len(missing)} LoRA tensors the config asks for, e.g. {missing[0]}")
            if result.unexpected_keys:
                raise ValueError(
                    f"{len(result.unexpected_keys)} tensors match no module the config targets, "
                    f"e.g. {result.unexpected_keys[0]}"
                )
            self._peft.eval()  # new LoRA modules are created in training mode
        except Exception as exc:
            self._drop_adapter_modules(name, everything=first)
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            why = " ".join(line.strip() for line in lines[:2])
            if len(lines) > 2:
                why += f" (and {len(lines) - 2} more)"
            raise ValueError(
                f"adapter {version!r} at {path} does not fit the base model {self.model_dir.name}: {why}"
            ) from exc
        self._adapter_names[version] = name
        self.model = self._peft
        with self._cond:
            self._versions[version] = path
        log.info("loaded adapter %s from %s", version, path)

    def _remove_adapter(self, version: str) -> None:
        """(Worker) delete an adapter unless requests of its version are queued or running."""
        def live(req: _Request) -> bool:  # cancelled ones are dropped before the next forward
            return req.request.version == version and not (req.failed or req.gen.cancelled)

        with self._cond:
            if version not in self._versions:
                return
            queued = sum(1 for r in self._queue if live(r))
            if self._prefilling is not None and live(self._prefilling):
                queued += 1
            running = len({id(r.req) for r in self._rows if live(r.req)})
            if queued or running:
                raise VersionBusy(
                    f"version {version!r} is in use ({running} running, {queued} queued requests); "
                    f"route traffic away from it and retry"
                )
            del self._versions[version]  # from now on, submit() answers 503
        name = self._adapter_names.pop(version)
        if self._adapter_names:
            if self._peft.active_adapter == name:  # PEFT wants an active adapter; rows never use it
                self._peft.set_adapter(next(iter(self._adapter_names.values())), inference_mode=True)
            self._peft.delete_adapter(name)
        else:
            self._drop_adapter_modules(name, everything=True)
        log.info("unloaded adapter %s", version)

    def _drop_adapter_modules(self, name: str, everything: bool) -> None:
        """(Worker) remove adapter ``name`` from the model; with ``everything``, remove all LoRA
        layers and go back to the plain transformers model (the base-only fast path)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        peft = self._peft
        if not everything:
            if peft is not None and name in peft.peft_config:
                peft.delete_adapter(name)
            else:  # injection failed half-way: PEFT dropped the config, maybe not the layers
                for module in peft.modules() if peft is not None else ():
                    if isinstance(module, BaseTunerLayer) and name in getattr(module, "lora_A", {}):
                        module.delete_adapter(name)
            return
        base = self._base_model
        for qualified, module in list(base.named_modules()):
            if isinstance(module, BaseTunerLayer) and qualified:
                parent, _, child = qualified.rpartition(".")
                setattr(base.get_submodule(parent), child, module.get_base_layer())
        if "peft_config" in vars(base):
            del base.peft_config
        for n, p in base.named_parameters():
            p.requires_grad_(self._base_requires_grad.get(n, p.requires_grad))
        self._peft = None
        self.model = base
        self._adapter_names.clear()

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
                    while (
                        not self._closed and not self._queue and not self._rows and not self._prefilling
                        and not self._ops
                    ):
                        self._cond.wait()
                    if self._closed:
                        break
                self._run_ops()  # adapter changes happen here, between two steps
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self._rows:
                        self._decode_step()
                except Exception as exc:  # never leave clients hanging; keep serving
                    log.exception("local backend step failed")
                    self._fail_all(BackendError(f"generation failed: {exc}", 502))
            self._fail_all(BackendError("local backend closed", 503))
        self._fail_ops()

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

            req.cache = DynamicCache(config=self._base_model.config)
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
        """Extra model kwargs for rows of these versions: nothing while no adapter is loaded
        (plain transformers model), else PEFT's per-row ``adapter_names`` (``"__base__"`` for
        the base model), which makes one forward serve rows of different versions."""
        if self._peft is None:
            for v in versions:
                if v != BASE_VERSION:
                    raise BackendError(f"model version {v!r} is not loaded on this backend", 503)
            return {}
        names = self._adapter_names
        try:
            return {"adapter_names": [_PEFT_BASE if v == BASE_VERSION else names[v] for v in versions]}
        except KeyError as exc:
            raise BackendError(f"model version {exc.args[0]!r} is not loaded on this backend", 503) from None

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


__all__ = ["LocalBackend", "BASE_VERSION", "VersionBusy"]
