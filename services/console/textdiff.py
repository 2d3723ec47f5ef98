"""A word-level diff between the model's answer and its correction, for the review page.

Two JSON documents (chart configurations) are compared pretty-printed with the same
layout, so a changed value shows as that value, not as one long changed line.
"""

from __future__ import annotations

import difflib
import json
import re

_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")


def _layout(text: str) -> str:
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        return text
    if not isinstance(data, (dict, list)):
        return text
    return json.dumps(data, indent=2, ensure_ascii=False)


def diff_ops(before: str | None, after: str | None) -> list[tuple[str, str]]:
    """[(op, text)] with op "eq", "del" (only in `before`) or "ins" (only in `after`);
    adjacent pieces of one kind are joined."""
    a, b = _TOKEN.findall(_layout(before or "")), _TOKEN.findall(_layout(after or ""))
    out: list[tuple[str, str]] = []

    def put(op: str, text: str) -> None:
        if not text:
            return
        if out and out[-1][0] == op:
            out[-1] = (op, out[-1][1] + text)
        else:
            out.append((op, text))

    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            put("eq", "".join(a[i1:i2]))
        else:
            put("del", "".join(a[i1:i2]))
            put("ins", "".join(b[j1:j2]))
    return out


def changed_share(ops: list[tuple[str, str]]) -> float:
    """The share of characters deleted or inserted (0: identical)."""
    total = sum(len(t) for _, t in ops) or 1
    return sum(len(t) for op, t in ops if op != "eq") / total
