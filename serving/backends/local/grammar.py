"""Structured outputs: decoding a draft under a grammar (``response_format``, forced tool
calls), with llguidance.

A request with ``response_format`` ``json_schema`` (or ``json_object``: any JSON object)
gets one llguidance matcher per draft; so does a request whose tools ask for a grammar
(``tool_choice`` ``required`` or a named function: ``tools.py`` writes a Lark grammar of
tool calls, each call's arguments under its function's JSON Schema). Both are a
:class:`Constraint`, compiled and cached the same way. At each step the matcher says which tokens may
come next; every other token's logit is set to ``-inf`` before the row's token is chosen
(:func:`mask_logits`, called by ``sampling.sample``), and the chosen token is then fed to
the matcher (:func:`advance`, called by the engine), which says when the document is
complete: the row finishes with ``"stop"`` at once, without waiting for the model's EOS.
The EOS token is allowed only where the document may end, so a draft never stops early
with half a document; ``max_tokens`` reached first gives ``"length"``, as OpenAI does.
Rows without a grammar are left exactly as they were, so mixed batches cost nothing extra
for the free rows.

Compiling happens on the request thread, in ``LocalBackend.submit``
(:meth:`Grammars.matchers`): a schema llguidance cannot use is refused there with a 400
naming ``response_format``, before anything is queued. A compiled matcher is cached per
schema (apps send the same schema with every request) and each draft gets a copy of it.

Why llguidance: a maintained Rust engine that works with Hugging Face tokenizers on the
CPU, with no Python dependencies and no torch requirement; measured on the 2-core machine
(busy with other jobs) the mask and the matcher's update cost ~1.35 ms a token, 0.09% of a
decode step (``bench/structured_outputs.py``, docs/benchmarks.md). The mask comes from
``LLMatcher.compute_bitmask`` and is applied with numpy, not with ``llguidance.torch``:
importing that module imports ``torch._dynamo`` (~3 s) for its ``torch.compile`` kernel,
and small torch ops go through torch's thread pool, which costs tens of milliseconds a
call when the two cores are busy; the numpy path takes ~0.2 ms for a batch.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from serving.backends.base import BackendError, ResponseFormat

if TYPE_CHECKING:
    from llguidance import LLMatcher, LLTokenizer

    from serving.backends.local.rows import Row

log = logging.getLogger(__name__)

#: JSON without optional whitespace: the model cannot pad a document with blanks until
#: ``max_tokens`` (llguidance's default allows any whitespace between tokens).
JSON_OPTIONS = {"whitespace_flexible": False}


class GrammarError(BackendError):
    """A matcher refused a token it had allowed (an engine bug, never the client's input)."""


@dataclasses.dataclass(frozen=True)
class Constraint:
    """A grammar drafts decode under: a JSON Schema (``source`` its JSON) or an llguidance
    Lark grammar, and the request field a 400 names when it cannot be used. ``parts``:
    ``(field, JSON Schema)`` of the schemas a Lark grammar embeds, each compiled alone
    when the whole fails, to name the one at fault."""

    kind: Literal["json_schema", "lark"]
    source: str
    param: str = "response_format"
    parts: tuple[tuple[str, Mapping[str, Any]], ...] = dataclasses.field(default=(), hash=False, compare=False)

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any], param: str = "response_format") -> "Constraint":
        return cls("json_schema", json.dumps(schema, separators=(",", ":")), param)  # property order is the output's


