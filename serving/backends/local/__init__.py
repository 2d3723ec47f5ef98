"""Serve the model in-process with transformers on the CPU, with continuous batching.

One worker thread owns the model and decodes every running draft together: requests join
the batch at step boundaries and leave it as soon as they finish, so a short answer never
waits for a long one and the model always runs on as many rows as there is work. Each
draft of each request is a *row*; rows of different model versions (the base, LoRA
adapters) share every forward.

One concept a module, in the order a request meets them:

- ``backend.py``: :class:`LocalBackend`, the public API (``submit``, ``load_adapter``,
  ``unload_adapter``, ``versions``, ``health``, ``close``); checks and encodes requests on
  the caller's thread.
- ``engine.py``: the scheduler: the queue, admission with chunked prefill, decode steps,
  finishing rows, the worker thread, the registry of served versions.
- ``rows.py``: the state of a request and of each of its drafts (rows) in flight.
- ``kv_cache.py``: the preallocated, left-padded KV cache of the running batch and the
  transformers ``Cache`` adapters the model writes through; one copy of a prompt prefix
  that the rows share.
- ``attention.py``: decode attention over that shared prefix and each row's own keys and
  values (cascade attention), so rows with the same instructions read them once a step.
- ``prefix_cache.py``: the KV of prompt prefixes shared across requests (blocks chained
  by their tokens, per model version, bounded memory, LRU), so a prompt's prefill runs
  only its uncached part.
- ``tools.py``: tool calls: the tools and the tool turns of the history rendered into the
  prompt (Hermes format), the grammar of forced calls, the calls parsed out of each draft.
- ``sampling.py``: the next token per row (``logit_bias`` and penalties, greedy,
  temperature, top-p; a random stream per draft).
- ``logprobs.py``: the chosen tokens' log-probabilities and the likeliest alternatives.
- ``grammar.py``: structured outputs (``response_format``, forced tool calls): a grammar
  per draft (llguidance) that masks the row's logits and says when its document is complete.
- ``detokenize.py``: token ids to streamed text, and stop strings.
- ``adapters.py``: LoRA adapters: reading and checking adapter files, installing and
  removing them in the model, the per-row ``adapter_names`` of a mixed-version forward.
"""

from __future__ import annotations

from serving.backends.local.adapters import BASE_VERSION, VersionBusy
from serving.backends.local.backend import LocalBackend

__all__ = ["LocalBackend", "BASE_VERSION", "VersionBusy"]
