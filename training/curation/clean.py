"""Cleaning rules: drop what cannot teach the model, tag what teaches robustness.

Rules, in order (the first that fires drops the item and names itself in the reason):
model errors, empty prompts or responses, too short / too long, repeated characters or
words, broken encodings (U+FFFD, mojibake, control characters), refusals and error
messages as answers, secrets the gateway's redaction missed, languages not allowed.

Messy prompts are not a defect: typos, mixed languages, half sentences and lowercase
without punctuation are what real users type, and a good answer to them teaches the
model to cope. They are detected here (`robustness_flags`, from the batch itself: a rare
word one edit away from a frequent one is a typo) and tagged ``robust`` once the label is
known to be good (`tag_robust`).

Language: a small script-and-stopword heuristic (no language-id package is installed):
``en``, ``zh``, ``mixed`` (Latin and CJK together), ``other`` (another script, or Latin
text without English function words), ``und`` (too little text to tell).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from streams.redact import Redactor
from training.curation.candidate import Candidate

__all__ = ["CleanRules", "clean", "detect_language", "robustness_flags", "tag_robust"]


@dataclass(frozen=True)
class CleanRules:
    """Limits of the rules (from ``settings.curation``)."""

    min_prompt_chars: int = 2
    max_prompt_chars: int = 20_000
    min_response_chars: int = 2
    max_response_chars: int = 8_000
    max_char_run: int = 12
    min_unique_word_ratio: float = 0.3
    languages: tuple[str, ...] = ("en", "mixed", "und")

    @classmethod
    def from_settings(cls, curation) -> "CleanRules":
        return cls(
            min_prompt_chars=curation.min_prompt_chars, max_prompt_chars=curation.max_prompt_chars,
            min_response_chars=curation.min_response_chars, max_response_chars=curation.max_response_chars,
            max_char_run=curation.max_char_run, min_unique_word_ratio=curation.min_unique_word_ratio,
            languages=tuple(curation.languages),
        )


_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|sorry, (?:but )?i (?:can(?:no|')t|am unable)|as an ai\b|i (?:can(?:no|')t|am unable to|won'?t) "
    r"(?:help|assist|provide|answer|do that)|i'?m (?:not able|unable) to)",
    re.IGNORECASE,
)
_ERROR_ANSWER = re.compile(r"^\s*(?:error|exception|traceback \(most recent call last\)|internal server error)\b", re.IGNORECASE)
_MOJIBAKE = re.compile(r"Ã[\u0080-\u00bf©¨§¶¼½¾]|â€[\u0099\u009c\u009d™œ\"]|Â[\u00a0-\u00bf]|\ufffd")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PRIVATE_USE = re.compile(r"[\ue000-\uf8ff]")
_LETTER = re.compile(r"[^\W\d_]")
_ACCENTED = re.compile(r"[\u00c0-\u024f]")
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
_STOPWORDS = frozenset(
    "the a an of to in and or for on by is are was were be what how me my i you it this that with as at from "
    "show can please give by per last month year all each which do does make".split()
)
# Function words of other Latin-script languages the bundled (English-only) model cannot serve.
_FOREIGN_STOPWORDS = frozenset(
    "le la les des est une et du der die das und ist nicht ein el los las que del por para una o och det att het een "
    "niet il di che per sono".split()
)
_SECRETS = Redactor(kinds=("SECRET",))


def _char_run(text: str, limit: int) -> bool:
    return re.search(r"(\S)\1{%d,}" % (limit - 1), text) is not None


def _repetitive(text: str, min_ratio: float) -> bool:
    words = text.lower().split()
    return len(words) >= 12 and len(set(words)) / len(words) < min_ratio


def detect_language(text: str) -> str:
    """``en`` / ``zh`` / ``mixed`` / ``other`` / ``und`` (see the module docstring)."""
    text = (text or "")[:1000]  # enough to tell; long pasted documents cost no more
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    letters = len(_LETTER.findall(text))
    if letters < 3:
        return "und"
    if cjk and latin >= 3:
        return "mixed"
    if cjk / letters > 0.5:
        return "zh"
    if latin / letters < 0.5:
        return "other"
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < 4:
        return "en" if words else "und"
    english = sum(w in _STOPWORDS for w in words)
    foreign = sum(w in _FOREIGN_STOPWORDS for w in words)
    if foreign > english:
        return "other"
    accented = len(_ACCENTED.findall(text))
    return "other" if english == 0 and accented / letters > 0.02 else "en"


def _broken_encoding(text: str) -> bool:
    return bool(_MOJIBAKE.search(text) or _CONTROL.search(text) or _PRIVATE_USE.search(text))


def rule_violation(prompt: str, response: str | None, rules: CleanRules) -> str | None:
    """The first rule `prompt`/`response` break, as a reason ("rule: detail"), or None."""
    prompt = prompt or ""
    if not prompt.strip():
        return "empty-prompt"
    if response is None or not response.strip():
        return "empty-response"
    if len(prompt.strip()) < rules.min_prompt_chars:
        return f"too-short: prompt has {len(prompt.strip())} chars (min {rules.min_prompt_chars})"
    if len(response.strip()) < rules.min_response_chars:
        return f"too-short: response has {len(response.strip())} chars (min {rules.min_response_chars})"
    if len(prompt) > rules.max_prompt_chars:
        return f"too-long: prompt has {len(prompt)} chars (max {rules.max_prompt_chars})"
    if len(response) > rules.max_response_chars:
        return f"too-long: response has {len(response)} chars (max {rules.max_response_chars})"
    for side, text in (("prompt", prompt), ("response", response)):
        if _broken_encoding(text):
            return f"garbage-encoding: in the {side}"
        if _char_run(text, rules.max_char_run):
            return f"repeated-characters: a run of {rules.max_char_run}+ in the {side}"
    if _repetitive(response, rules.min_unique_word_ratio):
        return f"repetitive: under {rules.min_unique_word_ratio:.0%} distinct words in the response"
    if _REFUSAL.search(response):
        return "refusal: the response declines to answer"
    if _ERROR_ANSWER.search(response):
        return "error-answer: the response is an error message"
    for side, text in (("prompt", prompt), ("response", response)):
        _, counts = _SECRETS.redact_with_counts(text)
        if counts:
            return f"secret: an unredacted secret in the {side}"
    return None


def robustness_flags(texts: Sequence[str], *, min_frequent: int = 8, max_rare: int = 2) -> list[list[str]]:
    """Messiness of each user text: ``typo`` (a rare word one edit from a frequent word of
    the same batch), ``mixed-language``, ``lowercase`` (no capital, no end punctuation),
    ``half-sentence`` (few words, no verb-like opener, no end punctuation)."""
    tokenised = [[w.lower() for w in _WORD.findall(t or "")] for t in texts]
    freq = Counter(w for words in tokenised for w in words)
    frequent = {w for w, n in freq.items() if n >= min_frequent and len(w) >= 4}
    deletes: set[str] = set()
    for w in frequent:
        deletes.add(w)
        deletes.update(w[:i] + w[i + 1 :] for i in range(len(w)))

    def near_frequent(w: str) -> bool:
        if w in deletes:  # w is a frequent word with a letter dropped, or a frequent word
            return w not in frequent
        variants = {w[:i] + w[i + 1 :] for i in range(len(w))}
        # an inserted letter (w minus one is frequent), or a swapped/replaced letter
        return any(v in frequent or v in deletes for v in variants)

    out = []
    for text, words in zip(texts, tokenised):
        flags = []
        if any(len(w) >= 4 and freq[w] <= max_rare and w not in frequent and near_frequent(w) for w in words):
            flags.append("typo")
        if _CJK.search(text or "") and _LATIN.search(text or ""):
            flags.append("mixed-language")
        stripped = (text or "").strip()
        if stripped and len(words) >= 3 and stripped == stripped.lower() and stripped[-1] not in ".?!":
            flags.append("lowercase")
        out.append(flags)
    return out


def clean(candidates: list[Candidate], rules: CleanRules) -> None:
    """Apply the rules to kept candidates in place: drops get ``stage='clean'`` and the
    reason; every candidate gets its language and its robustness flags (``messy:<kind>``
    tags; see `tag_robust`)."""
    live = [c for c in candidates if c.kept]
    flags = robustness_flags([_last_user_words(c) for c in live])
    for c, f in zip(live, flags):
        c.add_tags(*(f"messy:{x}" for x in f))
        c.language = detect_language(c.prompt_text or "")
        if c.request_status == "error":
            reason = "model-error: " + _error_message(c.request_error)
        else:
            reason = rule_violation(c.prompt_text or "", c.response, rules)
        if reason is None and c.language not in rules.languages:
            reason = f"language: {c.language} is not in curation.languages {list(rules.languages)}"
        if reason is not None:
            c.drop("clean", reason)


def tag_robust(candidates: Iterable[Candidate]) -> int:
    """Tag ``robust`` the kept candidates with a messy prompt and a good label; return how many."""
    n = 0
    for c in candidates:
        if c.kept and c.label == "good" and any(t.startswith("messy:") for t in c.tags):
            if "robust" not in c.tags:
                c.add_tags("robust")
            n += 1
    return n


def _last_user_words(c: Candidate) -> str:
    text = c.prompt_text or ""
    return text.splitlines()[-1] if text else ""


def _error_message(raw: str | None) -> str:
    import json

    try:
        return str(json.loads(raw or "{}").get("message") or "the request failed")
    except (ValueError, AttributeError):
        return "the request failed"
