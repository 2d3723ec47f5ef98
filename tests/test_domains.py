"""Domains as plugins: Flywheel's own and a user's (tests/data/unit_converter, the worked
example of docs/domains.md) are found through the same entry-point group, or a module path
in settings; a broken plugin is a clear error. The chart domain's one source of truth,
`ChartConfig`, gives the validation, the JSON Schema and the decoder's schema."""

from __future__ import annotations

import ast
import json
import shutil
import sys
from importlib import metadata

import pytest

from flywheel.domains import (
    Domain,
    DomainError,
    Domains,
    Task,
    TaskType,
    active_domains,
    configure_domains,
    domains_for,
    load_domains,
)
from flywheel.domains.chart import (
    CHART_TASK,
    CHART_TYPES,
    CONFIG_KEYS,
    DIMENSION_CONDITIONS,
    GRANULARITIES,
    METRIC_CONDITIONS,
    PROMPT_TEMPLATE,
    SORT_ORDERS,
    ChartConfig,
    PromptLists,
    output_schema,
    validate_config,
)
from flywheel.errors import ConfigError
from flywheel.settings import load_settings
from tests.conftest import REPO
from training.curation.task_types import Taxonomy
from training.errors import TeacherError
from training.evaluation.judge import JUDGE_SYSTEM, Judge
from training.labeling.constrained import chart_schema, feed_text, from_json_schema, initial_state, is_done
from training.labeling.teacher import final_answer, load_pool
from training.labeling.verify import has_verifier, verify

EXAMPLE = REPO / "tests" / "data" / "unit_converter"
UNIT_TASK = "units/convert"


# ----------------------------------------------------------------------------- helpers


def _install(site, *, name="unit-converter", entry_points: str = "[flywheel.domains]\nunits = unit_converter.domain:domain\n",
             package: bool = True) -> None:
    """What `pip install` leaves behind: the package and a dist-info with its entry points."""
    if package:
        shutil.copytree(EXAMPLE, site / "unit_converter")
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site folder on sys.path; the process's domains are reloaded around the test."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    configure_domains((), reload=True)
    yield folder
    for mod in [m for m in sys.modules if m == "unit_converter" or m.startswith(("unit_converter.", "broken_plugin"))]:
        del sys.modules[mod]
    monkeypatch.undo()
    configure_domains((), reload=True)


