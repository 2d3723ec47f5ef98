"""Fuzzing the running services from their own OpenAPI documents (schemathesis, issue #13).

The gateway (real broker, scripted backend, landing into DuckDB) and the control plane's API
(admin token) each get every operation of their /openapi.json with examples that fit the
schema and examples that do not (fixed seed: hypothesis' ``derandomize``; a bounded number
per operation and a time budget per app). Every answer must be below 500, every error in
OpenAI's format (``{"error": {"message", "type", "param", "code"}}``), every status and
body one the document declares; and what lands in DuckDB is exactly what was accepted:
the interactions of the 2xx chat answers and the accepted ingest items, the feedback of
the 2xx feedback answers, nothing from a refused request, no dead letter.
"""

from __future__ import annotations

import copy
import json
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

pytest.importorskip("schemathesis")

import schemathesis  # noqa: E402
from hypothesis import HealthCheck, Phase, given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import count, operator_token, query, wait_for  # noqa: E402

EXAMPLES = {"gateway": 120, "control": 35}  # per operation and generation mode (the control plane has 35 operations)
BUDGET_S = 90.0  # per app: operations not reached in time are reported, not fuzzed
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class FuzzRun:
    requests: int = 0
    by_status: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # one per operation, status and kind of finding
    findings: int = 0
    skipped: list[str] = field(default_factory=list)  # operations the budget did not reach
    responses: list[tuple] = field(default_factory=list)  # (method, path, case, status, body bytes)

    def fail(self, case, status: int, why: str) -> None:
        self.findings += 1
        key = f"{case.operation.label} -> {status}: {why[:40]}"
        if not any(f.startswith(key) for f in self.failures):
            self.failures.append(f"{case.operation.label} -> {status}: {why}\n    {case.as_curl_command()[:600]}")


