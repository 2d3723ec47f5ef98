"""The chart domain: an analytics assistant turns a request such as "monthly profit margin
by region for the last half year" into a chart configuration (DESIGN.md, "The demo domain").

- `config`: `ChartConfig`, the one source of truth of the configuration (pydantic);
- `prompt`: the app's prompt (`build_prompt`), and the lists read back from a prompt
  (`PromptLists`, `schema_from_prompt`, `lists_from_messages`);
- `validate`: `validate_config`, from the model, with names from the prompt's lists;
- `schema`: the JSON Schema of an answer for one prompt (`output_schema`);
- `verifier`: the ``data-viz/chart-config`` verifier and the training-target form;
- `score`: comparison against the true configuration (`is_correct`, `score_config`).

`domain` is what the ``flywheel.domains`` entry point ``chart`` names. The few-shot pool
(``examples.jsonl``) holds configurations of the simulator's ground truth, compact
prompts (the lists and the request, without the instructions, which the real prompt
gives); ``flywheel.simulate.charts.few_shot_examples`` regenerates it.
"""

from __future__ import annotations

from pathlib import Path

from flywheel.domains.chart.config import (
    CHART_TYPES,
    CONFIG_KEYS,
    DIMENSION_CONDITIONS,
    GRANULARITIES,
    METRIC_CONDITIONS,
    SORT_ORDERS,
    ChartConfig,
)
from flywheel.domains.chart.prompt import (
    PROMPT_TEMPLATE,
    PromptLists,
    build_followup_prompt,
    build_prompt,
    lists_from_messages,
    schema_from_prompt,
)
from flywheel.domains.chart.schema import config_json_schema, output_schema, output_schema_for
from flywheel.domains.chart.score import (
    FIELD_WEIGHTS,
    compare_configs,
    dump_config,
    is_correct,
    normalize_dayjs,
    parse_config,
    score_config,
)
from flywheel.domains.chart.validate import validate_config
from flywheel.domains.chart.verifier import chart_target, extract_json, verify_chart
from flywheel.domains.domain import Domain, Task
from flywheel.domains.errors import DomainError
from flywheel.domains.files import read_examples, read_task_types

__all__ = [
    "CHART_TASK",
    "CHART_TYPES",
    "CONFIG_KEYS",
    "DIMENSION_CONDITIONS",
    "FIELD_WEIGHTS",
    "GRANULARITIES",
    "METRIC_CONDITIONS",
    "PROMPT_TEMPLATE",
    "SORT_ORDERS",
    "ChartConfig",
    "PromptLists",
    "build_followup_prompt",
    "build_prompt",
    "chart_target",
    "compare_configs",
    "config_json_schema",
    "domain",
    "dump_config",
    "extract_json",
    "is_correct",
    "lists_from_messages",
    "normalize_dayjs",
    "output_schema",
    "output_schema_for",
    "parse_config",
    "schema_from_prompt",
    "score_config",
    "validate_config",
    "verify_chart",
]

CHART_TASK = "data-viz/chart-config"
_HERE = Path(__file__).parent

RUBRIC = (
    "the configuration draws the chart the user asked for (chart type, dimensions, metrics, filters, sort, top N and "
    "time range), uses only names from the prompt's lists, and is bare JSON"
)

(_chart_type,) = read_task_types(_HERE / "task_types.yaml")
if _chart_type.name != CHART_TASK:
    raise DomainError(f"{_HERE / 'task_types.yaml'} must declare {CHART_TASK}, not {_chart_type.name}")

domain = Domain(
    name="chart",
    description="Chart configurations from requests over the app's business data (the demo analytics assistant).",
    tasks=(
        Task(
            type=_chart_type,
            verifier=verify_chart,
            output_schema=output_schema_for,
            examples=read_examples(_HERE / "examples.jsonl").get(CHART_TASK, ()),
            target=chart_target,
        ),
    ),
    rubric=RUBRIC,
)
