"""PII redaction: the corpus is fully redacted, the demo domain is left alone, checksums
decide what counts as an ID or a card, and the redactor is configurable.

tests/data/pii_corpus.jsonl is labelled: each line maps every raw PII value in its text to
its kind; lines without PII are look-alikes (order numbers, dates, versions, timestamps,
chart JSON, UUIDs, prices...) with a note saying which. `test_corpus_recall_and_precision`
prints the figures docs/reliability.md quotes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from streams.redact import (
    KINDS,
    RedactionError,
    Redactor,
    cn_id_is_valid,
    iban_is_valid,
    luhn_is_valid,
    redact,
    ssn_is_valid,
)

CORPUS = Path(__file__).parent / "data" / "pii_corpus.jsonl"


def load_corpus() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def cn_id(body17: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body17 + "10X98765432"[sum(int(c) * w for c, w in zip(body17, weights)) % 11]


def with_wrong_check(number: str) -> str:
    return number[:-1] + ("0" if number[-1] != "0" else "1")


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


def test_corpus_is_well_formed():
    items = load_corpus()
    assert len(items) >= 100
    negatives = [it for it in items if not it["pii"]]
    assert len(negatives) >= 40 and all(it.get("note") for it in negatives)  # each says what it looks like
    for it in items:
        assert set(it) <= {"text", "pii", "note"} and isinstance(it["pii"], dict)
        for raw, kind in it["pii"].items():
            assert raw and raw in it["text"], raw
            assert kind in KINDS, kind
    values = [raw for it in items for raw in it["pii"]]
    for it in negatives:  # tests scan whole pipelines for every value: a look-alike may not hold one
        assert not [raw for raw in values if raw in it["text"]], it["text"]
    per_kind = {kind: sum(kind in it["pii"].values() for it in items) for kind in KINDS}
    assert all(n >= 5 for n in per_kind.values()), per_kind


@pytest.mark.parametrize("item", [it for it in load_corpus() if it["pii"]], ids=lambda it: it["text"][:40])
def test_every_corpus_item_is_fully_redacted(redactor, item):
    out, counts = redactor.redact_with_counts(item["text"])
    for raw in item["pii"]:
        assert raw not in out, f"{raw!r} survived: {out!r}"
    assert set(counts) == set(item["pii"].values()), f"typed as {counts}: {out!r}"
    assert redactor.redact_with_counts(out) == (out, {})  # placeholders are never re-redacted


@pytest.mark.parametrize("item", [it for it in load_corpus() if not it["pii"]], ids=lambda it: it["text"][:40])
def test_corpus_negatives_are_unchanged(redactor, item):
    assert redactor.redact(item["text"]) == item["text"]


def corpus_figures(redactor: Redactor, items: list[dict]) -> dict:
    """Recall per kind: labelled values that do not survive redaction. Precision: the
    replacements that were due; a replacement is spurious when it is in a look-alike line
    or beyond the number of labelled values of its line (one placeholder may cover more
    than one labelled value, as a PEM block's lines)."""
    found = {kind: [0, 0] for kind in KINDS}  # kind -> [redacted, labelled]
    replacements = spurious = 0
    for it in items:
        out, counts = redactor.redact_with_counts(it["text"])
        for raw, kind in it["pii"].items():
            found[kind][0] += raw not in out
            found[kind][1] += 1
        n = sum(counts.values())
        replacements += n
        spurious += max(0, n - len(it["pii"]))
    labelled = sum(t for _, t in found.values())
    return {
        "lines": len(items),
        "lookalike_lines": sum(1 for it in items if not it["pii"]),
        "labelled_values": labelled,
        "recall": sum(r for r, _ in found.values()) / labelled,
        "recall_per_kind": {k: f"{r}/{t}" for k, (r, t) in found.items()},
        "precision": (replacements - spurious) / replacements if replacements else 1.0,
        "replacements": replacements,
        "spurious": spurious,
    }


def test_corpus_recall_and_precision(redactor, capsys):
    figures = corpus_figures(redactor, load_corpus())
    with capsys.disabled():
        print(f"\nPII corpus: {json.dumps(figures)}")
    assert figures["recall"] == 1.0, figures["recall_per_kind"]
    assert figures["precision"] == 1.0, figures


@pytest.mark.parametrize(
    "text, kind",
    [
        ("mail ada@example.com now", "EMAIL"),
        ("call +44 20 7946 0958", "PHONE"),
        ("call +1 (415) 555-0132", "PHONE"),
        ("call 415-555-0132", "PHONE"),
        ("手机 138 1234 5678", "PHONE"),
        ("手机+86-13812345678", "PHONE"),
        ("card 4111 1111 1111 1111", "BANK_CARD"),
        ("card 4111-1111-1111-1111", "BANK_CARD"),
        ("host 10.20.30.40", "IP"),
        ("host 2001:db8::ff00:42:8329", "IP"),
        ("key sk-abcdefghijklmnop1234567890", "SECRET"),
        ("api_key=abc123", "SECRET"),
        ("token: 9f8e7d6c5b4a", "SECRET"),
        ("SSN 078-05-1120", "SSN"),
        ("iban DE89 3704 0044 0532 0130 00", "IBAN"),
        ("passport no. X1234567", "PASSPORT"),
        ("ring 07700 900123", "PHONE"),
        ("appelez le 01 23 45 67 89", "PHONE"),
        ("key sk_live_51H8xYzAbCdEfGhIjKl", "SECRET"),
        ("key AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "SECRET"),
        ("postgres://u:pw@db", "SECRET"),
    ],
)
def test_each_kind_gets_its_typed_placeholder(redactor, text, kind):
    out, counts = redactor.redact_with_counts(text)
    assert f"<{kind}>" in out
    assert counts == {kind: 1}


def test_valid_cn_ids_are_redacted_in_all_forms(redactor):
    number = cn_id("11010119900307777")
    assert cn_id_is_valid(number)
    assert redactor.redact(f"ID {number}.") == "ID <CN_ID>."
    assert redactor.redact(f"ID {number[:6]} {number[6:14]} {number[14:]}") == "ID <CN_ID>"
    assert redactor.redact("旧号码110101850307123。") == "旧号码<CN_ID>。"


def test_ids_and_cards_are_not_half_eaten_by_the_phone_rule(redactor):
    number = cn_id("13812319900307123")  # starts like a mobile number: 13812319900...
    assert redactor.redact_with_counts(f"ID {number}") == ("ID <CN_ID>", {"CN_ID": 1})
    card = next(c for c in (f"62221381234567{i}{j}" for i in range(10) for j in range(10)) if luhn_is_valid(c))
    grouped = " ".join(card[i : i + 4] for i in range(0, 16, 4))  # "6222 1381 2345 67xx"
    assert redactor.redact_with_counts(f"卡号 {grouped}") == ("卡号 <BANK_CARD>", {"BANK_CARD": 1})
    assert redactor.redact_with_counts(f"卡号{card}") == ("卡号<BANK_CARD>", {"BANK_CARD": 1})


def test_checksum_failing_ids_are_not_cn_ids(redactor):
    rng = random.Random(7)
    for _ in range(200):
        body = f"{rng.choice(['110101', '310104', '440106'])}{rng.randrange(1950, 2005)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}{rng.randrange(1000):03d}"
        bad = with_wrong_check(cn_id(body))
        assert not cn_id_is_valid(bad)
        out, counts = redactor.redact_with_counts(f"编号{bad}")
        assert "CN_ID" not in counts
        # A number that is neither an ID nor a Luhn-valid card starting 2-6 stays as it is.
        if not luhn_is_valid(bad) or bad[0] not in "23456":
            assert out == f"编号{bad}"


def test_implausible_birth_dates_are_not_cn_ids(redactor):
    for body in ("11010119900230123", "11010120990101123", "11010118500101123"):  # Feb 30, future, before 1900
        number = cn_id(body)
        assert not cn_id_is_valid(number)
        assert "CN_ID" not in redactor.redact_with_counts(number)[1]


def test_luhn_failing_cards_are_not_redacted(redactor):
    rng = random.Random(11)
    seen = 0
    while seen < 200:
        digits = rng.choice("3456") + "".join(str(rng.randrange(10)) for _ in range(15))
        if luhn_is_valid(digits):
            continue
        seen += 1
        grouped = " ".join(digits[i : i + 4] for i in range(0, 16, 4))
        for text in (f"card {digits}", f"card {grouped}"):
            out, counts = redactor.redact_with_counts(text)
            assert "BANK_CARD" not in counts
        # Contiguous, it stays as it is; grouped, its last groups may still look like a
        # phone number to the later, looser phone rule (over-redaction, never a leak).
        assert redactor.redact(f"card {digits}") == f"card {digits}"


def test_luhn_helper():
    assert luhn_is_valid("4111111111111111")
    assert luhn_is_valid("378282246310005")
    assert not luhn_is_valid("4111111111111112")


NEGATIVES = [
    "2024-01-31",
    "from 2024-01-01 to 2024-03-31, 10:30 to 17:45:59",
    "sales in 2023 vs 2024",
    "top 10 products, top 5 regions, bottom 3 reps",
    "Q3 revenue grew 12.5% to $1,299,000.00 (¥8,880,000)",
    "version 1.2.3, build 2.10.0-rc1, python 3.11.7",
    "the release 1.2.3.4.5 notes",
    "dayjs().subtract(6, 'month').startOf('month')",
    "[\"dayjs().startOf('year')\", \"dayjs().quarter(3).endOf('quarter')\"]",
    '{"chartType": "CHART_COLUMN", "chartFields": {"dimensions": ["Region"], "metrics": ["Sales"]}, '
    '"mainAxis": "Region", "topN": {"metric": "Sales", "sort": "DESC", "number": 5}, '
    '"metricFilters": [{"metric": "Profit margin", "filter": {"condition": "interval", "value": "10,20"}}]}',
    "max_tokens: 200, temperature: 0.8, n: 2",
    "Use a Bearer token for authentication; the secret to good charts is clarity.",
    "Allowed keys: chartType, chartFields, mainAxis, sort, topN",
    "std::vector<int> v; a::b",
    "shipments of 1,250 parcels weighing 12.75 kg on 2024-02-29 at 08:00",
    "order 20240131001 and invoice 1706659200000",
    "上个月各地区的销售额，前5名，利润率大于20%，2024年第三季度",
    "Company size 1-10, 11-50, 201-1000, 1000+",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_no_false_positives_on_the_demo_domain(redactor, text):
    assert redactor.redact(text) == text


def test_simulated_traffic_is_not_redacted(redactor):
    # Every prompt the traffic simulator sends (chart prompts with their lists, math
    # problems, paragraphs to summarise) must reach the warehouse intact.
    from flywheel.simulate.charts import build_prompt, generate_request
    from flywheel.simulate.tasks import TASK_TYPES, make_task

    rng = random.Random(3)
    for _ in range(300):
        request = generate_request(rng)
        prompt = build_prompt(request.schema, request.text)
        assert redactor.redact(prompt) == prompt
        truth = json.dumps(request.truth)
        assert redactor.redact(truth) == truth
    for task_type in TASK_TYPES:
        for _ in range(50):
            task = make_task(rng, task_type, messy_rate=0.3)
            for message in task.messages:
                assert redactor.redact(message["content"]) == message["content"]


def test_kinds_select_the_rules():
    text = "mail ada@example.com or call +44 20 7946 0958 from 10.0.0.1"
    assert Redactor(kinds=["EMAIL"]).redact(text) == "mail <EMAIL> or call +44 20 7946 0958 from 10.0.0.1"
    assert Redactor(kinds=["phone", "IP"]).redact(text) == "mail ada@example.com or call <PHONE> from <IP>"
    assert Redactor(kinds=[]).redact(text) == text
    assert Redactor().kinds == KINDS
    with pytest.raises(RedactionError, match="unknown PII kind"):
        Redactor(kinds=["EMAIL", "DNA"])


def test_extra_patterns_run_first_and_are_counted():
    r = Redactor(extra_patterns={"EMPLOYEE_ID": r"EMP-\d{6}", "<TICKET>": r"JIRA-[0-9]+"})
    out, counts = r.redact_with_counts("EMP-123456 filed JIRA-42, mail ada@example.com")
    assert out == "<EMPLOYEE_ID> filed <TICKET>, mail <EMAIL>"
    assert counts == {"EMPLOYEE_ID": 1, "TICKET": 1, "EMAIL": 1}
    # Operator patterns win over built-in ones: this order id would otherwise be a phone.
    r = Redactor(extra_patterns={"ORDER": r"ORD-\d{11}"})
    assert r.redact("ORD-13812345678") == "<ORDER>"
    assert r.extra_patterns == {"ORDER": r"ORD-\d{11}"}
    with pytest.raises(RedactionError, match="not a valid regular expression"):
        Redactor(extra_patterns={"BAD": "(unclosed"})
    with pytest.raises(RedactionError, match="empty string"):
        Redactor(extra_patterns={"EMPTY": "x*"})


def test_redact_messages_returns_new_dicts():
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "I'm ada@example.com", "name": "ada"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "call 415-555-0132"},
                {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    original = json.loads(json.dumps(messages))
    out = Redactor().redact_messages(messages)
    assert messages == original  # input untouched
    assert out[0] == messages[0] and out[0] is not messages[0]
    assert out[1] == {"role": "user", "content": "I'm <EMAIL>", "name": "ada"}
    assert out[2]["content"][0] == {"type": "text", "text": "call <PHONE>"}
    assert out[2]["content"][1] == messages[2]["content"][1]
    assert out[3] == messages[3]


def test_module_level_redact_and_empty_text():
    assert redact("ada@example.com") == "<EMAIL>"
    assert Redactor().redact_with_counts("") == ("", {})


def test_secret_variants(redactor):
    cases = {
        "ghp_" + "a1" * 18: "<SECRET>",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz": "<SECRET>",
        "AKIAIOSFODNN7EXAMPLE": "<SECRET>",
        "xoxp-1234567890-abcdef": "<SECRET>",
        "Authorization: Bearer abc.def-123_456": "Authorization: Bearer <SECRET>",
        "PASSWORD = 'p@ss w0rd'": "PASSWORD = '<SECRET>'",
        'AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMI/K7MDENG"': 'AWS_SECRET_ACCESS_KEY="<SECRET>"',
        "-----BEGIN PRIVATE KEY-----\nMIIB\n(truncated)": "<SECRET>",
    }
    for text, expected in cases.items():
        assert redactor.redact(text) == expected, text


def test_ssn_and_iban_checks():
    assert ssn_is_valid("078051120") and ssn_is_valid("899999999")
    for bad in ("000123456", "666123456", "900123456", "123006789", "123450000", "12345678", "12345678a"):
        assert not ssn_is_valid(bad), bad
    assert iban_is_valid("GB82 WEST 1234 5698 7654 32") and iban_is_valid("de89370400440532013000")
    for bad in ("GB82 WEST 1234 5698 7654 33", "GB82WEST123456987654", "XX82WEST12345698765432",
                "DE89 3704 0044 0532 0130 0"):
        assert not iban_is_valid(bad), bad


def test_urls_keep_scheme_user_and_host(redactor):
    cases = {
        "postgres://u:pw@host/db": "postgres://u:<SECRET>@host/db",
        "see postgresql://report:Tr0ub4dor3@db.internal:5432/sales now":
            "see postgresql://report:<SECRET>@db.internal:5432/sales now",
        "redis://:p@ss@cache:6379": "redis://:<SECRET>@cache:6379",  # the password runs to the last @ of the host part
        "https://example.com:8443/a?b=1": "https://example.com:8443/a?b=1",  # a port is not a password
        "https://ada@example.com/": "https://<EMAIL>/",
    }
    for text, expected in cases.items():
        assert redactor.redact(text) == expected, text


def test_context_words_gate_passport_and_bare_ssn(redactor):
    assert redactor.redact("passport no. X1234567") == "passport no. <PASSPORT>"
    assert redactor.redact("ticket X1234567") == "ticket X1234567"  # the same number without its word
    assert redactor.redact("SSN 078051120") == "SSN <SSN>"
    assert redactor.redact("order 078051120") == "order 078051120"
    assert redactor.redact("Passport.js 0.7.0, passport photo 35x45") == "Passport.js 0.7.0, passport photo 35x45"
