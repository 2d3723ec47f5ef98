"""Refinements of the generic checks for the general task types that have a rule of their
own: a math answer states a number, a summary is shorter than what it summarises."""

from __future__ import annotations

import re

__all__ = ["math_rule", "summary_rule"]

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?%?")


def _last_user(messages: list[dict]) -> str:
    for m in reversed(messages or []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    return ""


def math_rule(messages: list[dict], answer: str, reasons: list[str]) -> list[str]:
    """A numeric answer is present; a bare number ("7") is a complete final answer."""
    if not _NUMBER.search(answer or ""):
        return reasons + ["math: no numeric answer"]
    return [r for r in reasons if not r.startswith("too-short")]


def summary_rule(messages: list[dict], answer: str, reasons: list[str]) -> list[str]:
    """Shorter than the text it summarises."""
    source = _last_user(messages)
    if source and len(answer.strip()) >= len(source.strip()):
        return reasons + ["summary: not shorter than the text it summarises"]
    return reasons