def _convert(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ----------------------------------------------------------------------------- the built-in domains


def test_flywheel_registers_its_own_domains_as_plugins():
    names = {ep.name: ep.value for ep in metadata.entry_points(group="flywheel.domains")}
    assert names["chart"] == "flywheel.domains.chart:domain"
    assert names["general"] == "flywheel.domains.general:domain"
    loaded = load_domains()
    assert loaded.names[:2] == ["chart", "general"]
    taxonomy = Taxonomy.load(domains=loaded)
    assert CHART_TASK in taxonomy and "reasoning/math" in taxonomy
    assert taxonomy.names[0] == CHART_TASK  # the chart domain first, as the taxonomy file had it
    # Verifiers come from the domains: the chart's own, generic checks refined for math.
    assert has_verifier(CHART_TASK, domains=loaded) and has_verifier("reasoning/math", domains=loaded)
    assert not has_verifier("code/sql", domains=loaded)
    assert loaded.rubric(CHART_TASK) != loaded.rubric("reasoning/math")


def test_the_teacher_pool_comes_from_the_domains():
    pool = load_pool()
    assert len(pool[CHART_TASK]) == 48 and pool["reasoning/math"] and pool["chat/chitchat"]
    # The chart domain's shipped pool is the simulator's ground truth, regenerable from it.
    from flywheel.simulate.charts import few_shot_examples

    shipped = [json.loads(line) for line in (REPO / "flywheel/domains/chart/examples.jsonl").read_text().splitlines()]
    assert shipped == few_shot_examples(48, seed=0)
    for ex in pool[CHART_TASK]:
        assert validate_config(json.loads(ex["assistant"])) == []


def test_a_pool_file_goes_in_front_of_the_domains_examples(tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text('reasoning/math:\n  - user: "1+1?"\n    assistant: "2"\n')
    pool = load_pool(path)
    assert pool["reasoning/math"][0] == {"user": "1+1?", "assistant": "2"} and len(pool["reasoning/math"]) > 1
    path.write_text("reasoning/math:\n  - user: only\n")
    with pytest.raises(TeacherError, match="needs .user. and .assistant."):
        load_pool(path)


# ----------------------------------------------------------------------------- a user's domain


def test_a_users_domain_plugs_in_through_an_entry_point(site):
    _install(site)
    loaded = load_domains()
    assert "units" in loaded.names
    # Its task type reaches the taxonomy (and the selection budgets).
    taxonomy = Taxonomy.load(domains=loaded)
    assert UNIT_TASK in taxonomy and taxonomy.weights()[UNIT_TASK] == 1.5
    # Its verifier is the one verify() uses, also through the process's own registry.
    good, wrong = '{"value": 7.46, "unit": "mi"}', '{"value": 19.3, "unit": "km"}'
    messages = _convert("Convert 12 km to mi")
    assert verify(UNIT_TASK, messages, good, domains=loaded).passed
    verdict = verify(UNIT_TASK, messages, wrong)
    assert not verdict.passed and "unit: expected mi" in verdict.reasons and has_verifier(UNIT_TASK)
    # Its output schema drives constrained decoding; its examples join the teacher's pool;
    # its rubric is the judge's for its task type.
    schema = from_json_schema(active_domains().output_schema(UNIT_TASK, messages))
    assert is_done(feed_text(initial_state(schema), good))
    assert feed_text(initial_state(schema), '{"value": 7.46, "unit": "ft"') is None
    assert load_pool()[UNIT_TASK][0]["user"] == "Convert 10 km to mi"
    assert "unit the user asked for" in Judge(None).system(UNIT_TASK) and Judge(None).system(None) == JUDGE_SYSTEM
    assert final_answer("Final answer: 7.46 mi", UNIT_TASK) == "7.46 mi"  # no target form: the text


def test_a_users_domain_plugs_in_through_settings(site):
    shutil.copytree(EXAMPLE, site / "unit_converter")  # importable, but not installed: no entry point
    assert "units" not in load_domains().names
    settings = load_settings(None, env={"FLYWHEEL_DOMAINS__MODULES": '["unit_converter.domain:domain"]'})
    loaded = domains_for(settings)
    assert loaded.names[-1] == "units" and UNIT_TASK in Taxonomy.load(domains=loaded)
    assert verify(UNIT_TASK, _convert("What is 3 kg in lb?"), '{"value": 6.61, "unit": "lb"}').passed
    # The same domain reached twice (entry point and settings) counts once.
    _install(site, package=False)
    assert load_domains(["unit_converter.domain:domain"]).names.count("units") == 1


def test_broken_plugins_are_clear_errors(site):
    _install(site, name="broken-plugin", entry_points="[flywheel.domains]\nbroken = broken_plugin:domain\n", package=False)
    (site / "broken_plugin.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(DomainError, match=r"domain plugin 'broken' .*broken-plugin.*cannot load it: ModuleNotFoundError"):
        load_domains()
    (site / "broken_plugin.py").write_text("domain = 42\n")
    with pytest.raises(DomainError, match=r"'broken' .*got int, expected a flywheel.domains.Domain"):
        load_domains()
    with pytest.raises(DomainError, match=r"'nope' \(settings domains.modules\): 'nope' must be 'package.module:attribute'"):
        load_domains(["nope"], entry_points=False)
    with pytest.raises(DomainError, match=r"has no attribute 'missing'"):
        load_domains(["flywheel.domains.chart:missing"], entry_points=False)
    with pytest.raises(ConfigError, match="domains.modules"):
        load_settings(None, env={"FLYWHEEL_DOMAINS__MODULES": '["nocolon"]'})


def test_malformed_domains_say_what_is_wrong(site):
    (site / "bad_domains.py").write_text(
        "from flywheel.domains import Domain, Task, TaskType\n"
        "one_seed = Domain('thin', (Task(TaskType('thin/one', 'A type', ('only seed',))),))\n"
        "no_group = Domain('flat', (Task(TaskType('flat', 'A type', ('a', 'b')), verifier='not callable'),))\n"
        "clash = Domain('copycat', (Task(TaskType('data-viz/chart-config', 'Mine', ('a', 'b'))),))\n")
    with pytest.raises(DomainError, match=r"bad_domains:one_seed.*'thin/one': needs at least 2 seed examples \(has 1\)"):
        load_domains(["bad_domains:one_seed"], entry_points=False)
    with pytest.raises(DomainError, match=r"must be 'group/type'.*the verifier must be callable"):
        load_domains(["bad_domains:no_group"], entry_points=False)
    with pytest.raises(DomainError, match=r"'data-viz/chart-config' is declared by two domains: 'chart' and 'copycat'"):
        load_domains(["bad_domains:clash"])
    sys.modules.pop("bad_domains", None)


def test_a_domain_is_a_plain_value():
    plain = Domain("tiny", (Task(TaskType("tiny/echo", "Repeat the user's words.", ("say hi", "repeat after me"))),))
    assert plain.problems() == []
    loaded = Domains([plain])
    assert [t.name for t in loaded.task_types()] == ["tiny/echo"] and loaded.rubric("tiny/echo") is None
    # No verifier of its own: the generic checks.
    assert not has_verifier("tiny/echo", domains=loaded)
    assert verify("tiny/echo", _convert("say hi"), "hi there, friend", domains=loaded).passed
    assert not verify("tiny/echo", _convert("say hi"), "", domains=loaded).passed


# ----------------------------------------------------------------------------- the chart domain: one source of truth


def test_the_json_schema_is_derived_from_chart_config():
    schema = ChartConfig.model_json_schema()
    assert tuple(schema["properties"]) == CONFIG_KEYS
    assert schema["required"] == ["chartType", "chartFields", "mainAxis"] and schema["additionalProperties"] is False
    defs = schema["$defs"]
    assert tuple(defs["ChartType"]["enum"]) == CHART_TYPES
    assert tuple(defs["Granularity"]["enum"]) == GRANULARITIES
    assert tuple(defs["DimensionCondition"]["enum"]) == DIMENSION_CONDITIONS
    assert tuple(defs["SortOrder"]["enum"]) == SORT_ORDERS
    assert defs["MetricFilter"]["properties"]["filter"]["discriminator"]["propertyName"] == "condition"
    conditions = [c for name in ("ThresholdFilter", "IntervalFilter") for c in
                  defs[name]["properties"]["condition"].get("enum", [defs[name]["properties"]["condition"].get("const")])]
    assert tuple(conditions) == METRIC_CONDITIONS
    # For one prompt, the names become enums; the decoder's schema is compiled from that.
    lists = PromptLists("prompt", "Order date", ("Region",), ("Sales", "Profit"))
    one = output_schema(lists)
    assert one["properties"]["mainAxis"]["enum"] == ["Order date", "Region"]
    assert one["$defs"]["ChartFields"]["properties"]["metrics"]["items"]["enum"] == ["Sales", "Profit"]
    assert one["$defs"]["TopN"]["properties"]["metric"]["enum"] == ["Sales", "Profit"]
    decoder = chart_schema(lists.dimensions, lists.metrics, lists.time_field)
    assert tuple(decoder.props) == CONFIG_KEYS and decoder.ordered
    assert decoder.props["chartType"].enum == CHART_TYPES
    assert decoder.props["mainAxis"].dynamic == "dims" and decoder.props["chartFields"].props["dimensions"].max_items == 3


def test_the_prompt_text_is_the_apps_byte_for_byte():
    assert PROMPT_TEMPLATE == (
        "You are a data visualization assistant. Turn the user's request into a JSON chart configuration.\n"
        "Allowed keys: chartType, chartFields, mainAxis, sort, topN, dimensionFilters, metricFilters, chartTimeFilter.\n"
        "- chartType: CHART_COLUMN, CHART_LINE, CHART_PIE or TABLE_DETAIL.\n"
        '- chartFields: {"dimensions": [...], "metrics": [...]}, names taken only from the lists below.\n'
        "- mainAxis: the main axis, usually a dimension or the time field.\n"
        '- chartTimeFilter: only when the user gives a time range: {"granularity": "day"|"week"|"month"|"quarter"|"year", '
        '"dayjsScript": [start, end]}, each a dayjs expression.\n'
        '- dimensionFilters: only when the user restricts dimension values: [{"dimension": ..., "filter": {"condition": '
        '"in"|"not-in"|"like"|"not-like", "value": [...]}}].\n'
        '- metricFilters: only when the user restricts a metric\'s value: [{"metric": ..., "filter": {"condition": '
        '"greater"|"less"|"interval", "value": number, or "low,high" for interval}}].\n'
        '- sort: only when the user asks for an order: {"metric": ..., "sort": "ASC"|"DESC"}.\n'
        '- topN: only for the top or bottom N: {"metric": ..., "sort": "ASC"|"DESC", "number": N}.\n'
        "For a trend over time, use the time field as mainAxis and CHART_LINE.\n"
        "Dimensions: {dimensions}\n"
        "Metrics: {metrics}\n"
        "Time field: {time_field}\n"
        "Request: {request}\n"
        "JSON:"
    )


_OK = {"chartType": "CHART_COLUMN", "chartFields": {"dimensions": ["Region"], "metrics": ["Sales"]}, "mainAxis": "Region"}
_SHAPE = {
    "chartType": "chartType must be one of ('CHART_COLUMN', 'CHART_LINE', 'CHART_PIE', 'TABLE_DETAIL')",
    "chartFields": "chartFields must be {'dimensions': [...], 'metrics': [...]}",
    "sort": "sort must be {'metric': ..., 'sort': 'ASC'|'DESC'}",
    "topN": "topN must be {'metric': ..., 'sort': 'ASC'|'DESC', 'number': N >= 1}",
    "dimensionFilters": "a dimension filter must be {'dimension': ..., 'filter': {'condition': in|not-in|like|not-like, "
                        "'value': [strings]}}",
    "metricFilters": "a metric filter must be {'metric': ..., 'filter': {'condition': greater|less|interval, 'value': ...}}",
    "chartTimeFilter": "chartTimeFilter must be {'granularity': day|week|month|quarter|year, 'dayjsScript': [start, end]}",
}
_INTERVAL = "an interval filter's value must be 'low,high' with low <= high"
_NUMBER = "a greater/less filter's value must be a number"


# Cases and messages recorded from the hand-written validate_config this replaces.
@pytest.mark.parametrize("config, expected", [
    ([], ["the configuration must be a JSON object"]),
    (_OK, []),
    ({}, [_SHAPE["chartType"], _SHAPE["chartFields"], "mainAxis must be a non-empty string"]),
    ({**_OK, "colour": "blue", "size": 3}, ["unknown key 'colour'", "unknown key 'size'"]),
    ({**_OK, "chartType": "CHART_RADAR"}, [_SHAPE["chartType"]]),
    ({**_OK, "chartType": None}, [_SHAPE["chartType"]]),
    ({**_OK, "chartFields": "x"}, [_SHAPE["chartFields"]]),
    ({**_OK, "chartFields": {"dimensions": "Region", "metrics": ["Sales"]}}, [_SHAPE["chartFields"]]),
    ({**_OK, "chartFields": {"dimensions": ["Region", 3, ""], "metrics": []}},
     ["dimension must be a non-empty string", "dimension must be a non-empty string", "chartFields.metrics must not be empty"]),
    ({**_OK, "chartFields": {"dimensions": ["Galaxy"], "metrics": ["Sales", "Nope"], "extra": 1, "more": 2}},
     ["dimension 'Galaxy' is not in the schema", "metric 'Nope' is not in the schema",
      "chartFields takes only dimensions and metrics"]),
    ({**_OK, "mainAxis": ""}, ["mainAxis must be a non-empty string"]),
    ({**_OK, "mainAxis": "Galaxy"}, ["mainAxis 'Galaxy' is not in the schema"]),
    ({**_OK, "sort": {"metric": "Sales", "sort": "UP"}}, [_SHAPE["sort"]]),
    ({**_OK, "sort": {"metric": 5, "sort": "ASC"}}, ["sort.metric must be a non-empty string"]),
    ({**_OK, "sort": None}, [_SHAPE["sort"]]),
    ({**_OK, "topN": {"metric": "Sales", "sort": "DESC", "number": 0}}, [_SHAPE["topN"]]),
    ({**_OK, "topN": {"metric": "Sales", "sort": "DESC", "number": True}}, [_SHAPE["topN"]]),
    ({**_OK, "topN": {"metric": "Nope", "sort": "DESC", "number": 3}}, ["topN.metric 'Nope' is not in the schema"]),
    ({**_OK, "dimensionFilters": {"dimension": "Region"}}, ["dimensionFilters must be a list"]),
    ({**_OK, "dimensionFilters": [{"dimension": "Region", "filter": {"condition": "in", "value": []}},
                                  {"dimension": "Galaxy", "filter": {"condition": "like", "value": ["x"]}},
                                  {"dimension": None, "filter": {"condition": "in", "value": ["x"]}}]},
     [_SHAPE["dimensionFilters"], "dimensionFilters.dimension 'Galaxy' is not in the schema",
      "dimensionFilters.dimension must be a non-empty string"]),
    ({**_OK, "metricFilters": [{"metric": "Sales", "filter": {"condition": "interval", "value": "20,10"}},
                               {"metric": "Sales", "filter": {"condition": "greater", "value": "10"}},
                               {"metric": "Nope", "filter": {"condition": "less", "value": True}},
                               {"metric": "Sales", "filter": {"condition": "between", "value": 1}},
                               {"metric": "Sales", "filter": {"condition": "interval", "value": "$10, 20%"}},
                               {"metric": "Sales", "filter": {"condition": "interval", "value": [1, 2]}}]},
     [_INTERVAL, _NUMBER, "metricFilters.metric 'Nope' is not in the schema", _NUMBER, _SHAPE["metricFilters"]]),
    ({**_OK, "metricFilters": None}, ["metricFilters must be a list"]),
    ({**_OK, "chartTimeFilter": {"granularity": "month"}}, [_SHAPE["chartTimeFilter"]]),
    ({**_OK, "chartTimeFilter": {"granularity": "month", "dayjsScript": ["dayjs()", "moment()"]}}, [_SHAPE["chartTimeFilter"]]),
    ({**_OK, "chartTimeFilter": {"granularity": "month", "dayjsScript": [" dayjs().startOf('month')", "dayjs()"]}}, []),
])
def test_validation_keeps_the_old_messages(config, expected):
    retail = PromptLists("retail_sales", "Order date", ("Region", "Product category", "Product", "Customer segment",
                                                         "Sales rep", "Ship mode"),
                         ("Sales", "Profit", "Profit margin", "Quantity", "Discount rate", "Return rate",
                          "Customer satisfaction"))
    assert validate_config(config, retail) == expected


# ----------------------------------------------------------------------------- layers


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_domains_are_the_lowest_layer_and_the_simulator_only_a_client():
    higher = ("training", "serving", "services", "streams", "flywheel.simulate", "flywheel.cli")
    for path in (REPO / "flywheel" / "domains").rglob("*.py"):
        bad = [m for m in _imports(path) if m.startswith(higher)]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}: domains are the lowest layer"
    # Nothing outside the simulator and the benches imports it, but the CLI's simulate command (its front end).
    allowed = {REPO / "flywheel" / "cli" / "simulate.py"}
    for folder in ("flywheel", "services", "serving", "streams", "training"):
        for path in (REPO / folder).rglob("*.py"):
            if path in allowed or (REPO / "flywheel" / "simulate") in path.parents:
                continue
            bad = [m for m in _imports(path) if m == "flywheel.simulate" or m.startswith("flywheel.simulate.")]
            assert not bad, f"{path.relative_to(REPO)} imports the simulator ({bad})"


def test_the_worked_example_in_the_docs_is_the_tested_one():
    doc = (REPO / "docs" / "domains.md").read_text(encoding="utf-8")
    assert (EXAMPLE / "domain.py").read_text(encoding="utf-8") in doc
    assert "[project.entry-points.\"flywheel.domains\"]" in doc and "units = \"unit_converter.domain:domain\"" in doc
