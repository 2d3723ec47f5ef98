"""The OpenAPI documents (/openapi.json) of the gateway and of the control plane's API: every
route of each app's ``url_map`` has an entry (a new route without one fails here), request
bodies come from the pydantic models the views validate with, and the documents load as
OpenAPI 3.1 (what tests/test_fuzz.py fuzzes from). Control-plane errors are OpenAI-shaped."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from services.control.openapi import is_page
from services.openapi import uncovered


@pytest.fixture(scope="module")
def control_app(broker, tmp_path_factory):
    from services.control.api import create_api
    from services.control.plane import ControlPlane
    from streams.topics import ensure_topics, topic_names
    from tests.conftest import make_settings, operator_token

    s = make_settings(tmp_path_factory.mktemp("openapi"), broker.bootstrap)
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    plane = ControlPlane(s, serve_api=False).start(scheduler=False)
    yield create_api(s, plane), {"Authorization": f"Bearer {operator_token(s)}"}
    plane.stop(drain=False)


def _schemas_are_valid(doc: dict) -> None:
    for name, schema in doc["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)  # raises with the offending keyword


def _loads_in_schemathesis(doc: dict) -> int:
    schemathesis = pytest.importorskip("schemathesis")
    return len([r.ok() for r in schemathesis.openapi.from_dict(doc).get_all_operations()])  # ok() raises if invalid


def test_the_gateway_document_covers_every_route(scripted_gateway):
    from services.gateway.openapi import openapi
    from services.gateway.protocol import ChatCompletionRequest, FeedbackRequest

    app = scripted_gateway.app
    doc = app.test_client().get("/openapi.json").get_json()
    assert doc == json.loads(json.dumps(openapi(True)))
    assert doc["openapi"].startswith("3.1")
    assert not uncovered(app, doc), "routes without an entry in services/gateway/openapi.py OPERATIONS"
    # Request bodies are the protocol's own models, in their validation form.
    schemas = doc["components"]["schemas"]
    assert schemas["FeedbackRequest"]["properties"] == json.loads(json.dumps(
        FeedbackRequest.model_json_schema(ref_template="#/components/schemas/{model}")["properties"]))
    assert set(schemas["ChatCompletionRequest"]["required"]) == {"messages", "model"}
    assert ChatCompletionRequest.model_json_schema()["properties"].keys() == schemas["ChatCompletionRequest"]["properties"].keys()
    assert doc["paths"]["/v1/chat/completions"]["post"]["security"] == [{"bearerAuth": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    _schemas_are_valid(doc)
    assert _loads_in_schemathesis(doc) == sum(len(item) for item in doc["paths"].values())


def test_a_route_without_an_entry_is_reported(scripted_gateway):
    from services.gateway.openapi import openapi

    app = scripted_gateway.app
    app.add_url_rule("/v1/not-documented/<thing>", "undocumented", lambda thing: "", methods=["PUT"])
    assert uncovered(app, openapi(True)) == ["PUT /v1/not-documented/<thing>"]


def test_the_control_plane_document_covers_every_api_route(control_app):
    app, auth = control_app
    client = app.test_client()
    assert client.get("/openapi.json").status_code == 401  # an operator's document, like the rest of the API
    doc = client.get("/openapi.json", headers=auth).get_json()
    assert not uncovered(app, doc, skip=is_page), "routes without an entry in services/control/openapi.py OPERATIONS"
    assert all(p == "/healthz" or p == "/openapi.json" or p.startswith("/api/") for p in doc["paths"])
    _schemas_are_valid(doc)
    assert _loads_in_schemathesis(doc) == sum(len(item) for item in doc["paths"].values())


@pytest.mark.parametrize("method,path,body,status,code,param", [
    ("GET", "/api/nothing-here", None, 404, "not_found", None),
    ("DELETE", "/api/models", None, 405, "method_not_allowed", None),
    ("POST", "/api/routing", "not json", 400, "invalid_value", None),
    ("POST", "/api/routing", {"alias": "a", "weights": {"base": float("nan")}}, 400, "invalid_value", "weights.base"),
    ("POST", "/api/routing", {"alias": "a", "weights": {"base": "all"}}, 400, "invalid_value", "weights.base"),
    ("POST", "/api/models", {"version": "v1", "adapter_path": ["/tmp"]}, 400, "invalid_value", "adapter_path"),
    ("POST", "/api/review/decisions", {"action": "approve", "filter": "everything"}, 400, "invalid_value", "filter"),
    ("GET", "/api/refresh?limit=-3", None, 400, "invalid_value", "limit"),
    ("GET", "/api/metrics?minutes=1e308", None, 200, None, None),
    ("GET", "/api/models/nope", None, 404, "not_found", None),
    # Found by tests/test_fuzz.py: 500s before.
    ("GET", "/api/review/candidates?offset=1175679786492449339211776", None, 400, "invalid_request", None),
    ("POST", "/api/evaluations", {"folder": "~no-such-user-x/evals"}, 422, "unprocessable", None),
    ("POST", "/api/models", {"version": "v1", "adapter_path": "~no-such-user-x"}, 400, "invalid_request", None),
    ("POST", "/api/rollouts", {"candidate": {"NaN": []}}, 400, "invalid_value", "candidate"),
    ("POST", "/api/curation/runs", "7", 400, "invalid_value", None),
    ("POST", "/api/evaluations", {"folder": "\u0000evals"}, 400, "invalid_value", "folder"),
    ("POST", "/api/evaluations", {"folder": "evals\udae2"}, 400, "invalid_value", "folder"),
    ("POST", "/api/models", {"version": "v1", "adapter_path": "/tmp/\u0000x"}, 400, "invalid_value", "adapter_path"),
])
def test_control_plane_errors_are_openai_shaped(control_app, method, path, body, status, code, param):
    app, auth = control_app
    kwargs = {"data": body} if isinstance(body, str) else {"data": json.dumps(body, allow_nan=True)} if body else {}
    resp = app.test_client().open(path, method=method, headers={**auth, "Content-Type": "application/json"}, **kwargs)
    assert resp.status_code == status, resp.get_data(as_text=True)
    if status >= 400:
        err = resp.get_json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["param"] == param
