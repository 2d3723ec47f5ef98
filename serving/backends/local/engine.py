"""The scheduler: one worker thread that owns the model and runs the decode loop.

Why one thread: with a single owner, the model, the batch's KV cache and the rows need no
locks (request threads only touch the queue and the version registry, under
``Engine._cond``), and throughput comes from batching rows into one forward, not from
running forwards side by side.

Continuous batching: every draft of every request is a row of the running batch. At each
step boundary the worker

1. applies pending changes to the model (loading or unloading an adapter: the caller
   waits, see :meth:`Engine.call`), so a forward never sees a half-loaded adapter,
2. drops the rows whose client went away (``Generation.cancelled``),
3. admits queued requests, FIFO, while there are free rows: each prompt is prefilled on
   its own (batch of one, no padding, in chunks cut at fixed offsets, so a prompt's
   prefill is bitwise the same whatever else runs beside it; only the part of it that
   is not in the prefix cache is run, see below; while rows are decoding, at most
   ``prefill_budget`` prompt tokens per step boundary, so a long prompt never stalls them
   for long), except that the short last chunks of prompts waiting together share one
   forward (:meth:`Engine._admit` says why and what it costs in exactness); its first
   token is sampled, and its KV cache is copied into the running batch (``n`` times, one
   per draft; see ``kv_cache.py``),
4. runs one decode step for all rows together (rows whose prompts start alike attend to
   one copy of the shared part: ``attention.py``), samples the next token of each row with
   its own parameters (``sampling.py``; the chosen token's log-probability for rows that
   asked, ``logprobs.py``), turns tokens into text (``detokenize.py``) and finishes rows
   (EOS, stop string, ``max_tokens``, context full, the document of a ``response_format``
   or the forced tool calls complete: ``grammar.py``), whose slots are freed at once.

A request's prefill starts from the KV of its longest cached prefix (``prefix_cache.py``:
whole blocks computed earlier by the same model version, a fresh ``DynamicCache`` filled
with copies) and runs only the rest, its position ids continuing from the cached length;
after the prompt's last chunk, its whole blocks are stored for the requests that follow.
With nothing cached it starts from an empty ``DynamicCache`` at offset 0
(:meth:`Engine._prefill_chunk`). The engine also keeps the registry of the
versions it admits requests for, because unloading one must be refused while the queue or
the batch holds its requests (:class:`~serving.backends.local.adapters.VersionBusy`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from serving.backends.base import BackendError
from serving.backends.local.grammar import advance as advance_grammar
from serving.backends.local.adapters import BASE_VERSION, Adapters, VersionBusy
from serving.backends.local.attention import install as install_attention, installed as attention_installed
from serving.backends.local.detokenize import TextTail
from serving.backends.local.kv_cache import BatchKV, StepCache
from serving.backends.local.logprobs import TokenBytes, token_logprobs
from serving.backends.local.prefix_cache import PrefixCache
from serving.backends.local.rows import Request, Row
from serving.backends.local.sampling import make_generator, sample

log = logging.getLogger(__name__)

_CANCELLED_STATUS = 499  # "client closed request"


@dataclasses.dataclass(eq=False)
class _Op:
    """A change to the model (load/unload an adapter) that the worker applies between steps."""

    fn: Callable[[], object]
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None


class Engine:
    """The request queue, the running batch and the worker thread that decodes it."""

    #: prompts are prefilled in chunks of this many tokens ...
    prefill_chunk = 512
    #: ... and at most this many prompt tokens per step boundary while rows are decoding
    prefill_budget = 512
    #: short last chunks of queued prompts share one forward (:meth:`_admit`)
    join_prefills = True

    def __init__(self, adapters: Adapters, text: TextTail, eos: set[int], *, max_batch: int, max_queue: int,
                 token_bytes: TokenBytes | None = None, prefix_cache: PrefixCache | None = None):
        self.adapters = adapters
        self.text = text
        self.eos = eos  # ids that end a draft
        self.token_bytes = token_bytes  # for ``logprobs`` (None: a request asking for them gets none)
        self.max_batch = max_batch
        self.max_queue = max_queue
        # Rows that share a prompt prefix hold one copy of its KV and attend to it together
        # (cascade attention: attention.py, kv_cache.py).
        install_attention(adapters.base_model)
        self.kv = BatchKV.for_model(adapters.base_model, max_batch,
                                    share_prefixes=attention_installed(adapters.base_model))
        # KV of prompt prefixes, reused across requests (None or max_bytes 0: off)
        self.prefix_cache = prefix_cache if prefix_cache is not None else PrefixCache(0)
        self._step_cache = StepCache(self.kv)
        self.rows: list[Row] = []
        # Per-slot tensors mirroring ``self.rows``.
        self._last = torch.zeros(max_batch, dtype=torch.long)
        self._pos = torch.zeros(max_batch, dtype=torch.long)
        # Versions: version -> adapter folder (None: base). Changed by the worker (under
        # ``_cond``) when an adapter has been installed or removed, read by request threads.
        self._versions: dict[str, Path | None] = {BASE_VERSION: None}
        self._ops: collections.deque[_Op] = collections.deque()
        self._queue: collections.deque[Request] = collections.deque()
        self._prefilling: Request | None = None  # the request whose prompt is being prefilled
        self._together: list[Request] = []  # requests out of the queue in a joint prefill (_admit)
        self._cond = threading.Condition()
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="local-backend", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- request threads -------------------------------------------------------------------
    def enqueue(self, req: Request) -> None:
        """Queue ``req`` for admission; 503 if closed, its version is gone or the queue is full."""
        version = req.request.version
        with self._cond:
            if self.closed:
                raise BackendError("local backend is closed", 503)
            if version not in self._versions:  # unloaded meanwhile
                raise BackendError(f"model version {version!r} is not loaded on this backend", 503)
            if len(self._queue) >= self.max_queue:
                raise BackendError(f"local backend overloaded: {len(self._queue)} requests queued", 503)
            self._queue.append(req)
            self._cond.notify_all()

    def serves(self, version: str) -> bool:
        """Whether requests for ``version`` are admitted (a quick check, without the lock)."""
        return version in self._versions

    def versions(self) -> list[str]:
        """``["base", *adapter versions]``, in the order they were loaded."""
        with self._cond:
            return list(self._versions)

    def adapter_path(self, version: str) -> Path | None:
        """The folder adapter ``version`` was loaded from; None if it is not loaded."""
        with self._cond:
            return self._versions.get(version)

    def health(self) -> dict:
        with self._cond:
            queued = len(self._queue) + (self._prefilling is not None) + len(self._together)
        return {
            "ok": self._thread.is_alive() and not self.closed,
            "running": sum(1 for r in list(self.rows) if not r.done),
            "queued": queued,
            "prefix_cache": self.prefix_cache.stats(),
            # rows that attended to the batch's shared prompt prefix (kv_cache.py, attention.py)
            "shared_prefix": {"rows": self.kv.shared_rows, "tokens": self.kv.shared_tokens},
        }

    def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the worker thread between two steps and wait for it."""
        if threading.current_thread() is self._thread:
            return self._run_op_fn(fn)
        op = _Op(fn)
        with self._cond:
            if self.closed or not self._thread.is_alive():
                raise BackendError("local backend is closed", 503)
            self._ops.append(op)
            self._cond.notify_all()
        while not op.done.wait(1.0):
            if not self._thread.is_alive():
                raise BackendError("local backend is closed", 503)
        if op.error is not None:
            raise op.error
        return op.result

    def close(self) -> None:
        with self._cond:
            self.closed = True
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
        running = [r.req for r in self.rows] + ([self._prefilling] if self._prefilling else []) + self._together
        for req in {id(r): r for r in running}.values():
            if not req.failed:
                req.failed = True
                req.gen.fail(BackendError("local backend closed", 503))

    # -- the version registry (worker, inside :meth:`call`) -----------------------------------
    def add_version(self, version: str, path: Path) -> None:
        with self._cond:
            self._versions[version] = path

    def retire_version(self, version: str) -> bool:
        """Stop admitting ``version``; False if it is not loaded. Raises :class:`VersionBusy`
        while requests of that version are queued or running."""
        def live(req: Request) -> bool:  # cancelled ones are dropped before the next forward
            return req.request.version == version and not (req.failed or req.gen.cancelled)

        with self._cond:
            if version not in self._versions:
                return False
            queued = sum(1 for r in self._queue if live(r))
            if self._prefilling is not None and live(self._prefilling):
                queued += 1
            running = len({id(r.req) for r in self.rows if live(r.req)})
            if queued or running:
                raise VersionBusy(
                    f"version {version!r} is in use ({running} running, {queued} queued requests); "
                    f"route traffic away from it and retry"
                )
            del self._versions[version]  # from now on, submit() answers 503
        return True

    # -- worker ----------------------------------------------------------------------------
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

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while (
                        not self.closed and not self._queue and not self.rows and not self._prefilling
                        and not self._ops
                    ):
                        self._cond.wait()
                    if self.closed:
                        break
                self._run_ops()  # adapter changes happen here, between two steps
                try:
                    self._drop_cancelled()
                    self._admit()
                    if self.rows:
                        self._decode_step()
                except Exception as exc:  # never leave clients hanging; keep serving
                    log.exception("local backend step failed")
                    self._fail_all(BackendError(f"generation failed: {exc}", 502))
            self._fail_all(BackendError("local backend closed", 503))
        self._fail_ops()

    def _fail_request(self, req: Request, error: BackendError) -> None:
        if not req.failed:
            req.failed = True
            req.gen.fail(error)

    def _fail_all(self, error: BackendError) -> None:
        if self._prefilling is not None:
            self._fail_request(self._prefilling, error)
            self._prefilling = None
        for row in self.rows:
            self._fail_request(row.req, error)
        self.rows = []
        self.kv.reset()

    def _drop_cancelled(self) -> None:
        gone = [i for i, r in enumerate(self.rows) if r.req.gen.cancelled or r.req.failed]
        for i in gone:
            self._fail_request(self.rows[i].req, BackendError("request cancelled", _CANCELLED_STATUS))
        if gone:
            self._remove(gone)

    def _remove(self, slots: list[int]) -> None:
        for src, dst in self.kv.remove(slots):
            self.rows[dst] = self.rows[src]
            self._last[dst] = self._last[src]
            self._pos[dst] = self._pos[src]
        del self.rows[self.kv.rows :]

    # -- admission: prefill newcomers and merge them into the running batch --------------
    def _admit(self) -> None:
        """Prefill queued requests, FIFO, while their drafts fit in the batch.

        A prompt is prefilled in chunks of ``prefill_chunk`` tokens (always cut at the same
        offsets, so a prompt's cache does not depend on the traffic running beside it;
        what the prefix cache already holds is skipped). While other rows
        are decoding, at most ``prefill_budget`` prompt tokens are prefilled per step
        boundary, so a long prompt delays the running rows by one chunk at a time instead
        of stalling them for its whole prefill.

        Short last chunks are run together: when the head of the queue has only its last
        chunk to go, the requests queued behind it whose whole remaining prompt is short
        join it in one forward of at most ``prefill_chunk`` tokens, padding included
        (:meth:`_prefill_together`). Why: after the prefix cache, a chart request has ~46
        prompt tokens left, and a forward over 46 tokens costs about what one over 400 does
        beyond its arithmetic (reading the weights): measured, 16 such remainders took
        1.9 s one by one and 1.4 s in groups (2 threads). A request prefilled on its own
        runs exactly as before; one run together with others gets its KV from a batch of
        several rows, whose float sums differ from a batch of one by ~1e-5 (as decode steps
        do, tests/test_local_backend.py)."""
        budget = self.prefill_budget if self.rows else None
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
            group, after = [req], None
            try:
                if req.cache is None and req.max_new > 0:
                    self._start_prefill(req)
                if self.join_prefills and req.max_new > 0 and self._last_chunk(req) <= self.prefill_chunk // 2:
                    followers, after = self._gather(req)
                    group += followers
                    self._together = followers + ([after] if after is not None else [])  # for close()
                spent += self._prefill_together(group) if len(group) > 1 else self._prefill_chunk(req)
            except Exception as exc:
                log.exception("prefill failed")
                for r in group:
                    if self._prefilling is r:
                        self._prefilling = None
                    self._fail_request(r, BackendError(f"generation failed: {exc}", 502))
            finally:
                self._together = []
            if after is not None:
                self._prefilling = after

    def _last_chunk(self, req: Request) -> int:
        """Tokens of ``req``'s prompt left to prefill if they are its last chunk, else a
        number larger than any chunk."""
        left = len(req.prompt_ids) - req.prefilled
        chunk_end = (req.prefilled // self.prefill_chunk + 1) * self.prefill_chunk
        return left if req.prefilled + left <= chunk_end else self.prefill_chunk + 1

    def _gather(self, head: Request) -> tuple[list[Request], Request | None]:
        """Queued requests to prefill with ``head`` (whose last chunk is next): FIFO, while
        their drafts fit in the batch and the group's padded size (rows x the longest
        remainder) stays within ``prefill_chunk``. Returns them, and the first one taken
        that did not fit (its prefix-cache lookup done; it is prefilled next), if any."""
        drafts = len(self.rows) + head.request.n
        longest = self._last_chunk(head)
        group: list[Request] = []
        while True:
            with self._cond:
                if not self._queue:
                    return group, None
                nxt = self._queue[0]
                if nxt.gen.cancelled:
                    self._queue.popleft()
                    self._fail_request(nxt, BackendError("request cancelled", _CANCELLED_STATUS))
                    continue
                if drafts + nxt.request.n > self.max_batch or nxt.max_new == 0:
                    return group, None
                self._queue.popleft()
            self._together = [*group, nxt]  # out of the queue, for close() (``head`` is _prefilling)
            try:
                self._start_prefill(nxt)
            except Exception as exc:
                log.exception("prefill failed")
                self._fail_request(nxt, BackendError(f"generation failed: {exc}", 502))
                continue
            left = self._last_chunk(nxt)
            if (len(group) + 2) * max(longest, left) > self.prefill_chunk:
                return group, nxt
            group.append(nxt)
            drafts += nxt.request.n
            longest = max(longest, left)

    def _next_request(self) -> Request | None:
        with self._cond:
            while self._queue:
                req = self._queue[0]
                if req.gen.cancelled:
                    self._queue.popleft()
                    self._fail_request(req, BackendError("request cancelled", _CANCELLED_STATUS))
                    continue
                if len(self.rows) + req.request.n > self.max_batch:
                    return None  # FIFO: wait for free rows
                return self._queue.popleft()
        return None

    def _prefill_chunk(self, req: Request) -> int:
        """Run the next chunk of ``req``'s prompt; after the last one, sample each draft's
        first token and move the drafts into the running batch. Returns tokens processed."""
        request = req.request
        if req.max_new == 0:  # max_tokens=0: nothing to generate
            self._prefilling = None
            for i in range(request.n):
                self._finish(Row(req, i, None), "length")
            return 0
        if req.cache is None:
            self._start_prefill(req)
        begin = req.prefilled
        end = min(len(req.prompt_ids), (begin // self.prefill_chunk + 1) * self.prefill_chunk)
        out = self.adapters.model(
            input_ids=torch.tensor([req.prompt_ids[begin:end]], dtype=torch.long),
            position_ids=torch.arange(begin, end).unsqueeze(0),
            past_key_values=req.cache,
            use_cache=True,
            logits_to_keep=1,
            **self.adapters.forward_kwargs([request.version]),
        )
        req.prefilled = end
        if end < len(req.prompt_ids):
            return end - begin

        if self._prefilling is req:
            self._prefilling = None
        cache, req.cache = req.cache, None
        self._enter_batch(req, [(layer.keys, layer.values) for layer in cache.layers], out.logits[:, -1, :])
        return end - begin

    def _prefill_together(self, group: list[Request]) -> int:
        """The last chunks of several prompts in one forward; then each request enters the
        batch as after :meth:`_prefill_chunk`. Returns the padded tokens processed.

        Each prompt's cached part (its prefill cache, possibly empty) is right-aligned at
        column ``P`` (the longest) and its remaining tokens at the end of the ``S`` new
        columns (the longest remainder), so every row's last prompt token is the forward's
        last position. A 4-D mask lets each real token see its own prompt only; a padding
        token sees just itself (a row of nothing but masked scores would make NaNs)."""
        from transformers import DynamicCache

        cached = [r.prefilled for r in group]
        left = [len(r.prompt_ids) - r.prefilled for r in group]
        k, P, S = len(group), max(cached), max(left)
        past = []
        if P:
            for layer in range(self.kv.n_layers):
                shape = (k, self.kv.kv_heads, P, self.kv.head_dim)
                keys, values = torch.zeros(shape, dtype=self.kv.dtype), torch.zeros(shape, dtype=self.kv.dtype)
                for i, r in enumerate(group):
                    if cached[i]:
                        keys[i, :, P - cached[i] :] = r.cache.layers[layer].keys[0]
                        values[i, :, P - cached[i] :] = r.cache.layers[layer].values[0]
                past.append((keys, values))
        for r in group:
            r.cache = None
        ids = torch.zeros(k, S, dtype=torch.long)
        positions = torch.zeros(k, S, dtype=torch.long)
        column = torch.arange(P + S)
        mask = column.view(1, 1, -1) <= (P + torch.arange(S)).view(1, -1, 1)  # causal, [1, S, P + S]
        mask = mask.repeat(k, 1, 1)
        for i, r in enumerate(group):
            pad = S - left[i]
            ids[i, pad:] = torch.tensor(r.prompt_ids[cached[i] :], dtype=torch.long)
            positions[i, pad:] = torch.arange(cached[i], len(r.prompt_ids))
            mask[i] &= ((column >= P - cached[i]) & (column < P)) | (column >= P + pad)
            mask[i, torch.arange(pad), P + torch.arange(pad)] = True
        cache = DynamicCache(past, config=self.adapters.base_model.config) if past else \
            DynamicCache(config=self.adapters.base_model.config)
        out = self.adapters.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask.unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **self.adapters.forward_kwargs([r.request.version for r in group]),
        )
        for i, r in enumerate(group):
            r.prefilled = len(r.prompt_ids)
            keep = torch.cat([torch.arange(P - cached[i], P), torch.arange(P + S - left[i], P + S)])
            layers = [(layer.keys[i : i + 1].index_select(2, keep), layer.values[i : i + 1].index_select(2, keep))
                      for layer in cache.layers]
            if self._prefilling is r:
                self._prefilling = None
            self._enter_batch(r, layers, out.logits[i : i + 1, -1, :])
        return k * S

    def _enter_batch(self, req: Request, layers: list[tuple[torch.Tensor, torch.Tensor]],
                     logits: torch.Tensor) -> None:
        """A prompt is prefilled: store its blocks in the prefix cache, sample each draft's
        first token from ``logits`` (``[1, vocab]``, its last position) and move the drafts
        into the running batch."""
        request = req.request
        owner = self.adapters.kv_owner(request.version)
        self.prefix_cache.insert(owner, req.prompt_ids, layers)
        grammars = req.grammars or [None] * request.n
        rows = [Row(req, i, make_generator(request.params, i), grammars[i]) for i in range(request.n)]
        logits = logits.expand(request.n, -1)
        tokens = sample(logits, rows)
        self._note_logprobs(logits, rows, tokens)
        first = self.kv.add(layers, request.n, prompt_ids=req.prompt_ids, owner=owner)
        for j, row in enumerate(rows):
            self.rows.append(row)
            self._pos[first + j] = row.position
        req.open_rows = request.n
        self._after_tokens(list(range(first, first + request.n)), tokens)

    def _start_prefill(self, req: Request) -> None:
        """Give ``req`` its prefill cache: the KV of its longest cached prefix (copies; its
        prefill then starts after it), or an empty one."""
        from transformers import DynamicCache

        config = self.adapters.base_model.config
        cached, layers = self.prefix_cache.lookup(self.adapters.kv_owner(req.request.version), req.prompt_ids)
        req.cache = DynamicCache(layers, config=config) if layers else DynamicCache(config=config)
        req.prefilled = cached

    # -- one decode step over the running batch --------------------------------------------
    def _decode_step(self) -> None:
        b = len(self.rows)
        kv = self.kv
        mask = kv.begin_step()
        extra = self.adapters.forward_kwargs([r.version for r in self.rows])
        shared = kv.shared_step(mask)
        if shared is not None:
            extra["shared_prefix"] = shared  # reaches attention.attention through the model's kwargs
        try:
            out = self.adapters.model(
                input_ids=self._last[:b].view(b, 1),
                position_ids=self._pos[:b].view(b, 1),
                attention_mask=mask,
                past_key_values=self._step_cache,
                use_cache=True,
                **extra,
            )
        except Exception:
            kv.valid[:b, kv.end] = False
            raise
        kv.end_step()
        self._pos[:b] += 1
        tokens = sample(out.logits[:, -1, :], self.rows)
        self._note_logprobs(out.logits[:, -1, :], self.rows, tokens)
        self._after_tokens(list(range(b)), tokens)

    def _note_logprobs(self, logits: torch.Tensor, rows: list[Row], tokens: list[int]) -> None:
        """Keep the chosen tokens' log-probabilities on the rows that asked (not EOS's: it is
        no text); they go out with the row's next piece."""
        if self.token_bytes is None:
            return
        for i, entry in token_logprobs(logits, rows, tokens, self.token_bytes).items():
            if tokens[i] not in self.eos:
                rows[i].logprobs.append(entry)

    # -- tokens -> text, finishing rows ---------------------------------------------------
    def _after_tokens(self, slots: list[int], tokens: list[int]) -> None:
        finished: list[int] = []
        for slot, tok in zip(slots, tokens):
            row = self.rows[slot]
            req = row.req
            if req.failed:
                finished.append(slot)
                continue
            try:
                req.gen.completion_tokens[row.index] += 1
                if tok in self.eos:
                    self._finish(row, "stop")
                else:
                    row.ids.append(tok)
                    complete = row.grammar is not None and advance_grammar(row, tok)
                    piece, stopped = self.text.advance(row, self.text.new_text(row), final=False)
                    if stopped:
                        if piece:
                            self._put(row, piece)
                        self._finish(row, "stop", flush=False)
                    elif complete:  # the grammar's document is whole: nothing may follow
                        if piece:
                            self._put(row, piece)
                        self._finish(row, "stop")
                    elif req.gen.completion_tokens[row.index] >= req.max_new:
                        if piece:
                            self._put(row, piece)
                        self._finish(row, "length")
                    elif piece:
                        self._put(row, piece)
            except Exception as exc:
                log.exception("post-processing failed")
                self._fail_request(req, BackendError(f"generation failed: {exc}", 502))
            if row.done or req.failed:
                finished.append(slot)
            else:
                self._last[slot] = tok
        if finished:
            self._remove(finished)

    def _finish(self, row: Row, reason: str, flush: bool = True) -> None:
        text = ""
        if flush:
            piece, stopped = self.text.advance(row, self.text.flush(row), final=True)
            text = piece
            if stopped:
                reason = "stop"
        row.done = True
        row.req.open_rows -= 1
        self._put(row, text, reason)

    @staticmethod
    def _put(row: Row, text: str, finish_reason: str | None = None) -> None:
        """Hand a piece of the row's draft to its request, with the log-probabilities of the
        tokens behind it."""
        logprobs, row.logprobs = tuple(row.logprobs), []
        row.req.gen.put(row.index, text, finish_reason, logprobs=logprobs)


__all__ = ["Engine"]
