"""Messy prompts: how real users type.

A share of simulated requests (~15%) is roughened before it is sent: typos, mixed
English/Chinese, half sentences, lowercase without punctuation. The intent stays the same,
so the ground truth does not change; the flags go to the manifest (the "robustness" tags
of seed article 001), never into the traffic itself.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

__all__ = ["MESSY_KINDS", "MessyText", "make_messy", "half_sentence", "lowercase_no_punctuation", "mix_languages", "typos"]

MESSY_KINDS = ("typo", "mixed-language", "half-sentence", "lowercase")

# English words and phrases of the demo domain with the Chinese a bilingual user would
# type instead. Longer phrases first so "profit margin" wins over "profit".
ZH_TERMS: dict[str, str] = {
    "last half year": "近半年",
    "for the last half year": "近半年",
    "last month": "上个月",
    "this month": "本月",
    "last week": "上周",
    "this week": "本周",
    "last year": "去年",
    "this year": "今年",
    "last quarter": "上季度",
    "this quarter": "本季度",
    "yesterday": "昨天",
    "profit margin": "利润率",
    "return rate": "退货率",
    "discount rate": "折扣率",
    "conversion rate": "转化率",
    "churn rate": "流失率",
    "attrition rate": "离职率",
    "customer satisfaction": "客户满意度",
    "sales rep": "销售员",
    "product category": "产品类别",
    "customer segment": "客户群",
    "line chart": "折线图",
    "pie chart": "饼图",
    "bar chart": "柱状图",
    "table": "表格",
    "sales": "销售额",
    "profit": "利润",
    "revenue": "收入",
    "quantity": "数量",
    "region": "地区",
    "regions": "地区",
    "product": "产品",
    "products": "产品",
    "customer": "客户",
    "customers": "客户",
    "department": "部门",
    "departments": "部门",
    "channel": "渠道",
    "channels": "渠道",
    "country": "国家",
    "countries": "国家",
    "warehouse": "仓库",
    "warehouses": "仓库",
    "shipments": "发货量",
    "headcount": "人数",
    "cost": "成本",
    "trend": "趋势",
    "monthly": "每月",
    "weekly": "每周",
    "daily": "每天",
    "quarterly": "每季度",
    "top": "前",
    "compare": "对比",
    "excluding": "不包括",
    "only": "只看",
    "show me": "给我看",
    "summarize": "总结",
    "email": "邮件",
    "average": "平均",
    "total": "总共",
}
_ZH_PATTERN = re.compile(
    r"\b(" + "|".join(re.escape(k) for k in sorted(ZH_TERMS, key=len, reverse=True)) + r")\b", re.IGNORECASE
)

# Openings people drop when they type a half sentence.
_OPENINGS = re.compile(
    r"^(?:show me|can you plot|can you|could you|please chart|please|i need|i'd like to see|give me|plot|tell me)\s+",
    re.IGNORECASE,
)
_FILLERS = {"the", "a", "an", "please", "for", "of"}
_PUNCT = re.compile(r"(?<![0-9])[.,!?;:](?![0-9])|[!?;\"“”]|(?<=[0-9])[.,](?![0-9])")


@dataclass(frozen=True)
class MessyText:
    """A roughened text and what was done to it (kinds from `MESSY_KINDS`, in order)."""

    text: str
    flags: tuple[str, ...]


def typos(text: str, rng: random.Random, count: int | None = None) -> str:
    """Swap two adjacent letters or drop one, in 1-3 words of four letters or more.
    Numbers, quoted values and capitalised names are left alone."""
    words = list(re.finditer(r"\b[a-z]{4,}\b", text))
    if not words:
        return text
    chosen = sorted(rng.sample(words, min(len(words), count or rng.randint(1, 3))), key=lambda m: m.start(), reverse=True)
    for m in chosen:
        w = m.group(0)
        i = rng.randrange(1, len(w) - 1)
        if rng.random() < 0.5:
            new = w[:i] + w[i + 1] + w[i] + w[i + 2 :]
        else:
            new = w[:i] + w[i + 1 :]
        text = text[: m.start()] + new + text[m.end() :]
    return text


def mix_languages(text: str, rng: random.Random) -> str:
    """Replace some domain words by their Chinese equivalents (销售额, 地区, 上个月...)."""
    matches = list(_ZH_PATTERN.finditer(text))
    if not matches:
        return text
    keep = sorted(rng.sample(matches, max(1, round(len(matches) * rng.uniform(0.3, 0.8)))), key=lambda m: m.start(), reverse=True)
    for m in keep:
        text = text[: m.start()] + ZH_TERMS[m.group(0).lower()] + text[m.end() :]
    return re.sub(r"(?<=[\u4e00-\u9fff]) (?=[\u4e00-\u9fff])", "", text)


def half_sentence(text: str, rng: random.Random) -> str:
    """A telegraphic fragment: drop the opening ("Show me"), fillers and end punctuation,
    keeping every word that carries the request."""
    text = _OPENINGS.sub("", text.strip())
    words = text.split()
    kept = [w for w in words if w.lower() not in _FILLERS or rng.random() < 0.3]
    out = " ".join(kept or words).rstrip(".?! ")
    return out[:1].lower() + out[1:] if out[:2] != out[:2].upper() else out


def lowercase_no_punctuation(text: str) -> str:
    """All lowercase, no sentence punctuation (decimal points and thousands separators
    inside numbers are kept)."""
    return re.sub(r"\s{2,}", " ", _PUNCT.sub("", text.lower())).strip()


def make_messy(text: str, rng: random.Random, kinds: tuple[str, ...] | None = None) -> MessyText:
    """Roughen `text` with one or two kinds of mess (or exactly `kinds`)."""
    if kinds is None:
        kinds = tuple(rng.sample(MESSY_KINDS, rng.choice((1, 1, 2))))
    flags: list[str] = []
    for kind in MESSY_KINDS:  # a fixed order: typos last would touch Chinese-free words only
        if kind not in kinds:
            continue
        if kind == "half-sentence":
            new = half_sentence(text, rng)
        elif kind == "mixed-language":
            new = mix_languages(text, rng)
        elif kind == "lowercase":
            new = lowercase_no_punctuation(text)
        elif kind == "typo":
            new = typos(text, rng)
        else:
            raise ValueError(f"unknown messy kind {kind!r}; known: {MESSY_KINDS}")
        if new != text:
            flags.append(kind)
            text = new
    if not flags:  # nothing applied (no Chinese term, already lowercase...): fall back to a typo
        new = typos(text, rng, 1)
        if new != text:
            flags.append("typo")
            text = new
    return MessyText(text=text, flags=tuple(flags))
