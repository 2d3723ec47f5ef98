"""The control plane's request bodies, in one module: the views validate with them
(``parse``: a 400 in OpenAI's error format names the field) and /openapi.json describes
the API with their JSON Schemas. Unknown fields are ignored (older CLIs send what they
sent); types and bounds are checked before any view logic runs."""

from __future__ import annotations

from typing import Annotated, Literal

from flask import request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from services.control.errors import BodyError
from training.curation.review import ACTIONS

Name = Annotated[str, Field(min_length=1, max_length=256)]
Text = Annotated[str, Field(max_length=100_000)]


def _path_text(value: str) -> str:
    """A path the file system can take: no NUL byte, no lone surrogate (JSON can carry both;
    ``pathlib`` raises on them)."""
    if "\x00" in value:
        raise ValueError("a path cannot contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a path must be valid Unicode (no lone surrogates)") from None
    return value


#: A folder on the control plane's machine, as a client names it (found by the fuzzer: a NUL
#: in a path was a 500).
PathText = Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_path_text)]
#: A routing weight in percent: JSON lets a client send NaN or Infinity, and neither is one.
Weight = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ModelRegistration(_Body):
    """POST /api/models: register an adapter folder as a candidate version."""

    version: Name
    adapter_path: PathText
    parent: Name | None = None
    notes: Text | None = None
    dataset: Name | None = None
    training_run: Name | None = None


class RoutingUpdate(_Body):
    """POST /api/routing: split an alias's traffic over versions (percent, adding up to 100)."""

    alias: Name
    weights: dict[Name, Weight] = Field(min_length=1, max_length=64)
    reason: Text | None = None


class RolloutStart(_Body):
    """POST /api/rollouts: start the canary of a candidate (its latest evaluation must have
    passed the gate, unless an admin overrides it with a reason)."""

    candidate: Name
    alias: Name | None = None
    override_gate: bool = False
    reason: Text | None = None


class RolloutAction(_Body):
    """POST /api/rollouts/<alias>/<action> (pause, resume, promote, rollback...)."""

    reason: Text | None = None


class CurationStart(_Body):
    """POST /api/curation/runs."""

    full: bool = False


class ReviewFilterBody(_Body):
    """The ``filter`` of a review decision: what `flywheel review list` filters on."""

    task_type: Name | None = None
    state: Name | None = None
    run_id: Name | None = None
    run: Name | None = None
    label: Name | None = None
    status: Name | None = None
    candidate_ids: list[Name] | None = None
    limit: Annotated[int, Field(ge=1, lt=2**62)] | None = None  # DuckDB takes a LIMIT/OFFSET below 2**63
    offset: Annotated[int, Field(ge=0, lt=2**62)] = 0


class ReviewDecision(_Body):
    """POST /api/review/decisions: on named candidates (a reviewer) or on every candidate a
    filter picks (an admin)."""

    action: Literal[ACTIONS]  # type: ignore[valid-type]
    reviewer: Name | None = None
    candidate_ids: list[Name] | None = Field(None, max_length=10_000)
    filter: ReviewFilterBody | None = None
    reason: Text | None = None
    edited_response: Annotated[str, Field(max_length=1_000_000)] | None = None


class EvaluationRecord(_Body):
    """POST /api/evaluations: record the report an evaluation job wrote under DATA_DIR/evals."""

    folder: PathText


class Empty(_Body):
    """A POST that takes no body (any JSON object is ignored)."""


def query_limit(default: int, most: int = 1000) -> int:
    """The ``limit`` query parameter: a whole number of at least 1 (400 otherwise), at most ``most``."""
    raw = request.args.get("limit")
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise BodyError(f"'limit' must be a whole number, got {raw[:40]!r}", "limit") from None
    if limit < 1:
        raise BodyError(f"'limit' must be at least 1, got {limit}", "limit")
    return min(limit, most)


def parse(model: type[BaseModel], *, optional: bool = False):
    """The request's JSON body as ``model``; an empty body is ``model()`` when ``optional``."""
    data = request.get_json(silent=True)
    if data is None and optional and not request.get_data(cache=True).strip():
        data = {}
    if not isinstance(data, dict):
        raise BodyError("send a JSON object (Content-Type: application/json); the API is described at /openapi.json")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        what = "missing" if first["type"] == "missing" else f"invalid: {first['msg']}"
        raise BodyError(f"'{param}' is {what}" if param else f"invalid body: {first['msg']}", param) from None
