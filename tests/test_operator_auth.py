"""Operator authentication through a running control plane (real HTTP, real broker, a temp
DuckDB): the local bootstrap token, console login with a session cookie and CSRF, the
trusted-hosts check, tokens created and revoked with the CLI while the plane runs, the
evaluation gate on rollouts with its audited admin override, evaluations that only come
from a job's report, and the audit log (issue #13; tests/test_auth_matrix.py has every
route × every role)."""

from __future__ import annotations

import json
import re
import stat

import httpx
import pytest
from click.testing import CliRunner

from serving.registry import Registry
from services.control.operators import create_operator
from services.control.plane import ControlPlane
from tests.conftest import operator_token, query, record_gate, seed_candidates, wait_for


@pytest.fixture
def plane(settings):
    p = ControlPlane(settings, serve_api=True).start(scheduler=False)
    yield p
    p.stop(drain=False)


def _url(settings) -> str:
    return f"http://127.0.0.1:{settings.control.port}"


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _register(plane, version: str, tmp_path) -> None:
    with plane.reader() as cur:  # the adapter check is skipped: these tests are about who may roll out
        reg = Registry(cur, models_dir=plane.settings.data_path / "models", base_model="SmolLM2-135M-Instruct",
                       alias=plane.settings.model.alias, base_model_dir=lambda: tmp_path,
                       check=lambda base, adapter: None)
        src = tmp_path / f"adapter-{version}"
        src.mkdir()
        (src / "adapter_config.json").write_text("{}")
        reg.register(version, src)


def test_first_start_makes_a_private_admin_token_once(settings):
    s = settings
    plane = ControlPlane(s, serve_api=True).start(scheduler=False)
    try:
        token = operator_token(s)
        for path in (s.operator_token_path, s.operators_path, s.data_path / "console_secret_key"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert token.startswith("fwop-") and token not in s.operators_path.read_text()  # stored hashed
        with httpx.Client(base_url=_url(s)) as c:
            assert c.get("/api/status").status_code == 401
            assert c.get("/healthz").status_code == 200  # health stays open
            assert c.get("/api/status", headers=_bearer(token)).status_code == 200
    finally:
        plane.stop(drain=False)
    again = ControlPlane(s, serve_api=False).start(scheduler=False)  # a second start keeps the token
    try:
        assert operator_token(s) == token
    finally:
        again.stop(drain=False)


def test_console_login_session_and_csrf(settings, plane):
    s = settings
    ids = seed_candidates(plane, [{"label": "good"}])
    _, token = create_operator(s, "reviewer", "rita")
    with httpx.Client(base_url=_url(s)) as c:
        first = c.get("/console/review?state=all")  # not logged in: to the login page, coming back after
        assert first.status_code == 302 and first.headers["location"] == "/console/login?next=/console/review?state=all"
        login = c.get(first.headers["location"])
        assert login.status_code == 200 and 'name="token"' in login.text
        csrf = _csrf(login.text)

        assert c.post("/console/login", data={"token": token, "next": "/console/"}).status_code == 403  # no CSRF
        bad = c.post("/console/login", data={"token": "fwop-wrong", "csrf_token": csrf, "next": "/console/"})
        assert bad.status_code == 401 and "that token is not valid" in bad.text
        ok = c.post("/console/login", data={"token": token, "csrf_token": csrf, "next": "/console/review?state=all"})
        assert ok.status_code == 302 and ok.headers["location"] == "/console/review?state=all"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token not in cookie
        page = c.get("/console/review?state=all")
        assert page.status_code == 200 and ids[0] in page.text and "rita · reviewer" in page.text
        session_csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)
        assert session_csrf != csrf  # a new one for the session

        decision = {"action": "approve", "candidate_ids": ids, "reason": "fine"}
        refused = c.post("/api/review/decisions", json=decision)  # the session's cookie, but no CSRF token
        assert refused.status_code == 403 and "CSRF" in refused.json()["error"]["message"]
        assert c.post("/api/review/decisions", json=decision, headers={"X-CSRF-Token": "guess"}).status_code == 403
        sent = c.post("/api/review/decisions", json=decision, headers={"X-CSRF-Token": session_csrf})
        assert sent.status_code == 202, sent.text
        routing = c.post("/api/routing", json={"alias": "a", "weights": {"base": 100}},
                         headers={"X-CSRF-Token": session_csrf})
        assert routing.status_code == 403 and "needs the admin role" in routing.json()["error"]["message"]
        wait_for(lambda: query(plane, "SELECT reviewer FROM review_decisions") == [("rita",)], timeout=30,
                 what="the decision to land, its reviewer the operator's name")
        audit = query(plane, "SELECT operator_name, role, via, action, status FROM audit_log ORDER BY created_at")
        assert ("rita", "reviewer", "login", "console.login_post", 302) in audit
        assert ("rita", "reviewer", "session", "review_decide", 202) in audit
        assert ("rita", "reviewer", "session", "set_routing", 403) in audit  # refusals are kept too
        assert ("rita", "reviewer", "session", "review_decide", 403) in audit
        assert not any(token in str(row) for row in query(plane, "SELECT detail FROM audit_log"))

        assert c.post("/console/logout").status_code == 403  # logging out is a state change too
        out = c.post("/console/logout", data={"csrf_token": session_csrf})
        assert out.status_code == 302 and out.headers["location"] == "/console/login"
        assert c.get("/console/").status_code == 302


