"""The control plane's OpenAPI document (GET /openapi.json): its JSON API (/api/*, /healthz),
with the request bodies of ``protocol`` (the models the views validate with). The console's
HTML pages (/console/*, /) are not part of it."""

from __future__ import annotations

from functools import lru_cache

from services.control import protocol
from services.openapi import Operation, document


def _query(name: str, schema: dict, description: str = "") -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


STR = {"type": "string"}
LIMIT = _query("limit", {"type": "integer", "minimum": 1}, "Most rows.")
REVIEW_FILTER = (
    _query("task_type", STR), _query("state", {"enum": ["pending", "approved", "rejected", "edited"]}),
    _query("run_id", STR), _query("label", STR), _query("status", STR, "Candidate status (default kept; all: any)."),
    _query("candidate_ids", STR, "Comma-separated ids."), LIMIT, _query("offset", {"type": "integer", "minimum": 0}),
)
OBJECT = {"type": "object"}

OPERATIONS = [
    Operation("/healthz", "GET", "Health of the control plane and its landing.", public=True),
    Operation("/openapi.json", "GET", "This document."),
    Operation("/api/status", "GET", "Landed tables, landing progress."),
    Operation("/api/models", "GET", "Model versions in the registry."),
    Operation("/api/models", "POST", "Register an adapter folder as a candidate version.",
              body=protocol.ModelRegistration, ok=201, errors=(400, 404, 409)),
    Operation("/api/models/<version>", "GET", "One model version.", errors=(404,)),
    Operation("/api/models/<version>/retire", "POST", "Retire a version (it takes no more traffic).",
              body=protocol.Empty, errors=(400, 404, 409)),
    Operation("/api/routing", "GET", "The routing table: alias -> weighted versions."),
    Operation("/api/routing", "POST", "Route an alias's traffic (percent per version).", body=protocol.RoutingUpdate,
              errors=(400, 404, 409)),
    Operation("/api/metrics", "GET", "Live per-version window figures.", errors=(400,), params=(
        _query("alias", STR), _query("version", STR),
        _query("minutes", {"type": "number", "exclusiveMinimum": 0}, "How far back (default 60)."))),
    Operation("/api/rollouts", "POST", "Start a canary rollout of a candidate.", body=protocol.RolloutStart, ok=201,
              errors=(400, 404, 409)),
    Operation("/api/rollouts/<alias>", "GET", "The rollout on an alias.", errors=(404,)),
    Operation("/api/rollouts/<alias>/<action>", "POST", "Act on a rollout: pause, resume, promote, rollback.",
              body=protocol.RolloutAction, errors=(400, 404, 409)),
    Operation("/api/audit", "GET", "The audit log (admin).", params=(LIMIT, _query("action", STR)), errors=(400,)),
    Operation("/api/curation/runs", "GET", "Curation runs.", params=(LIMIT,), errors=(400,)),
    Operation("/api/curation/runs", "POST", "Start a curation run.", body=protocol.CurationStart, ok=202,
              errors=(400, 409)),
    Operation("/api/curation/runs/<run_id>", "GET", "One curation run, with live progress.", errors=(404,)),
    Operation("/api/review/candidates", "GET", "Candidates for review, with counts per state.", errors=(400,),
              params=(*REVIEW_FILTER, _query("full", {"enum": ["0", "1", "true", "false"]}))),
    Operation("/api/review/ids", "GET", "The ids a review filter picks.", errors=(400,), params=REVIEW_FILTER),
    Operation("/api/review/resolve", "GET", "Full candidate ids from prefixes.", errors=(400, 404),
              params=(_query("ids", STR, "Comma-separated ids or prefixes."),)),
    Operation("/api/review/candidates/<candidate_id>", "GET", "One candidate.", errors=(404,)),
    Operation("/api/review/candidates/<candidate_id>/similar", "GET", "The nearest candidates by prompt vector.",
              errors=(404,), params=(_query("k", {"type": "integer", "minimum": 1, "maximum": 100}, "How many."),)),
    Operation("/api/review/conflicts", "GET", "Candidates whose reviewers disagree, and the agreement figures."),
    Operation("/api/review/candidates/<candidate_id>/similar", "GET",
              "The nearest candidates by prompt vector, most similar first (find similar).", errors=(400, 404),
              params=(_query("k", {"type": "integer", "minimum": 1, "maximum": 100}, "How many (default 8)."),)),
    Operation("/api/review/conflicts", "GET", "Candidates whose reviewers disagree, and the agreement figures."),
    Operation("/api/review/landed/<batch>", "GET", "How many decisions of a batch have landed."),
    Operation("/api/review/decisions", "POST", "Approve, reject, edit or reset candidates.",
              body=protocol.ReviewDecision, ok=202, errors=(400, 404)),
    Operation("/api/datasets", "GET", "Dataset versions."),
    Operation("/api/datasets", "POST", "Build a dataset version from approved candidates.", body=protocol.Empty,
              ok=201, errors=(400, 422)),
    Operation("/api/datasets/<version>", "GET", "One dataset version.", errors=(404,)),
    Operation("/api/evaluations", "GET", "Evaluation results.", params=(_query("candidate", STR),)),
    Operation("/api/evaluations", "POST", "Record the report an evaluation job wrote (admin).",
              body=protocol.EvaluationRecord, ok=201, errors=(400, 422)),
    Operation("/api/refresh", "GET", "Flywheel turns, the running one and the schedule.", params=(LIMIT,),
              errors=(400,)),
    Operation("/api/refresh", "POST", "Start one turn of the flywheel.", body=protocol.Empty, ok=202,
              errors=(400, 409)),
    Operation("/api/refresh/<run_id>", "GET", "One flywheel turn.", errors=(404,)),
]

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": STR, "type": STR, "param": {"type": ["string", "null"]},
                   "code": {"type": ["string", "null"]}}}}}


@lru_cache(maxsize=1)
def openapi() -> dict:
    security = {"bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "An operator token (DATA_DIR/operator_token; `flywheel operators create`)."}}
    return document("Flywheel control plane", "1", "Registry, routing, rollouts, curation, review, datasets, "
                    "evaluations and refresh. Errors use OpenAI's format.", OPERATIONS, models=[], error=ERROR,
                    security=security)


def is_page(rule) -> bool:
    """The console's HTML pages (not part of the JSON API)."""
    return rule.rule == "/" or rule.rule.startswith("/console")
