"""Unit conversion: "Convert 12 km to mi" is answered {"value": 7.46, "unit": "mi"}."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from flywheel.domains import Domain, Example, Task, TaskType, Verdict

FACTORS = {("km", "mi"): 0.621371, ("mi", "km"): 1.609344, ("kg", "lb"): 2.204623, ("lb", "kg"): 0.453592}
_REQUEST = re.compile(r"(-?\d+(?:\.\d+)?)\s*(km|mi|kg|lb)\b.*?\b(km|mi|kg|lb)\b", re.IGNORECASE)


class Conversion(BaseModel):
    """The answer: one source of truth for validation and the JSON Schema."""

    model_config = ConfigDict(extra="forbid")
    value: float
    unit: Literal["km", "mi", "kg", "lb"]


def verify(messages: list[dict], answer: str) -> Verdict:
    """The answer is a Conversion with the right unit and value (within 1%)."""
    try:
        got = Conversion.model_validate_json(answer)
    except ValidationError as exc:
        return Verdict(False, 0.0, [f"not a conversion: {exc.errors()[0]['msg']}"])
    asked = _REQUEST.search(messages[-1]["content"]) if messages else None
    if asked is None:
        return Verdict(False, 0.5, ["the request names no conversion"])
    amount, source, target = float(asked.group(1)), asked.group(2).lower(), asked.group(3).lower()
    expected = amount * FACTORS.get((source, target), float("nan"))
    reasons = []
    if got.unit != target:
        reasons.append(f"unit: expected {target}")
    if not abs(got.value - expected) <= 0.01 * abs(expected):
        reasons.append(f"value: expected about {expected:.2f}")
    return Verdict(not reasons, 1.0 if not reasons else 0.5 / len(reasons), reasons)


domain = Domain(
    name="units",
    tasks=(
        Task(
            type=TaskType(
                name="units/convert",
                description="Convert a quantity from one unit of length or weight to another.",
                seeds=("Convert 12 km to mi", "how many pounds is 3 kg?", "5 miles in kilometres please",
                       "What is 70 kg in lb?"),
                weight=1.5,
            ),
            verifier=verify,
            output_schema=Conversion.model_json_schema(),
            examples=(Example("Convert 10 km to mi", '{"value": 6.21, "unit": "mi"}'),
                      Example("2 lb in kg?", '{"value": 0.91, "unit": "kg"}')),
        ),
    ),
    rubric="the converted value is right to two decimals and in the unit the user asked for",
)