def test_a_cross_site_form_cannot_act_even_with_a_session(settings, plane):
    """What a page on another site could send: the browser would not even attach the
    SameSite=Strict cookie, and without the session's CSRF token the request is refused."""
    s = settings
    with httpx.Client(base_url=_url(s)) as c:
        csrf = _csrf(c.get("/console/login").text)
        c.post("/console/login", data={"token": operator_token(s), "csrf_token": csrf})
        assert c.get("/console/").status_code == 200
        for path in ("/api/refresh", "/api/curation/runs", "/api/rollouts/flywheel-chat/promote"):
            resp = c.post(path, data={"x": "1"}, headers={"Origin": "http://evil.example"})
            assert resp.status_code == 403 and "CSRF" in resp.text, path
    assert query(plane, "SELECT count(*) FROM refresh_runs")[0][0] == 0


def test_wrong_host_header_is_refused(settings, plane):
    s = settings
    token = operator_token(s)
    with httpx.Client(base_url=_url(s)) as c:
        assert c.get("/api/status", headers={**_bearer(token), "Host": "rebound.evil.example"}).status_code == 400
        assert c.get("/console/login", headers={"Host": "rebound.evil.example:8100"}).status_code == 400
        assert c.post("/api/refresh", headers={**_bearer(token), "Host": "evil.example"}).status_code == 400
        assert c.get("/api/status", headers={**_bearer(token), "Host": f"localhost:{s.control.port}"}).status_code == 200
    assert query(plane, "SELECT count(*) FROM refresh_runs")[0][0] == 0


def test_tokens_made_and_revoked_with_the_cli_count_at_once(settings, plane):
    from flywheel.cli import main

    s = settings
    env = {"FLYWHEEL_DATA_DIR": s.data_dir, "FLYWHEEL_CONTROL__PORT": str(s.control.port)}
    runner = CliRunner()
    made = runner.invoke(main, ["operators", "create", "--role", "viewer", "--name", "vic"], env=env)
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[0]
    listed = runner.invoke(main, ["operators", "list"], env=env)
    op_id = next(line.split("\t")[0] for line in listed.output.splitlines() if line.endswith("\tvic"))
    assert "viewer" in listed.output and token not in listed.output
    with httpx.Client(base_url=_url(s)) as c:
        assert c.get("/api/models", headers=_bearer(token)).status_code == 200
        assert c.post("/api/refresh", headers=_bearer(token)).status_code == 403
        assert runner.invoke(main, ["operators", "revoke", op_id], env=env).exit_code == 0
        assert c.get("/api/models", headers=_bearer(token)).status_code == 401  # no restart needed

    # The CLI sends the local token; `flywheel status` reads through the API with it.
    status = runner.invoke(main, ["status", "--json"], env=env)
    assert status.exit_code == 0 and json.loads(status.output)["source"] == "control-plane", status.output
    # Revoking the local admin token removes its file; the CLI then says what to do.
    local_id = next(line.split("\t")[0] for line in runner.invoke(main, ["operators", "list"], env=env).output
                    .splitlines() if line.endswith("\tlocal-admin"))
    assert runner.invoke(main, ["operators", "revoke", local_id], env=env).exit_code == 0
    assert not s.operator_token_path.exists()
    refused = runner.invoke(main, ["refresh", "--list"], env=env)
    assert refused.exit_code != 0 and "FLYWHEEL_CONTROL__TOKEN" in refused.output