class Grammars:
    """Compiles ``response_format`` into matchers for one tokenizer (one per backend).

    llguidance's view of the tokenizer takes about a second to build, so it is built on
    first use, under ``tokenizer_lock`` (the lock that guards the Hugging Face tokenizer:
    reading it while another thread encodes is not safe). ``vocab_size`` is the width of
    the model's logits; ``eos`` the ids that end a draft (allowed only where the document
    may end).
    """

    def __init__(self, tokenizer, eos: Iterable[int], vocab_size: int, *,
                 tokenizer_lock: threading.Lock | None = None, cache_size: int = 32):
        self._hf_tokenizer = tokenizer
        self._eos = sorted(eos)
        self.vocab_size = vocab_size
        self._tokenizer_lock = tokenizer_lock or threading.Lock()
        self._llg_tokenizer: LLTokenizer | None = None
        self._cache: collections.OrderedDict[str, LLMatcher] = collections.OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def matchers(self, fmt: ResponseFormat | None, n: int) -> list[LLMatcher] | None:
        """One fresh matcher per draft, or None when ``fmt`` asks for plain text. Raises
        :class:`BackendError` (400, ``param="response_format"``) for a schema llguidance
        cannot compile, with its reason."""
        schema = fmt.schema if fmt is not None else None
        if schema is None:
            return None
        return self.for_constraint(Constraint.json_schema(schema), n)

    def for_constraint(self, constraint: Constraint | None, n: int) -> list[LLMatcher] | None:
        """One fresh matcher per draft under ``constraint`` (None: no grammar). Raises
        :class:`BackendError` (400 naming ``constraint.param``, or the part at fault) when
        llguidance cannot compile it."""
        if constraint is None:
            return None
        pristine = self._compiled(constraint)
        return [pristine.deep_copy() for _ in range(n)]

    def _compiled(self, constraint: Constraint) -> LLMatcher:
        from llguidance import LLMatcher

        key = f"{constraint.kind}:{constraint.source}"
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            if constraint.kind == "lark":
                grammar = LLMatcher.grammar_from_lark(constraint.source)
            else:
                grammar = LLMatcher.grammar_from_json_schema(constraint.source, defaults=JSON_OPTIONS)
            matcher = LLMatcher(self._tokenizer(), grammar, log_level=0)
        except ValueError as exc:  # not a JSON object at all (the gateway checks this first)
            raise self._refusal(constraint, str(exc)) from None
        if matcher.is_error():
            raise self._refusal(constraint, matcher.get_error())
        for warning in matcher.get_grammar_warnings():
            log.info("%s grammar: %s", constraint.param, warning)
        with self._lock:
            self._cache[key] = matcher
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return matcher

    def _tokenizer(self) -> LLTokenizer:
        if self._llg_tokenizer is None:
            import llguidance.hf

            with self._tokenizer_lock:
                if self._llg_tokenizer is None:
                    self._llg_tokenizer = llguidance.hf.from_tokenizer(
                        self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self._eos)
        return self._llg_tokenizer


    def _refusal(self, constraint: Constraint, reason: str) -> BackendError:
        """The 400 for a constraint llguidance refused: naming the embedded schema at fault
        when one of its parts fails alone."""
        for param, schema in constraint.parts:
            try:
                self._compiled(Constraint.json_schema(schema, param))
            except BackendError as e:
                return e
        return _refused(reason, constraint.param)


def _refused(reason: str, param: str = "response_format") -> BackendError:
    reason = " ".join(reason.split())
    if len(reason) > 500:
        reason = reason[:500] + "..."
    return BackendError(f"the JSON Schema in '{param}' cannot be used for constrained decoding: {reason}",
                        400, param=param)


def mask_logits(logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
    """``logits`` (one row per entry of ``rows``) with every token a row's grammar does not
    allow next set to ``-inf``. Returns ``logits`` itself when no row has a grammar, else a
    copy (the input may be a view of the forward's output, or one row expanded to ``n``)."""
    constrained = [i for i, r in enumerate(rows) if r.grammar is not None]
    if not constrained:
        return logits
    vocab = logits.shape[-1]
    nbytes = (vocab + 31) // 32 * 4
    bitmask = np.empty((len(constrained), nbytes), dtype=np.uint8)
    for k, i in enumerate(constrained):
        bitmask[k] = np.frombuffer(rows[i].grammar.compute_bitmask(), dtype=np.uint8, count=nbytes)
    # Bit j of 32-bit word w allows token 32*w + j (little-endian words, bits from the lowest).
    allowed = np.unpackbits(bitmask, axis=1, bitorder="little")[:, :vocab].view(np.bool_)
    out = np.array(logits.float().numpy())
    idx = np.asarray(constrained)
    out[idx] = np.where(allowed, out[idx], -np.inf)
    return torch.from_numpy(out)


def advance(row: Row, token: int) -> bool:
    """Feed the row's sampled ``token`` (not EOS) to its grammar; True when the document
    is complete (nothing but EOS may follow). Raises :class:`GrammarError` if the grammar
    refuses it, which a masked choice never should."""
    matcher = row.grammar
    if not matcher.consume_token(token):
        raise GrammarError(f"the grammar refused token {token}: {matcher.get_error()}", 502)
    return matcher.is_stopped()


__all__ = ["Constraint", "Grammars", "GrammarError", "JSON_OPTIONS", "advance", "mask_logits"]
