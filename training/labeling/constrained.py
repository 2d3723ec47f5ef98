"""Schema-constrained decoding: keep a model's output a valid prefix of JSON of one schema.

A small pushdown automaton over characters (`feed`) knows, for a schema of objects,
arrays, strings (free, an enum of names, or with a fixed prefix) and numbers, whether a
text can still become a valid document. `JsonSchemaProcessor` is a transformers
``LogitsProcessor`` that, at every step and for every row, tries the model's most likely
tokens (their decoded strings) against the automaton and masks every token that would
break the schema; when none of the top tokens fits it scans the vocabulary, bucketed by
first character. Once the document is complete only end-of-sequence remains allowed.
Given the token budget, it switches to a closing mode when the fewest characters that
still complete the document (`distance`) come near the tokens left: then only the tokens
that bring the end nearest are allowed, so a sample ends as valid JSON rather than cut off.

For ``data-viz/chart-config`` (`chart_schema`): top-level keys from the allowed list
(each once, chartType/chartFields/mainAxis required), the chartType, granularity,
condition and sort enums, every dimension and metric a name from THE PROMPT's lists,
mainAxis one of the dimensions already chosen in chartFields, dayjsScript exactly two
strings starting with ``dayjs()``, topN.number an integer. Output is compact (at most one
space between tokens, no newlines), as the training targets are.

This only keeps the output well formed; whether it is the RIGHT chart is the model's
business (and the verifier's, and the user's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

__all__ = ["Arr", "JsonSchemaProcessor", "Num", "Obj", "Str", "Union", "UnsupportedSchema", "chart_schema", "feed", "feed_text",
           "from_json_schema", "initial_state"]


# ----------------------------------------------------------------------------- schema nodes


@dataclass(frozen=True, eq=False)
class Str:
    enum: tuple[str, ...] | None = None
    prefix: str = ""
    max_len: int = 64
    record: str | None = None  # remember the value under this name (e.g. the chosen dimensions)
    dynamic: str | None = None  # restrict to the values recorded under this name, when there are some
    charset: frozenset | None = None  # the characters allowed, when restricted
    exclude: str | None = None  # not one of the values recorded under this name (no duplicates)
    interval: bool = False  # "low,high" with low <= high


@dataclass(frozen=True, eq=False)
class Num:
    integer: bool = False
    positive: bool = False  # >= 1 (integers)
    max_len: int = 12


@dataclass(frozen=True, eq=False)
class Arr:
    item: object
    min_items: int = 0
    max_items: int | None = None


@dataclass(frozen=True, eq=False)
class Obj:
    props: dict = field(default_factory=dict)
    required: frozenset = frozenset()
    ordered: bool = False  # keys in the order of `props`, optional ones may be left out


@dataclass(frozen=True, eq=False)
class Union:
    """A string or a number: dispatched on the last value recorded under `by` when
    there is one (its value in `string_when` means the string), else on the first
    character."""

    string: Str
    number: Num
    by: str | None = None
    string_when: tuple[str, ...] = ()


class UnsupportedSchema(ValueError):
    """A JSON Schema uses something the automaton cannot follow."""


def from_json_schema(schema: Mapping[str, Any]):
    """The automaton's schema for a JSON Schema (a pydantic model's ``model_json_schema()``).

    Understood: objects (``properties``, ``required``), arrays (``items``, ``minItems``,
    ``maxItems``, ``uniqueItems`` of enum values), strings (``enum``/``const``, ``maxLength``), integers
    (``minimum`` >= 1 means positive) and numbers, ``$ref`` into ``$defs``, and a
    ``oneOf`` of objects with a ``discriminator`` (merged into one object whose
    discriminator comes first and whose differing property is a string or a number,
    depending on the discriminator's value). The ``x-decoding`` mapping of a node tightens
    it for decoding: ``minItems``/``maxItems``/``uniqueItems``/``maxLength``, ``ordered``
    (keys in the order of ``properties``), ``maxDigits``, a string's ``prefix`` and
    ``charset``, ``interval`` ("low,high"), ``record`` (remember the value under a name)
    and ``among`` (one of the values recorded under a name)."""
    defs = schema.get("$defs", {})
    counter = [0]

    def resolve(node: Mapping[str, Any]) -> Mapping[str, Any]:
        seen = 0
        while "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/$defs/") or ref[len("#/$defs/"):] not in defs:
                raise UnsupportedSchema(f"cannot resolve {ref!r}")
            extra = {k: v for k, v in node.items() if k != "$ref"}
            node = {**defs[ref[len("#/$defs/"):]], **extra}
            seen += 1
            if seen > 32:
                raise UnsupportedSchema(f"recursive reference {ref!r}")
        return node

    def spec(node: Mapping[str, Any]) -> dict:
        return {**node, **(node.get("x-decoding") or {})}

    def enum_of(s: Mapping[str, Any]) -> tuple | None:
        if "const" in s:
            return (s["const"],)
        return tuple(s["enum"]) if "enum" in s else None

    def compile_(node: Mapping[str, Any], exclude: str | None = None):
        node = resolve(node)
        if "oneOf" in node or "anyOf" in node:
            return tagged(node)
        s = spec(node)
        enum = enum_of(s)
        kind = s.get("type")
        if enum is not None or kind == "string":
            if enum is not None and not all(isinstance(v, str) for v in enum):
                raise UnsupportedSchema(f"only string enums are supported, not {enum!r}")
            return Str(enum=enum, prefix=s.get("prefix", ""), max_len=int(s.get("maxLength", 64)), record=s.get("record"),
                       dynamic=s.get("among"), charset=frozenset(s["charset"]) if "charset" in s else None,
                       exclude=exclude, interval=bool(s.get("interval")))
        if kind in ("integer", "number"):
            minimum = s.get("minimum")
            return Num(integer=kind == "integer", positive=kind == "integer" and minimum is not None and minimum >= 1,
                       max_len=int(s.get("maxDigits", 12)))
        if kind == "array":
            items = resolve(s.get("items") or {})
            item_exclude = None
            if s.get("uniqueItems") and enum_of(spec(items)) is not None:  # repeats are refused among enum values
                item_spec = spec(items)
                item_exclude = item_spec.get("record")
                if item_exclude is None:  # remember the values under a name of its own, to refuse repeats
                    counter[0] += 1
                    item_exclude = f"_unique{counter[0]}"
                    items = {**items, "x-decoding": {**(items.get("x-decoding") or {}), "record": item_exclude}}
            return Arr(compile_(items, item_exclude), int(s.get("minItems", 0)),
                       int(s["maxItems"]) if "maxItems" in s else None)
        if kind == "object":
            props = s.get("properties") or {}
            if not props:
                raise UnsupportedSchema("an object needs its properties listed")
            return Obj({k: compile_(v) for k, v in props.items()}, frozenset(s.get("required", ())),
                       ordered=bool(s.get("ordered")))
        raise UnsupportedSchema(f"unsupported schema node {dict(node)!r}")

    def tagged(node: Mapping[str, Any]):
        tag = (node.get("discriminator") or {}).get("propertyName")
        variants = [spec(resolve(v)) for v in node.get("oneOf") or node.get("anyOf")]
        if not tag or not all(v.get("type") == "object" and tag in (v.get("properties") or {}) for v in variants):
            raise UnsupportedSchema("a oneOf/anyOf is supported only between objects with a discriminator")
        values: list[str] = []
        per_variant: list[tuple] = []
        for v in variants:
            enum = enum_of(spec(resolve(v["properties"][tag])))
            if not enum:
                raise UnsupportedSchema(f"discriminator {tag!r} needs a const or enum in every variant")
            per_variant.append(enum)
            values += [x for x in enum if x not in values]
        props: dict[str, Any] = {tag: Str(enum=tuple(values), record=tag)}
        names = [k for v in variants for k in v["properties"] if k != tag]
        for key in dict.fromkeys(names):
            options = [(compile_(v["properties"][key]), enum) for v, enum in zip(variants, per_variant) if key in v["properties"]]
            strings = [(n, e) for n, e in options if isinstance(n, Str)]
            numbers = [n for n, _ in options if isinstance(n, Num)]
            if len(options) == 1:
                props[key] = options[0][0]
            elif len(strings) == 1 and numbers and len(strings) + len(numbers) == len(options):
                props[key] = Union(strings[0][0], numbers[0], by=tag, string_when=tuple(strings[0][1]))
            else:
                raise UnsupportedSchema(f"the variants' {key!r} must be one string and numbers, or the same in all")
        required = frozenset().union(*(frozenset(v.get("required", ())) for v in variants))
        return Obj(props, required, ordered=True)  # the discriminator first: it decides the rest

    return compile_(schema)


def chart_schema(dimensions: Sequence[str], metrics: Sequence[str], time_field: str | None = None) -> Obj:
    """The chart configuration's schema (`ChartConfig`, through its JSON Schema) with names
    from the given lists."""
    from flywheel.domains.chart import PromptLists, output_schema

    lists = PromptLists("prompt", time_field or "", tuple(dimensions), tuple(metrics))
    return from_json_schema(output_schema(lists))


# ----------------------------------------------------------------------------- automaton
#
# A state is (stack, previous char was a space, recorded values). Frames are tuples:
#   ("root", node, phase)                  phase: start | done
#   ("obj", node, phase, seen, key)        phase: k0 (after '{') | k (after ',') | kin (in a key) | colon | val | after
#   ("arr", node, phase, count)            phase: v0 (after '[') | v (after ',') | after
#   ("str", node, buf, enum)
#   ("num", node, buf)
# `feed` returns the next state or None when the character cannot continue a valid document.

_DIGITS = "0123456789"
_SPACE_PHASES = {"k0", "k", "colon", "val", "after", "v0", "v"}


def initial_state(schema) -> tuple:
    return ((("root", schema, "start"),), False, ())


def is_done(state) -> bool:
    return state is not None and len(state[0]) == 1 and state[0][0][2] == "done"


def _recorded(rec: tuple, name: str) -> tuple:
    for k, v in rec:
        if k == name:
            return v
    return ()


def _record(rec: tuple, name: str, value: str) -> tuple:
    values = _recorded(rec, name)
    return tuple((k, v) for k, v in rec if k != name) + ((name, values + (value,)),)


def _start_value(node, ch: str, stack: tuple, rec: tuple):
    """Push the frame a value of `node` starting with `ch` opens; None if it cannot."""
    if isinstance(node, Union):
        recorded = _recorded(rec, node.by) if node.by else ()
        if recorded:
            node = node.string if recorded[-1] in node.string_when else node.number
        else:
            node = node.string if ch == '"' else node.number
    if isinstance(node, Str):
        if ch != '"':
            return None
        enum = node.enum
        if node.dynamic:
            chosen = tuple(v for v in _recorded(rec, node.dynamic) if enum is None or v in enum)
            enum = chosen or enum
        if node.exclude and enum is not None:
            used = _recorded(rec, node.exclude)
            enum = tuple(v for v in enum if v not in used)
        return stack + (("str", node, "", enum),)
    if isinstance(node, Num):
        if (ch == "-" and not node.positive) or ch in _DIGITS and not (node.positive and ch == "0"):
            return stack + (("num", node, ch),)
        return None
    if isinstance(node, Obj):
        return stack + (("obj", node, "k0", frozenset(), ""),) if ch == "{" else None
    if isinstance(node, Arr):
        return stack + (("arr", node, "v0", 0),) if ch == "[" else None
    return None


def _value_done(stack: tuple, rec: tuple, value: str | None = None, node=None):
    """The parent of a completed value moves on."""
    parent = stack[-1]
    if node is not None and isinstance(node, Str) and node.record and value is not None:
        rec = _record(rec, node.record, value)
    if parent[0] == "obj":
        _, pnode, _, seen, key = parent
        return stack[:-1] + (("obj", pnode, "after", seen | {key}, ""),), rec
    if parent[0] == "arr":
        _, pnode, _, count = parent
        return stack[:-1] + (("arr", pnode, "after", count + 1),), rec
    return stack[:-1] + (("root", parent[1], "done"),), rec


def _next_keys(node: Obj, seen: frozenset) -> list[str]:
    """Keys an ordered object may take next: after the last one seen, up to and
    including the first required key not seen yet."""
    keys = list(node.props)
    last = max((keys.index(k) for k in seen), default=-1)
    out = []
    for k in keys[last + 1:]:
        out.append(k)
        if k in node.required:
            break
    return out


def _number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() == text and text not in ("", "-") and "e" not in text.lower() and "n" not in text.lower()


_PART = r"-?\d{1,6}(?:\.\d{1,2})?"
_PARTIAL = r"-?(?:\d{1,6}(?:\.\d{0,2})?)?"
# What can still become "low,high" (each number at most 6 digits and 2 decimals).
_INTERVAL_PREFIX = re.compile(rf"{_PARTIAL}|{_PART},{_PARTIAL}")


def _interval_ok(buf: str) -> bool:
    parts = buf.split(",")
    return len(parts) == 2 and all(_number_text(p) for p in parts) and float(parts[0]) <= float(parts[1])


def _num_complete(buf: str) -> bool:
    return bool(buf) and buf[-1] in _DIGITS


def feed(state, ch: str):
    """The state after `ch`, or None."""
    stack, prev_space, rec = state
    top = stack[-1]
    kind = top[0]
    if kind == "str":
        _, node, buf, enum = top
        if ch == '"':
            if enum is not None and buf not in enum:
                return None
            if node.prefix and not buf.startswith(node.prefix):
                return None
            if node.interval and not _interval_ok(buf):
                return None
            new_stack, rec = _value_done(stack[:-1], rec, buf, node)
            return (new_stack, False, rec)
        if ch == "\\" or ch < " " or ch == "\ufffd" or len(buf) >= node.max_len:
            return None
        if node.charset is not None and ch not in node.charset:
            return None
        if node.interval and not _INTERVAL_PREFIX.fullmatch(buf + ch):
            return None
        nbuf = buf + ch
        if enum is not None and not any(v.startswith(nbuf) for v in enum):
            return None
        if node.prefix and not (nbuf.startswith(node.prefix) or node.prefix.startswith(nbuf)):
            return None
        return (stack[:-1] + (("str", node, nbuf, enum),), False, rec)
    if kind == "num":
        _, node, buf = top
        if ch in _DIGITS:
            if len(buf) >= node.max_len or buf in ("0", "-0"):
                return None
            return (stack[:-1] + (("num", node, buf + ch),), False, rec)
        if ch == "." and not node.integer and "." not in buf and _num_complete(buf):
            return (stack[:-1] + (("num", node, buf + ch),), False, rec)
        if not _num_complete(buf):
            return None
        new_stack, rec = _value_done(stack[:-1], rec)
        return feed((new_stack, False, rec), ch)
    if ch == " ":
        phase = top[2]
        if prev_space or phase not in _SPACE_PHASES or kind == "root":
            return None
        return (stack, True, rec)
    if kind == "root":
        if top[2] != "start":
            return None
        new = _start_value(top[1], ch, stack, rec)
        return (new, False, rec) if new is not None and isinstance(top[1], Obj) else None
    if kind == "obj":
        _, node, phase, seen, key = top
        if phase in ("k0", "k"):
            if ch == '"':
                return (stack[:-1] + (("obj", node, "kin", seen, ""),), False, rec)
            if ch == "}" and phase == "k0" and node.required <= seen:
                new_stack, rec = _value_done(stack[:-1], rec)
                return (new_stack, False, rec)
            return None
        if phase == "kin":
            if ch == '"':
                if key in node.props and key not in seen and (not node.ordered or key in _next_keys(node, seen)):
                    return (stack[:-1] + (("obj", node, "colon", seen, key),), False, rec)
                return None
            nkey = key + ch
            if node.ordered:
                if not any(k.startswith(nkey) for k in _next_keys(node, seen)):
                    return None
            elif not any(k.startswith(nkey) and k not in seen for k in node.props):
                return None
            return (stack[:-1] + (("obj", node, "kin", seen, nkey),), False, rec)
        if phase == "colon":
            return (stack[:-1] + (("obj", node, "val", seen, key),), False, rec) if ch == ":" else None
        if phase == "val":
            new = _start_value(node.props[key], ch, stack, rec)
            return (new, False, rec) if new is not None else None
        # after a value
        if ch == "," and (_next_keys(node, seen) if node.ordered else any(k not in seen for k in node.props)):
            return (stack[:-1] + (("obj", node, "k", seen, ""),), False, rec)
        if ch == "}" and node.required <= seen:
            new_stack, rec = _value_done(stack[:-1], rec)
            return (new_stack, False, rec)
        return None
    # array
    _, node, phase, count = top
    if phase in ("v0", "v"):
        if ch == "]" and phase == "v0" and node.min_items == 0:
            new_stack, rec = _value_done(stack[:-1], rec)
            return (new_stack, False, rec)
        new = _start_value(node.item, ch, stack, rec)
        if new is None:
            return None
        # the array frame moves to "in a value"; the value's completion sets "after"
        return (new, False, rec)
    if ch == "," and (node.max_items is None or count < node.max_items):
        return (stack[:-1] + (("arr", node, "v", count),), False, rec)
    if ch == "]" and count >= node.min_items:
        new_stack, rec = _value_done(stack[:-1], rec)
        return (new_stack, False, rec)
    return None


def feed_text(state, text: str):
    """`feed` over a whole string (None as soon as one character does not fit)."""
    for ch in text:
        state = feed(state, ch)
        if state is None:
            return None
    return state


# ----------------------------------------------------------------------------- distance to the end
#
# How many characters at least still close the document: used to finish within the token
# budget (the processor's closing mode picks tokens that bring the end nearer).


def min_chars(node) -> int:
    """The fewest characters of a complete value of `node`."""
    if isinstance(node, Union):
        return min(min_chars(node.string), min_chars(node.number))
    if isinstance(node, Str):
        if node.interval:
            return 5
        if node.enum:
            return 2 + min(len(v) for v in node.enum)
        return 2 + len(node.prefix)
    if isinstance(node, Num):
        return 1
    if isinstance(node, Arr):
        return 2 + node.min_items * (min_chars(node.item) + 1)
    if isinstance(node, Obj):
        return 2 + sum(len(k) + 4 + min_chars(v) for k, v in node.props.items() if k in node.required)
    return 1


def distance(state) -> int:
    """Fewest characters that complete the document from `state` (an estimate from
    below for enum strings in progress, exact elsewhere)."""
    if state is None:
        return 10**6
    stack, _, rec = state
    total = 0
    for i, frame in enumerate(stack):
        kind = frame[0]
        inner = i < len(stack) - 1  # a value of this frame is in progress above it
        if kind == "root":
            total += min_chars(frame[1]) if frame[2] == "start" and not inner else 0
        if kind == "str":
            _, node, buf, enum = frame
            if node.interval:
                total += 1 if _interval_ok(buf) else 4
            elif enum is not None:
                total += 1 + min((len(v) - len(buf) for v in enum if v.startswith(buf)), default=0)
            else:
                total += 1 + max(0, len(node.prefix) - len(buf))
        elif kind == "obj":
            _, node, phase, seen, key = frame

            def req_cost(k: str) -> int:
                return len(k) + 4 + min_chars(node.props[k])

            missing = [k for k in node.required if k not in seen]
            total += 1
            if phase == "kin":
                options = [k for k in node.props if k.startswith(key) and k not in seen]
                total += min((len(k) - len(key) + 2 + min_chars(node.props[k]) + sum(req_cost(m) for m in missing if m != k)
                              for k in options), default=0)
            elif phase in ("colon", "val"):
                total += sum(req_cost(m) for m in missing if m != key)
                if phase == "colon":
                    total += 1 + min_chars(node.props[key])
                elif not inner:
                    total += min_chars(node.props[key])
            else:
                total += sum(req_cost(m) for m in missing) - (1 if phase == "k" and missing else 0)  # the comma is written
                if phase == "k" and not missing:
                    keys = _next_keys(node, seen) if node.ordered else [k for k in node.props if k not in seen]
                    total += min((req_cost(k) - 1 for k in keys), default=0)
        elif kind == "arr":
            _, node, phase, count = frame
            pending = count + (1 if inner else 0)
            total += 1 + max(0, node.min_items - pending) * (min_chars(node.item) + 1)
            if phase == "v" and not inner:
                total += min_chars(node.item)
    return total


# ----------------------------------------------------------------------------- logits processor


class TokenTable:
    """Each token's decoded string, and the tokens bucketed by first character (special
    tokens and tokens that decode to nothing or to a broken byte are left out)."""

    def __init__(self, tokenizer):
        special = set(tokenizer.all_special_ids or [])
        n = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)
        self.texts: list[str | None] = []
        self.buckets: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            if i in special or not t or "\ufffd" in t or "<|" in t:
                self.texts.append(None)
                continue
            self.texts.append(t)
            self.buckets.setdefault(t[0], []).append(i)


_TABLES: dict[int, TokenTable] = {}


def token_table(tokenizer) -> TokenTable:
    key = id(tokenizer)
    if key not in _TABLES:
        _TABLES[key] = TokenTable(tokenizer)
    return _TABLES[key]


class JsonSchemaProcessor:
    """A transformers logits processor keeping each row's continuation inside `schema`.

    `prompt_len` is the (padded) prompt length of the batch; `top_k` the model's most
    likely tokens tried first at each step. ``stats`` counts steps and full-vocabulary
    scans (to report how often the fallback was needed)."""

    def __init__(self, tokenizer, schema, prompt_len: int, eos_token_id: int, *, top_k: int = 64,
                 max_new_tokens: int | None = None, closing_margin: int = 4):
        self.table = token_table(tokenizer)
        self.schema = schema
        self.prompt_len = prompt_len
        self.eos = eos_token_id
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens
        self.closing_margin = closing_margin
        self.states: list = []
        self.stats = {"steps": 0, "scans": 0, "dead_ends": 0, "closing_steps": 0}

    def _closing(self, state, scores_row, steps_left: int) -> list[int] | None:
        """Near the end of the budget: the valid tokens that bring the end nearest."""
        now = distance(state)
        if steps_left > now + self.closing_margin:
            return None
        self.stats["closing_steps"] += 1
        texts = self.table.texts
        best, best_d = [], now
        for first, ids in self.table.buckets.items():
            if feed(state, first) is None:
                continue
            for i in ids:
                nxt = feed_text(state, texts[i])
                if nxt is None:
                    continue
                d = distance(nxt)
                if d < best_d:
                    best, best_d = [i], d
                elif d == best_d and best:
                    best.append(i)
        return best or None

    def _allowed(self, state, scores_row, limit: int | None = None) -> list[int]:
        """Valid tokens among the model's top ones (else the whole vocabulary); with a
        `limit`, only those after which the end stays within `limit` characters (the
        tokens left after this one), so the budget can always be met."""
        import torch

        texts = self.table.texts

        def ok(t: str | None) -> bool:
            if t is None:
                return False
            nxt = feed_text(state, t)
            return nxt is not None and (limit is None or distance(nxt) <= limit)

        k = min(self.top_k, scores_row.shape[-1])
        allowed = [tok for tok in torch.topk(scores_row, k).indices.tolist() if tok < len(texts) and ok(texts[tok])]
        if allowed:
            return allowed
        self.stats["scans"] += 1
        for first, ids in self.table.buckets.items():
            if feed(state, first) is None:
                continue
            allowed.extend(i for i in ids if ok(texts[i]))
        return allowed

    def __call__(self, input_ids, scores):
        import torch

        batch = input_ids.shape[0]
        if not self.states:
            self.states = [initial_state(self.schema) for _ in range(batch)]
        elif input_ids.shape[1] > self.prompt_len:
            for b in range(batch):
                state = self.states[b]
                if state is None or is_done(state):
                    continue
                t = self.table.texts[int(input_ids[b, -1])]
                self.states[b] = feed_text(state, t) if t is not None else None
        self.stats["steps"] += 1
        out = torch.full_like(scores, float("-inf"))
        for b in range(batch):
            state = self.states[b]
            if state is None or is_done(state):
                out[b, self.eos] = 0.0
                continue
            allowed, limit = None, None
            if self.max_new_tokens is not None:
                steps_left = self.max_new_tokens - (input_ids.shape[1] - self.prompt_len)
                allowed = self._closing(state, scores[b], steps_left)
                limit = max(0, steps_left - 1)
            allowed = allowed or self._allowed(state, scores[b], limit) or self._allowed(state, scores[b])
            if not allowed:
                self.stats["dead_ends"] += 1
                self.states[b] = None
                out[b, self.eos] = 0.0
                continue
            idx = torch.tensor(allowed, dtype=torch.long)
            out[b, idx] = scores[b, idx]
        return out
