"""Schema-constrained decoding: the automaton, and the logits processor over the real
tokenizer driven by random logits (whatever the model prefers, the output stays valid)."""

from __future__ import annotations

import json
import random

import pytest

from flywheel.simulate import charts
from training.labeling.constrained import (
    JsonSchemaProcessor,
    UnsupportedSchema,
    chart_schema,
    feed_text,
    from_json_schema,
    initial_state,
    is_done,
)
from training.labeling.verify import CHART_TASK, verify


def _schema(s: charts.DatasetSchema):
    return chart_schema(s.dimensions, s.metrics, s.time_field)


def test_every_ground_truth_config_is_accepted_compact_or_spaced():
    rng = random.Random(9)
    for _ in range(300):
        request = charts.generate_request(rng)
        schema = _schema(request.schema)
        assert is_done(feed_text(initial_state(schema), charts.dump_config(request.truth)))
        assert is_done(feed_text(initial_state(schema), json.dumps(request.truth)))


@pytest.mark.parametrize("text", [
    '{"chartType":"CHART_RADAR"',                                    # not in the enum
    '{"colour":',                                                    # unknown key
    '{"chartType":"TABLE_DETAIL","chartType"',                       # duplicate key
    '{"chartFields":{"dimensions":["Galaxy"',                        # not in the prompt's list
    '{"chartFields":{"dimensions":["Region"],"metrics":["Sales"]},"mainAxis":"Product"',  # not a chosen dimension
    '{"chartType":"TABLE_DETAIL"}',                                  # required keys missing
    '{"chartTimeFilter":{"granularity":"month","dayjsScript":["x"',  # not a dayjs expression
    '{"chartTimeFilter":{"granularity":"month","dayjsScript":["dayjs()"]}',  # one bound only
    '{"topN":{"number":1.5',                                         # not an integer
    '{\n',                                                           # no newlines
    '{"chartType":  ',                                               # no runs of spaces
    ' {',                                                            # starts with the object
    '{"mainAxis":',                                                  # DESIGN.md's key order
    '{"chartType":"TABLE_DETAIL","chartFields":{"dimensions":["Region"],"metrics":["Sales","Sales"',  # a name twice
    '{"topN":{"metric":"Sales","sort":"ASC","number":0',             # topN.number >= 1
    '{"chartType":"TABLE_DETAIL","chartFields":{"dimensions":["Region"],"metrics":["Sales"]},"mainAxis":"Region",'
    '"metricFilters":[{"metric":"Sales","filter":{"condition":"interval","value":"--',  # not a number
])
def test_invalid_prefixes_are_refused(text):
    assert feed_text(initial_state(_schema(charts.get_schema("retail_sales"))), text) is None


def test_a_complete_document_admits_nothing_more():
    schema = _schema(charts.get_schema("retail_sales"))
    done = feed_text(initial_state(schema), '{"chartType":"CHART_PIE","chartFields":{"dimensions":["Region"],"metrics":["Sales"]},"mainAxis":"Region"}')
    assert is_done(done)
    assert feed_text(done, " ") is None and feed_text(done, "x") is None


def test_any_json_schema_within_the_supported_part_compiles():
    schema = from_json_schema({
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 2, "uniqueItems": True},
                       "n": {"type": "integer", "minimum": 1}, "kind": {"const": "x"}},
        "required": ["kind"],
    })
    assert is_done(feed_text(initial_state(schema), '{"kind":"x","tags":["a","b"],"n":3}'))
    assert feed_text(initial_state(schema), '{"tags":["a","a"') is None  # unique items
    assert feed_text(initial_state(schema), '{"n":0') is None  # minimum 1
    for unsupported in ({"type": "boolean"}, {"oneOf": [{"type": "string"}, {"type": "number"}]}, {"$ref": "#/$defs/Nope"}):
        with pytest.raises(UnsupportedSchema):
            from_json_schema(unsupported)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def test_processor_under_random_logits_yields_valid_configs(tokenizer):
    import torch

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(1)
    torch.manual_seed(1)
    for i in range(3):
        request = charts.generate_request(rng)
        schema = _schema(request.schema)
        rows = 1
        ids = torch.zeros((rows, 3), dtype=torch.long)
        proc = JsonSchemaProcessor(tokenizer, schema, prompt_len=3, eos_token_id=eos, top_k=64)
        finished = [False] * rows
        for _ in range(1500):  # random text fills free strings up to their length caps
            scores = torch.randn(rows, len(tokenizer))
            # A model that loves closing quotes and braces would end early; one that loves
            # letters would ramble: random logits test both ways.
            masked = proc(ids, scores)
            nxt = masked.argmax(dim=-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            finished = [f or int(t) == eos for f, t in zip(finished, nxt)]
            if all(finished):
                break
        assert all(finished), "the automaton must reach the end of the document"
        for row in ids[:, 3:].tolist():
            text = tokenizer.decode(row[: row.index(eos)])
            config = json.loads(text)
            assert charts.validate_config(config, request.schema) == [], text
            messages = [{"role": "user", "content": charts.build_prompt(request.schema, request.text)}]
            assert verify(CHART_TASK, messages, text).passed, text
        assert proc.stats["dead_ends"] == 0


def test_processor_finishes_within_the_token_budget(tokenizer):
    """Random logits ramble into every free string; near the end of the budget the
    processor's closing mode still completes the document in time."""
    import torch

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(2)
    torch.manual_seed(2)
    budget = 70  # the smallest configuration is ~110 characters: closing mode must act from the start
    for _ in range(2):
        request = charts.generate_request(rng)
        proc = JsonSchemaProcessor(tokenizer, _schema(request.schema), prompt_len=3, eos_token_id=eos, top_k=64,
                                   max_new_tokens=budget)
        ids = torch.zeros((1, 3), dtype=torch.long)
        for _ in range(budget):
            nxt = proc(ids, torch.randn(1, len(tokenizer))).argmax(dim=-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if int(nxt[0]) == eos:
                break
        row = ids[0, 3:].tolist()
        assert eos in row, "no end within the budget"
        text = tokenizer.decode(row[: row.index(eos)])
        assert charts.validate_config(json.loads(text), request.schema) == [], text
        assert proc.stats["closing_steps"] > 0 and proc.stats["dead_ends"] == 0
