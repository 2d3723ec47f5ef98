"""Every route of the control plane × {no token, viewer, reviewer, admin, wrong token}: the
status each gets (issue #13).

The routes come from the app's own ``url_map``, so a route added without an entry here
fails the test: decide who may call it, add it to ROUTES. A sample request reaches the view
for the roles allowed (the answer is then the view's own: 200, 404 for a missing thing,
400/422 for a bad body, 409 for a busy runner) and is refused before it for the others.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest

from tests.conftest import make_settings

PUBLIC = "public"
IDENTITIES = ("none", "viewer", "reviewer", "admin", "wrong")
RANK = {"viewer": 0, "reviewer": 1, "admin": 2}


@dataclass(frozen=True)
class Sample:
    path: str
    role: str  # public | viewer | reviewer | admin: the least that gets past authentication
    ok: int  # the view's answer to this request, for those allowed
    json: dict | None = None
    form: dict | None = None


#: (rule, method) -> sample requests. Body-dependent rules have one sample per case.
ROUTES: dict[tuple[str, str], list[Sample]] = {
    ("/", "GET"): [Sample("/", PUBLIC, 302)],
    ("/healthz", "GET"): [Sample("/healthz", PUBLIC, 200)],
    ("/openapi.json", "GET"): [Sample("/openapi.json", "viewer", 200)],
    ("/static/<path:filename>", "GET"): [Sample("/static/nothing.css", PUBLIC, 404)],
    ("/console/static/<path:filename>", "GET"): [Sample("/console/static/console.css", PUBLIC, 200)],
    ("/console/login", "GET"): [Sample("/console/login", PUBLIC, 200)],
    # Without the login page's CSRF token in the form, whoever asks.
    ("/console/login", "POST"): [Sample("/console/login", PUBLIC, 403, form={"token": "not-a-token"})],
    ("/console/logout", "POST"): [Sample("/console/logout", "viewer", 302)],
    ("/console/", "GET"): [Sample("/console/", "viewer", 200)],
    ("/console/review", "GET"): [Sample("/console/review", "viewer", 200)],
    ("/console/review/<candidate_id>", "GET"): [Sample("/console/review/nope", "viewer", 404)],
    ("/console/datasets", "GET"): [Sample("/console/datasets", "viewer", 200)],
    ("/console/datasets/<version>", "GET"): [Sample("/console/datasets/nope", "viewer", 404)],
    ("/console/evaluations", "GET"): [Sample("/console/evaluations", "viewer", 200)],
    ("/console/evaluations/<eval_id>/report", "GET"): [Sample("/console/evaluations/nope/report", "viewer", 404)],
    ("/console/metrics", "GET"): [Sample("/console/metrics", "viewer", 200)],
    ("/console/diagnostics", "GET"): [Sample("/console/diagnostics", "viewer", 200)],
    ("/console/dead-letters", "GET"): [Sample("/console/dead-letters", "viewer", 200)],
    ("/console/review/desk", "GET"): [Sample("/console/review/desk", "viewer", 200)],
    ("/console/review/conflicts", "GET"): [Sample("/console/review/conflicts", "viewer", 200)],
    ("/console/review/<candidate_id>/card", "GET"): [Sample("/console/review/nope/card", "viewer", 404)],
    ("/console/conversations", "GET"): [Sample("/console/conversations", "viewer", 200)],
    ("/console/conversations/<session_id>", "GET"): [Sample("/console/conversations/nope", "viewer", 404)],
    ("/api/status", "GET"): [Sample("/api/status", "viewer", 200)],
    ("/api/audit", "GET"): [Sample("/api/audit", "admin", 200)],
    ("/api/models", "GET"): [Sample("/api/models", "viewer", 200)],
    ("/api/models", "POST"): [Sample("/api/models", "admin", 400, json={})],
    ("/api/models/<version>", "GET"): [Sample("/api/models/base", "viewer", 200)],
    ("/api/models/<version>/retire", "POST"): [Sample("/api/models/nope/retire", "admin", 404, json={})],
    ("/api/routing", "GET"): [Sample("/api/routing", "viewer", 200)],
    ("/api/routing", "POST"): [Sample("/api/routing", "admin", 400, json={})],
    ("/api/metrics", "GET"): [Sample("/api/metrics", "viewer", 200)],
    ("/api/rollouts", "POST"): [Sample("/api/rollouts", "admin", 400, json={})],
    ("/api/rollouts/<alias>", "GET"): [Sample("/api/rollouts/flywheel-chat", "viewer", 404)],
    ("/api/rollouts/<alias>/<action>", "POST"): [Sample("/api/rollouts/flywheel-chat/pause", "admin", 404, json={})],
    ("/api/curation/runs", "GET"): [Sample("/api/curation/runs", "viewer", 200)],
    ("/api/curation/runs", "POST"): [Sample("/api/curation/runs", "admin", 409, json={})],  # the runner is busy
    ("/api/curation/runs/<run_id>", "GET"): [Sample("/api/curation/runs/nope", "viewer", 404)],
    ("/api/review/candidates", "GET"): [Sample("/api/review/candidates", "viewer", 200)],
    ("/api/review/candidates/<candidate_id>", "GET"): [Sample("/api/review/candidates/nope", "viewer", 404)],
    ("/api/review/ids", "GET"): [Sample("/api/review/ids", "viewer", 200)],
    ("/api/review/resolve", "GET"): [Sample("/api/review/resolve?ids=abc", "viewer", 404)],
    ("/api/review/landed/<batch>", "GET"): [Sample("/api/review/landed/nope", "viewer", 200)],
    ("/api/review/candidates/<candidate_id>/similar", "GET"): [
        Sample("/api/review/candidates/nope/similar", "viewer", 404)],
    ("/api/review/conflicts", "GET"): [Sample("/api/review/conflicts", "viewer", 200)],
    ("/api/review/decisions", "POST"): [
        # Named candidates: a reviewer's decision. By filter (approve-all and the like): an admin's.
        Sample("/api/review/decisions", "reviewer", 404, json={"action": "approve", "candidate_ids": ["nope"]}),
        Sample("/api/review/decisions", "admin", 202, json={"action": "approve", "filter": {"task_type": "no/such"}}),
    ],
    ("/api/datasets", "GET"): [Sample("/api/datasets", "viewer", 200)],
    ("/api/datasets", "POST"): [Sample("/api/datasets", "admin", 422, json={})],  # nothing approved to build from
    ("/api/datasets/<version>", "GET"): [Sample("/api/datasets/nope", "viewer", 404)],
    ("/api/evaluations", "GET"): [Sample("/api/evaluations", "viewer", 200)],
    ("/api/evaluations", "POST"): [Sample("/api/evaluations", "admin", 422, json={"folder": "/tmp"})],
    ("/api/refresh", "GET"): [Sample("/api/refresh", "viewer", 200)],
    ("/api/refresh", "POST"): [Sample("/api/refresh", "admin", 409, json={})],  # the runner is busy
    ("/api/refresh/<run_id>", "GET"): [Sample("/api/refresh/nope", "viewer", 404)],
}


def expected(sample: Sample, method: str, identity: str) -> int:
    if sample.role == PUBLIC:
        return sample.ok
    if identity == "wrong":
        return 401
    if identity == "none":  # a browser asking for a page is sent to the login page
        return 302 if method == "GET" and sample.path.startswith("/console") else 401
    return sample.ok if RANK[identity] >= RANK[sample.role] else 403


@pytest.fixture(scope="module")
def matrix(broker, tmp_path_factory):
    from services.control.api import create_api
    from services.control.operators import create_operator
    from services.control.plane import ControlPlane
    from streams.topics import ensure_topics, topic_names

    s = make_settings(tmp_path_factory.mktemp("matrix"), broker.bootstrap)
    ensure_topics(s.bootstrap, list(topic_names(s).values()), s.kafka.partitions)
    plane = ControlPlane(s, serve_api=False).start(scheduler=False)
    app = create_api(s, plane)
    tokens = {role: create_operator(s, role, f"matrix-{role}")[1] for role in RANK}
    tokens["wrong"] = "fwop-" + "x" * 43
    # Runs that would start real work answer "busy" instead: the matrix is about who gets in.
    release = threading.Event()
    busy = threading.Thread(target=release.wait, daemon=True)
    busy.start()
    app.extensions["curation"]._thread = busy
    plane.refresh._thread = busy
    yield app, tokens, plane
    release.set()
    plane.stop(drain=False)


def _rules(app) -> list[tuple[str, str]]:
    return sorted((rule.rule, method) for rule in app.url_map.iter_rules()
                  for method in rule.methods - {"HEAD", "OPTIONS"})


@pytest.mark.parametrize("identity", IDENTITIES)
def test_every_route_answers_each_identity_as_expected(matrix, identity):
    app, tokens, _ = matrix
    client = app.test_client()  # a fresh client: no session, so only the bearer token counts
    headers = {"Authorization": f"Bearer {tokens[identity]}"} if identity != "none" else {}
    unlisted, wrong = [], []
    for rule, method in _rules(app):
        samples = ROUTES.get((rule, method))
        if not samples:
            unlisted.append(f"{method} {rule}")
            continue
        for sample in samples:
            resp = client.open(sample.path, method=method, headers=headers, json=sample.json, data=sample.form)
            want = expected(sample, method, identity)
            if resp.status_code != want:
                wrong.append(f"{method} {sample.path} as {identity}: {resp.status_code}, expected {want} "
                             f"({resp.get_data(as_text=True)[:200]!r})")
            if want in (401, 403) and sample.path.startswith("/api/"):
                assert resp.get_json()["error"]["type"] in ("authentication_error", "permission_error")
    assert not unlisted, f"routes with no expected entry in ROUTES (decide who may call them): {unlisted}"
    assert not wrong, "\n".join(wrong)


def test_the_matrix_names_only_routes_that_exist(matrix):
    app, _, _ = matrix
    stale = sorted(set(ROUTES) - set(_rules(app)))
    assert not stale, f"ROUTES entries for routes the app does not have: {stale}"
