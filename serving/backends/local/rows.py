"""The state of work in flight: a :class:`Request` (one submitted chat request) and its
:class:`Row` s (one per draft).

A row is the unit of continuous batching: every draft of every request is a row of the
running batch, and rows join and leave it one by one. Each stage of the loop keeps its
per-draft state on the row (sampling: ``params`` and ``generator``; detokenisation and
stop strings: ``ids``, the offsets, ``text``, ``emitted``; the batch: ``version``,
``position``), so those stages stay plain functions of a row and need no tables of their
own; a stage that needs more per-draft state adds a slot here (the grammar of a
``response_format`` or of forced tool calls: ``grammar``, one matcher per draft, built on
the request thread and kept on the request until its rows exist; ``logprobs``, the
entries of tokens not yet handed out).
"""

from __future__ import annotations

import dataclasses

import torch

from serving.backends.base import Generation, GenerationRequest, SamplingParams


@dataclasses.dataclass(eq=False)
class Request:
    request: GenerationRequest
    gen: Generation
    prompt_ids: list[int]
    max_new: int  # max_tokens, capped by the context left after the prompt
    open_rows: int = 0
    failed: bool = False
    prefilled: int = 0  # prompt tokens already in ``cache``
    cache: object = None  # DynamicCache while the prompt is being prefilled
    grammars: list | None = None  # one llguidance matcher per draft (``response_format``), or None


class Row:
    """One draft being generated: sampling state, detokeniser, stop-string scanner."""

    __slots__ = (
        "req", "index", "version", "params", "generator", "ids", "position",
        "prefix_offset", "read_offset", "text", "emitted", "done", "grammar", "logprobs",
    )

    def __init__(self, req: Request, index: int, generator: torch.Generator | None, grammar=None):
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
        self.grammar = grammar  # an llguidance matcher (response_format, forced tool calls), see grammar.py
        self.logprobs: list[dict] = []  # entries of tokens not yet handed out (logprobs.py)


__all__ = ["Request", "Row"]