def test_rollout_needs_a_passed_gate_or_an_audited_admin_override(settings, plane, tmp_path):
    s = settings
    admin, reviewer = operator_token(s), create_operator(s, "reviewer", "rita")[1]
    _register(plane, "cand-1", tmp_path)
    start = {"candidate": "cand-1"}
    with httpx.Client(base_url=_url(s)) as c:
        none = c.post("/api/rollouts", json=start, headers=_bearer(admin))
        assert none.status_code == 409 and "has no evaluation" in none.json()["error"]["message"]
        eval_id = record_gate(plane, "cand-1", passed=False, reasons=("reasoning/math worse",))
        failed = c.post("/api/rollouts", json=start, headers=_bearer(admin))
        assert failed.status_code == 409 and "failed the gate: reasoning/math worse" in failed.json()["error"]["message"]
        assert query(plane, "SELECT status FROM model_versions WHERE version = 'cand-1'") == [("candidate",)]

        override = {**start, "override_gate": True}
        assert c.post("/api/rollouts", json=override, headers=_bearer(admin)).status_code == 400  # no reason
        assert c.post("/api/rollouts", json={**override, "reason": "x"}, headers=_bearer(reviewer)).status_code == 403
        done = c.post("/api/rollouts", json={**override, "reason": "math set is stale; checked by hand"},
                      headers=_bearer(admin))
        assert done.status_code == 201, done.text
        assert "Evaluation gate overridden by local-admin: math set is stale" in done.json()["last_decision"]["reason"]
        rows = query(plane, "SELECT operator_name, role, via, target, detail FROM audit_log "
                            "WHERE action = 'rollout.gate_override'")
        assert len(rows) == 1 and rows[0][:4] == ("local-admin", "admin", "override", "cand-1")
        detail = json.loads(rows[0][4])
        assert detail["evaluation"]["eval_id"] == eval_id and detail["reason"].startswith("math set is stale")
        listed = c.get("/api/audit?action=rollout.gate_override", headers=_bearer(admin)).json()["data"]
        assert listed[0]["operator_name"] == "local-admin" and listed[0]["created_at"]

        # A candidate whose latest evaluation passed starts without any override.
        assert c.post("/api/rollouts/flywheel-chat/rollback", json={}, headers=_bearer(admin)).status_code == 200
        _register(plane, "cand-2", tmp_path)
        record_gate(plane, "cand-2", passed=False)
        record_gate(plane, "cand-2", passed=True)
        ok = c.post("/api/rollouts", json={"candidate": "cand-2"}, headers=_bearer(admin))
        assert ok.status_code == 201 and "overridden" not in ok.json()["last_decision"]["reason"]
    assert query(plane, "SELECT count(*) FROM audit_log WHERE action = 'rollout.gate_override'")[0][0] == 1


def test_evaluations_come_from_a_jobs_report_not_from_the_request(settings, plane):
    """POST /api/evaluations: admin only, and the result is read from the report folder an
    evaluation job wrote under DATA_DIR/evals; a body saying `passed: true` changes nothing."""
    s = settings
    admin, reviewer = operator_token(s), create_operator(s, "reviewer", "rita")[1]
    folder = s.data_path / "evals" / "cand-9-vs-base-20260101T000000"
    folder.mkdir(parents=True)
    report = {"candidate": "cand-9", "production": "base", "dataset": "ds-1", "overall": {},
              "created_at": "2026-01-01T00:00:00+00:00", "gate": {"passed": False, "reasons": ["worse"]}}
    (folder / "report.json").write_text(json.dumps(report))
    forged = {**report, "gate": {"passed": True, "reasons": []}}
    outside = s.data_path / "forged"
    outside.mkdir()
    (outside / "report.json").write_text(json.dumps(forged))
    with httpx.Client(base_url=_url(s)) as c:
        body = {"folder": str(folder), "report": forged}
        assert c.post("/api/evaluations", json=body).status_code == 401
        assert c.post("/api/evaluations", json=body, headers=_bearer(reviewer)).status_code == 403
        for where in (outside, s.data_path / "evals" / ".." / "forged", s.data_path / "evals"):
            assert c.post("/api/evaluations", json={"folder": str(where)}, headers=_bearer(admin)).status_code == 422
        assert c.post("/api/evaluations", json=body, headers=_bearer(admin)).status_code == 201
    assert query(plane, "SELECT candidate, passed, source, recorded_by FROM evaluations") == [
        ("cand-9", False, "api", f"local-admin ({_local_id(s)})")]


def _local_id(s) -> str:
    from services.control.operators import list_operators

    return next(o.id for o in list_operators(s) if o.name == "local-admin")
