""":class:`LocalBackend`: the public face of the in-process backend.

It loads the model and tokenizer, validates and encodes requests on the caller's thread
(prompt length against the context, ``n`` against the batch, ``logit_bias`` token ids
against the vocabulary; tools rendered into the prompt and the grammar of a
``response_format`` or of forced tool calls compiled, ``tools.py``), and hands them to the
:class:`~serving.backends.local.engine.Engine`, whose worker thread does all the model
work, reusing the KV of shared prompt prefixes (``prefix_cache.py``, ``prefix_cache_mb``
of memory; its counters are in :meth:`LocalBackend.health`). Adapter lifecycle:
:meth:`LocalBackend.load_adapter` reads and checks the adapter on the calling thread, then
has the worker install it between two decode steps (the caller waits);
:meth:`LocalBackend.unload_adapter` has the worker retire the version (refused with
:class:`~serving.backends.local.adapters.VersionBusy` while it is in use), remove it and
forget its cached prefixes. Version names are immutable: the same name with another path
is refused, the same name with the same path is a no-op.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from serving.backends.base import FEATURES, BackendError, Generation, GenerationRequest, PromptTooLong
from serving.backends.local.adapters import BASE_VERSION, AdapterFiles, Adapters
from serving.backends.local.detokenize import TextTail
from serving.backends.local.engine import Engine
from serving.backends.local.grammar import Constraint, Grammars
from serving.backends.local.logprobs import TokenBytes
from serving.backends.local.prefix_cache import PrefixCache
from serving.backends.local.rows import Request
from serving.backends.local.tools import generation_for, render_messages, tool_grammar

log = logging.getLogger(__name__)

#: memory for the KV of shared prompt prefixes (``prefix_cache.py``); ~45 KB a token for
#: SmolLM2-135M in fp32, so 256 MB keep ~5,800 tokens
DEFAULT_PREFIX_CACHE_MB = 256


def _eos_ids(model, tokenizer) -> set[int]:
    """Ids that end a draft: the tokenizer's EOS (<|im_end|> for SmolLM2) and whatever the
    generation config lists."""
    eos = set()
    for tid in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")):
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            eos.add(tid)
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    eos.update([gen_eos] if isinstance(gen_eos, int) else (gen_eos or []))
    return eos


class LocalBackend:
    """In-process transformers backend with continuous batching (see the package docstring).

    ``adapters`` holds the model (``adapters.model`` is what runs) and its LoRA adapters;
    ``engine`` the queue, the running batch and the worker thread.
    """

    name = "local"
    supports = FEATURES  # tools, response_format, logprobs, penalties, logit_bias: all decoded here

    def __init__(
        self,
        model_dir: Path | str,
        *,
        max_batch: int = 16,
        max_queue: int = 256,
        max_context: int | None = None,
        torch_threads: int | None = None,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
    ):
        from serving.model_store import load_model

        if max_batch < 1 or max_queue < 0 or prefix_cache_mb < 0:
            raise ValueError("max_batch must be >= 1, max_queue >= 0 and prefix_cache_mb >= 0")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.model_dir = Path(model_dir)
        model, self.tokenizer = load_model(self.model_dir)
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.max_context = min(max_context, limit) if max_context else limit
        self.max_batch = max_batch
        # Request threads encode prompts under a lock (a fast tokenizer must not be used
        # concurrently); the worker decodes with its own copy (TextTail.for_tokenizer).
        self._encode_lock = threading.Lock()
        self.adapters = Adapters(model, self.model_dir.name)
        eos = _eos_ids(model, self.tokenizer)
        # response_format: compiled on the request threads (grammar.py)
        self.grammars = Grammars(self.tokenizer, eos, model.config.vocab_size, tokenizer_lock=self._encode_lock)
        self.vocab_size = model.config.vocab_size
        self.engine = Engine(
            self.adapters,
            TextTail.for_tokenizer(self.tokenizer),
            eos,
            max_batch=max_batch,
            max_queue=max_queue,
            token_bytes=TokenBytes(self.tokenizer, self.vocab_size),
            prefix_cache=PrefixCache(int(prefix_cache_mb * 2**20)),
        )
        self.engine.start()

    # -- Backend protocol ------------------------------------------------------------------
    def versions(self) -> list[str]:
        """``["base", *adapter versions]``, in the order they were loaded."""
        return self.engine.versions()

    def health(self) -> dict:
        return {**self.engine.health(), "loaded": True}

    def submit(self, request: GenerationRequest) -> Generation:
        engine = self.engine
        if engine.closed:
            raise BackendError("local backend is closed", 503)
        if not engine.serves(request.version):
            raise BackendError(f"model version {request.version!r} is not loaded on this backend", 503)
        if request.n < 1:
            raise BackendError("n must be at least 1", 400)
        if request.n > self.max_batch:
            raise BackendError(f"n={request.n} exceeds this backend's batch size {self.max_batch}", 400)
        bad = [t for t, _ in request.params.logit_bias if t >= self.vocab_size]
        if bad:
            raise BackendError(f"'logit_bias' names token {bad[0]}, past this model's vocabulary "
                               f"(ids 0 to {self.vocab_size - 1})", 400, param="logit_bias")
        fmt = request.params.response_format
        schema = fmt.schema if fmt is not None else None
        tools = tool_grammar(request, schema)  # forced calls, or calls | the document
        grammars = self.grammars.for_constraint(  # 400 if unusable
            tools or (Constraint.json_schema(schema) if schema is not None else None), request.n)
        prompt_ids = self._encode(render_messages(request))
        if len(prompt_ids) >= self.max_context:
            raise PromptTooLong(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.max_context} tokens "
                f"(including at least one generated token)"
            )
        max_new = max(0, min(request.params.max_tokens, self.max_context - len(prompt_ids)))
        gen = generation_for(request, forced=tools is not None and request.effective_tool_choice != "auto")
        gen.prompt_tokens = len(prompt_ids)
        engine.enqueue(Request(request, gen, prompt_ids, max_new, grammars=grammars))
        return gen

    def close(self) -> None:
        self.engine.close()

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
        files = self.adapters.read(version, path)
        self.engine.call(lambda: self._install(files))

    def unload_adapter(self, version: str) -> None:
        """Stop serving adapter ``version`` and free its weights.

        Refused with :class:`VersionBusy` (a ``BackendError``, status 409) while requests of
        that version are queued or running; after it returns, new requests for the version
        get a 503. Unloading a version that is not loaded is a no-op; ``"base"`` cannot be
        unloaded (``ValueError``)."""
        if version == BASE_VERSION:
            raise ValueError("the base model cannot be unloaded")
        self.engine.call(lambda: self._uninstall(version))

    def _same_version(self, version: str, path: Path) -> bool:
        """True if ``version`` is loaded from ``path``; ValueError if from another folder."""
        loaded = self.engine.adapter_path(version)
        if loaded is None:
            return False
        if loaded == path:
            return True
        raise ValueError(
            f"version {version!r} is loaded already from {loaded}, not {path}: version names are immutable"
        )

    def _install(self, files: AdapterFiles) -> None:
        """(Worker) add an adapter to the model, then admit requests for its version."""
        if self._same_version(files.version, files.path):  # loaded by a concurrent call meanwhile
            return
        self.adapters.install(files)
        self.engine.add_version(files.version, files.path)
        log.info("loaded adapter %s from %s", files.version, files.path)

    def _uninstall(self, version: str) -> None:
        """(Worker) stop admitting ``version`` unless it is in use, then remove its adapter."""
        if self.engine.retire_version(version):
            owner = self.adapters.kv_owner(version)
            self.adapters.remove(version)
            self.engine.prefix_cache.drop(owner)  # its KV serves no one any more
            log.info("unloaded adapter %s", version)

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


__all__ = ["LocalBackend"]