def _error_format(body: bytes) -> str | None:
    """Why ``body`` is not an OpenAI error, or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return f"no 'error' object: {body[:200]!r}"
    missing = [k for k in ("message", "type", "param", "code") if k not in err]
    if missing or not isinstance(err["message"], str) or not isinstance(err["type"], str):
        return f"not OpenAI's error format (missing {missing}): {body[:200]!r}"
    return None


def fuzz(schema, base_url: str, headers: dict, *, examples: int, budget_s: float = BUDGET_S,
         exempt_errors: tuple[str, ...] = (), steer=None, negative_from=None) -> FuzzRun:
    """Every operation of ``schema``, positive then negative examples, against ``base_url``.
    ``steer(case)`` may change a positive case (e.g. name a model that exists), as a client
    that read the model list would. ``negative_from`` (another schema) gives the negative
    examples of the operations it has."""
    run = FuzzRun()
    deadline = time.monotonic() + budget_s
    operations = [r.ok() for r in schema.get_all_operations()]
    lean = {o.label: o for o in (r.ok() for r in negative_from.get_all_operations())} if negative_from else {}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            source = lean.get(op.label, op) if mode is GenerationMode.NEGATIVE else op
            if time.monotonic() > deadline:
                run.skipped.append(f"{op.label} ({mode.value})")
                continue
            print(f"fuzzing {op.label} ({mode.value})", flush=True)

            @hsettings(max_examples=examples, derandomize=True, deadline=None, database=None,
                       phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=source.as_strategy(generation_mode=mode).map(
                steer if steer is not None and mode is GenerationMode.POSITIVE else (lambda c: c)))
            def one(case):
                if time.monotonic() > deadline:
                    return
                try:
                    resp = case.call(base_url=base_url, headers=headers, timeout=30)
                except Exception as e:  # noqa: BLE001 - a dropped connection is a finding too
                    run.fail(case, 0, f"no answer: {type(e).__name__}: {e}")
                    return
                run.requests += 1
                run.by_status[resp.status_code] += 1
                run.responses.append((op.method.upper(), op.path, case, resp.status_code, resp.content))
                if resp.status_code >= 500:
                    run.fail(case, resp.status_code, f"server error: {resp.content[:300]!r}")
                if resp.status_code >= 400 and op.path not in exempt_errors:
                    why = _error_format(resp.content)
                    if why:
                        run.fail(case, resp.status_code, why)
                try:
                    case.validate_response(resp, checks=CHECKS, headers=headers)
                except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - collected: one report lists them all
                    if mode is GenerationMode.POSITIVE or resp.status_code < 400:
                        run.fail(case, resp.status_code, f"does not match the document: {str(e)[:400]}")

            try:
                one()
            except Unsatisfiable:  # nothing to negate (no parameters, no body)
                pass
    return run


def _report(app: str, run: FuzzRun, seconds: float, extra: str = "") -> None:
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(run.by_status.items()))
    print(f"\nfuzz {app}: {run.requests} requests in {seconds:.0f}s ({statuses}); "
          f"{run.findings} findings ({len(run.failures)} distinct); {len(run.skipped)} operation-modes not reached{extra}")


def _ids_of_stream(body: bytes) -> str | None:
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("data: {"):
            return json.loads(line[6:]).get("id")
    return None


# -- the gateway --------------------------------------------------------------------------

def test_fuzz_the_gateway(settings, control_plane, start_gateway):
    from serving.backends.scripted import ScriptedBackend

    gw = start_gateway(settings, ScriptedBackend())
    doc = httpx.get(f"{gw.url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    # Negating the event schemas of /v1/events exhausts schemathesis' memory (4.32: a case of
    # gigabytes): its negative examples come from a copy where an item is any object.
    lean = copy.deepcopy(doc)
    lean["components"]["schemas"]["EventsRequest"]["properties"]["events"]["items"] = {"type": "object"}
    lean["paths"] = {"/v1/events": lean["paths"]["/v1/events"]}
    t0 = time.monotonic()
    alias = settings.model.alias

    def steer(case):
        # Most chat requests name the served alias (a random name only gets 404) and have a plain
        # history (the schema cannot say which fields each role takes: random ones mostly get 400);
        # a few keep what was generated.
        if case.operation.path == "/v1/chat/completions" and isinstance(case.body, dict) and zlib.crc32(
                json.dumps(case.body, sort_keys=True, default=str).encode()) % 8:
            case.body["model"] = alias
            case.body["messages"] = [
                {"role": m.get("role") if m.get("role") in ("system", "developer", "user") else "user",
                 "content": m["content"] if isinstance(m.get("content"), (str, list)) and m["content"] else "hello"}
                for m in case.body.get("messages") or [{}] if isinstance(m, dict)] or [{"role": "user", "content": "hi"}]
        return case

    run = fuzz(schema, gw.url, {"Authorization": f"Bearer {gw.tokens['admin']}"}, examples=EXAMPLES["gateway"],
               exempt_errors=("/healthz",), steer=steer, negative_from=schemathesis.openapi.from_dict(lean))
    seconds = time.monotonic() - t0

    # What was accepted: chat answers (by request id), feedback (by event id), ingest items.
    chats, feedback, ingested = set(), set(), {"interaction": set(), "feedback": set()}
    for method, path, case, status, body in run.responses:
        if not 200 <= status < 300:
            continue
        if path == "/v1/chat/completions":
            chats.add(_ids_of_stream(body) if body.startswith(b"data:") else json.loads(body)["id"])
        elif path == "/v1/feedback":
            feedback.add(json.loads(body)["id"])
        elif path == "/v1/events":
            for item in json.loads(body)["data"]:
                if item["status"] == "accepted":
                    ingested[case.body["events"][item["index"]]["type"]].add(item["event_id"])
    want_i, want_f = len(chats) + len(ingested["interaction"]), len(feedback) + len(ingested["feedback"])
    assert gw.gw.producer.flush(60), "the gateway's spool did not drain"
    wait_for(lambda: count(control_plane, "interactions") >= want_i and count(control_plane, "feedback") >= want_f,
             timeout=60, what="the accepted events to land")
    time.sleep(1.0)  # and nothing more after them
    landed_i = query(control_plane, "SELECT event_id, request_id FROM interactions")
    landed_f = {e for (e,) in query(control_plane, "SELECT event_id FROM feedback")}
    dead = query(control_plane, "SELECT source_topic, reason FROM dead_letters")
    _report("gateway", run, seconds, f"; accepted: {len(chats)} chat, {len(feedback)} feedback, "
            f"{len(ingested['interaction'])}+{len(ingested['feedback'])} ingested; landed: {len(landed_i)} "
            f"interactions, {len(landed_f)} feedback, {len(dead)} dead letters")

    assert not run.failures, "\n".join(run.failures)
    assert not dead, f"accepted events the landing refused: {dead[:5]}"
    # Exactly what was accepted landed: nothing from a refused request, nothing twice.
    missing = chats - {r for (_, r) in landed_i}
    extra = [(e, r) for (e, r) in landed_i if r not in chats and e not in ingested["interaction"]]
    assert not missing and not extra, (f"chat answers whose interaction did not land: {sorted(missing)}; "
                                       f"interactions nobody was answered 2xx for: {extra}")
    assert len(landed_i) == len(chats) + len(ingested["interaction"])  # nothing twice
    assert landed_f == feedback | ingested["feedback"]
    assert run.requests >= 100


# -- the control plane ----------------------------------------------------------------------

def test_fuzz_the_control_plane_api(settings):
    from services.control.plane import ControlPlane

    plane = ControlPlane(settings).start(scheduler=False)
    try:
        base = settings.control_url
        auth = {"Authorization": f"Bearer {operator_token(settings)}"}
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json", headers=auth)
        t0 = time.monotonic()
        run = fuzz(schema, base, auth, examples=EXAMPLES["control"])
        seconds = time.monotonic() - t0
        _report("control plane", run, seconds)
        assert not run.failures, "\n".join(run.failures)
        assert run.requests >= 200
    finally:
        plane.stop(drain=False)
