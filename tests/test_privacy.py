"""What is stored about people (streams/privacy.py): a rule for every stored field, each
free-text field redacted, ids with PII hashed consistently, users pseudonymised with a
salt that is never the public default outside the local setup; and, through the real
stack (gateway -> spool -> broker -> landing -> DuckDB), PII sent in every stored field
reaches none of Kafka's topics, DuckDB's tables, the data directory's files (spool, its
dead-letter file, logs) or the captured logs."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
from datetime import datetime, timezone

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer

from flywheel.errors import ConfigError
from flywheel.settings import Settings
from streams.privacy import RULES, SALT_FILE, Privacy, user_salt
from streams.redact import Redactor
from streams.schemas import DeadLetter, Feedback, Interaction
from streams.topics import topic_names
from tests.conftest import REPO, count, query, wait_for

SALT = b"salt-of-this-test"


@pytest.fixture
def privacy() -> Privacy:
    return Privacy(Redactor(), SALT)


# ----------------------------------------------------------------------------- the rules


def test_every_stored_field_has_a_rule_and_is_documented():
    doc = (REPO / "docs" / "privacy.md").read_text()
    for model, rules in RULES.items():
        assert set(rules) == set(model.model_fields), f"{model.__name__}: give every field a rule in streams/privacy.py"
        for field in model.model_fields:
            assert f"`{model.__name__}.{field}`" in doc, f"docs/privacy.md: say what happens to {model.__name__}.{field}"


def _interaction(**over) -> Interaction:
    data = dict(
        event_id="ev-1", request_id="req-1", session_id="sess-1", user_id="u_0123456789abcdef01234567",
        app="web", created_at=datetime.now(timezone.utc), model_alias="flywheel-chat", model_version="base",
        messages=[{"role": "user", "content": "hi"}], drafts=[{"index": 0, "content": "hello", "finish_reason": "stop"}])
    return Interaction(**(data | over))


def test_each_free_text_field_of_an_interaction_is_redacted(privacy):
    event = _interaction(
        event_id="ev-ada@example.com", request_id="req-078-05-1120", session_id="sess-ada@example.com",
        user_id="ada.lovelace", app="app of ada@example.com", model_alias="alias 07700 900123",
        model_version="v sk_live_51H8xYzAbCdEfGhIjKl",
        messages=[{"role": "user", "content": "IBAN GB82 WEST 1234 5698 7654 32", "name": "ada@example.com"}],
        drafts=[{"index": 0, "content": "passport no. X1234567", "finish_reason": "stop"}],
        params={"stop": ["078-05-1120"], "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"description": "mail ada@example.com", "enum": ["+33 6 12 34 56 78"],
                                    "properties": {"ada@example.com": {"type": "string"}}}}},
                "temperature": 0.5, "seed": 4111111111111111},
        status="error", error={"type": "Err ada@example.com", "message": "upstream said 4111 1111 1111 1111", "status": 502},
        tags={"task_type": "support/ada@example.com", "robustness": ["typo 07700 900123"], "source": "ingest",
              "labels": {"owner ada@example.com": "postgres://u:pw@db"}},
    )
    out = privacy.interaction(event)
    text = out.model_dump_json()
    for raw in ("ada@example.com", "078-05-1120", "07700 900123", "sk_live_51H8xYzAbCdEfGhIjKl", "GB82 WEST",
                "X1234567", "+33 6 12 34 56 78", "4111 1111 1111 1111", "ada.lovelace", ":pw@"):
        assert raw not in text, raw
    assert out.event_id.startswith("h_") and out.session_id.startswith("h_") and out.request_id.startswith("h_")
    assert out.user_id == privacy.pseudonym("ada.lovelace")
    assert out.app == "app of <EMAIL>" and out.model_alias == "alias <PHONE>" and out.model_version == "v <SECRET>"
    assert out.messages[0] == {"role": "user", "content": "IBAN <IBAN>", "name": "<EMAIL>"}
    assert out.params["temperature"] == 0.5 and out.params["seed"] == 4111111111111111  # numbers are kept
    assert out.params["stop"] == ["<SSN>"]
    assert out.params["response_format"]["json_schema"]["schema"]["properties"] == {"<EMAIL>": {"type": "string"}}
    assert out.error == {"type": "Err <EMAIL>", "message": "upstream said <BANK_CARD>", "status": 502}
    assert out.tags == {"task_type": "support/<EMAIL>", "robustness": ["typo <PHONE>"], "source": "ingest",
                        "labels": {"owner <EMAIL>": "postgres://u:<SECRET>@db"}}


def test_ids_without_pii_and_pseudonyms_are_kept(privacy):
    event = _interaction()
    assert privacy.interaction(event) == event  # nothing to do: the same event
    assert privacy.identifier("chatcmpl-0f3a") == "chatcmpl-0f3a"
    # An id with PII is hashed the same way everywhere, so feedback still finds its request.
    assert privacy.identifier("req-ada@example.com") == privacy.identifier("req-ada@example.com") != "req-ada@example.com"
    assert Privacy(Redactor(), b"another salt").identifier("req-ada@example.com") != privacy.identifier("req-ada@example.com")
    # The gateway's own ids (a random UUID's hex) are kept even when ten digits in a row look like
    # a phone number (about one in 800; found by tests/test_chaos.py): the client holds that id.
    for own in ("chatcmpl-0e13861130444c3ab59f5a115ffb38ad", "fb-18646546944e4c7dbf54fb305ac44998"):
        assert Redactor().redact(own) != own and privacy.identifier(own) == own


def test_feedback_and_dead_letters_are_redacted(privacy):
    fb = Feedback(event_id="fb-1", request_id="req-ada@example.com", kind="edit", text="call 06 12 34 56 78",
                  user_id="bob", session_id="s-bob@example.org", app="X 078-05-1120", created_at=datetime.now(timezone.utc),
                  comment="my SSN is 078-05-1120")
    out = privacy.feedback(fb)
    assert out.request_id == privacy.identifier("req-ada@example.com") and out.user_id == privacy.pseudonym("bob")
    assert (out.text, out.comment, out.app) == ("call <PHONE>", "my SSN is <SSN>", "X <SSN>")
    assert out.session_id.startswith("h_")
    landing = Privacy(Redactor())  # the landing has no salt: dead letters need none
    dead = DeadLetter(event_id="t:0:1", source_topic="t", partition=0, offset=1, key="ada@example.com",
                      reason="bad", payload='{"x": "ada@example.com"}', created_at=datetime.now(timezone.utc))
    assert landing.dead_letter(dead).model_dump(include={"key", "payload"}) == {"key": "<EMAIL>", "payload": '{"x": "<EMAIL>"}'}


def test_tool_calls_and_tool_results_are_redacted(privacy):
    call = {"id": "call-ada@example.com", "type": "function",
            "function": {"name": "mail_ada@example.com", "arguments": '{"to": "ada@example.com", "card": 4111111111111111, '
                                                                      '"n": 3, "ok": true}'}}
    own = {"id": "call_0e13861130444c3ab59f5a115ffb38ad", "type": "function",
           "function": {"name": "lookup", "arguments": '{"order": 12, "note": "fine"}'}}
    event = _interaction(messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [call, own]},
        {"role": "tool", "tool_call_id": "call-ada@example.com", "content": "sent to 07700 900123"}],
        drafts=[{"index": 0, "content": "", "finish_reason": "tool_calls", "tool_calls": [call]}],
        tools=[{"type": "function", "function": {"name": "mail", "description": "writes to ada@example.com"}}])
    out = privacy.interaction(event)
    assert "ada@example.com" not in out.model_dump_json() and "4111111111111111" not in out.model_dump_json()
    redacted = out.messages[1]["tool_calls"][0]
    assert redacted["id"] == privacy.identifier("call-ada@example.com") == out.messages[2]["tool_call_id"]
    assert redacted["function"] == {"name": "<EMAIL>",
                                    "arguments": '{"to":"<EMAIL>","card":"<BANK_CARD>","n":3,"ok":true}'}
    assert out.messages[1]["tool_calls"][1] == own  # nothing to redact: kept exactly as written
    assert out.messages[2]["content"] == "sent to <PHONE>" and out.drafts[0]["tool_calls"] == [redacted]
    assert out.tools[0]["function"]["description"] == "writes to <EMAIL>"
    assert privacy.redact_arguments("not json, ada@example.com") == "not json, <EMAIL>"
    fb = Feedback(event_id="fb-1", request_id="r", kind="edit", tool_call_id="call-ada@example.com", tool_calls=[call],
                  created_at=datetime.now(timezone.utc))
    out = privacy.feedback(fb)
    assert out.tool_call_id == redacted["id"] and out.tool_calls == [redacted]


def test_without_redaction_text_is_kept_but_users_are_still_pseudonymised():
    p = Privacy(None, SALT)
    event = _interaction(user_id="ada", messages=[{"role": "user", "content": "ada@example.com"}])
    out = p.interaction(event)
    assert out.messages[0]["content"] == "ada@example.com" and out.user_id == p.pseudonym("ada")


# ----------------------------------------------------------------------------- the salt


def test_local_default_generates_one_private_salt_per_data_dir(tmp_path):
    s = Settings(data_dir=str(tmp_path / "a"))
    assert s.kafka.bootstrap == "" and s.privacy.user_salt.get_secret_value() == ""
    salts = []
    threads = [threading.Thread(target=lambda: salts.append(user_salt(s))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(salts)) == 1 and len(salts[0]) == 64  # 32 random bytes, hex; one winner among racing starts
    path = s.data_path / SALT_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [SALT_FILE]  # no temporary file left behind
    assert user_salt(s) == salts[0]  # stable: pseudonyms survive restarts
    assert user_salt(Settings(data_dir=str(tmp_path / "b"))) != salts[0]
    old_default = s.replace(privacy={"user_salt": "flywheel-dev-salt"})
    assert user_salt(old_default) == salts[0]  # the old public default counts as unset


def test_an_external_broker_needs_a_salt(tmp_path):
    s = Settings(data_dir=str(tmp_path)).replace(kafka={"bootstrap": "kafka:9092"})
    for public in ("", "flywheel-dev-salt"):
        with pytest.raises(ConfigError, match="FLYWHEEL_PRIVACY__USER_SALT"):
            user_salt(s.replace(privacy={"user_salt": public}))
    assert not (s.data_path / SALT_FILE).exists()
    assert user_salt(s.replace(privacy={"user_salt": "a long random secret"})) == b"a long random secret"

    from services.gateway.gateway import Gateway

    with pytest.raises(ConfigError, match="privacy.user_salt is not set"):
        Gateway.build(s)  # before the backend, the producer or the model start


def test_the_gateway_command_refuses_the_public_salt(tmp_path):
    env = {**os.environ, "FLYWHEEL_DATA_DIR": str(tmp_path), "FLYWHEEL_KAFKA__BOOTSTRAP": "127.0.0.1:9",
           "FLYWHEEL_MODEL__BACKEND": "scripted", "FLYWHEEL_PRIVACY__USER_SALT": "flywheel-dev-salt"}
    run = subprocess.run([sys.executable, "-m", "flywheel", "gateway"], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0
    assert "privacy.user_salt is not set" in run.stderr and "Traceback" not in run.stderr


# ----------------------------------------------------------------------------- the stack

# Raw values sent in every stored field; none may be found anywhere afterwards. (A passport
# number is only recognisable with its word, so it is always sent with it.)
EMAIL, PHONE_UK, PHONE_FR, SSN = "ada.lovelace@example.com", "07700 900123", "06 12 34 56 78", "078-05-1120"
IBAN, PASSPORT, CARD = "GB82 WEST 1234 5698 7654 32", "X1234567", "4111 1111 1111 1111"
STRIPE, GOOGLE, DB_PASSWORD = "sk_live_51H8xYzAbCdEfGhIjKlMn", "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", "Tr0ub4dor3"
USER, OTHER_USER = "ada.lovelace", "jdoe1977"
RAW = [EMAIL, PHONE_UK, PHONE_FR, SSN, IBAN, PASSPORT, CARD, STRIPE, GOOGLE, DB_PASSWORD, USER, OTHER_USER,
       "GB82WEST12345698765432", "4111111111111111", "078051120"]


def _pii_text(label: str) -> str:
    return (f"{label}: mail {EMAIL}, ring {PHONE_UK} or {PHONE_FR}, SSN {SSN}, IBAN {IBAN}, passport no. {PASSPORT}, "
            f"card {CARD}, keys {STRIPE} {GOOGLE}, db postgres://report:{DB_PASSWORD}@db.internal/sales")


def test_pii_in_every_stored_field_is_found_nowhere(scripted_gateway, control_plane, settings, caplog):
    caplog.set_level(logging.DEBUG)
    for noisy in ("kafka", "urllib3", "httpcore", "httpx", "openai"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    gw = scripted_gateway
    backend = gw.gw.backend
    client = gw.client()
    headers = {"X-Session-Id": f"sess-{EMAIL}", "X-App": f"app {PHONE_UK}"}
    schema = {"type": "object", "description": f"contact {EMAIL}",
              "properties": {"iban": {"type": "string", "enum": [IBAN]}}}

    # Chat: messages, the answer (drafts), user, session/app headers, metadata, stop strings, a schema.
    backend.enqueue(_pii_text("answer"), _pii_text("answer 2"))
    r = client.chat.completions.create(
        model="flywheel-chat", messages=[{"role": "system", "content": _pii_text("system")},
                                         {"role": "user", "content": _pii_text("user")}],
        n=2, user=USER, stop=[SSN, STRIPE], metadata={"task_type": f"support/{EMAIL}"}, extra_headers=headers,
        response_format={"type": "json_schema", "json_schema": {"name": "contact", "schema": schema}})
    assert EMAIL in r.choices[0].message.content  # the client's own answer is not redacted
    # Streaming, with session and app from metadata instead of headers.
    backend.enqueue(_pii_text("streamed answer"))
    stream = client.chat.completions.create(
        model="flywheel-chat", messages=[{"role": "user", "content": _pii_text("streamed")}], stream=True,
        user=OTHER_USER, metadata={"session_id": f"s-{PHONE_FR}", "app": f"a {SSN}", "task_type": f"t passport {PASSPORT}"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    # Tools (#12): descriptions of the tools offered, a call and a tool's result in the history, the calls the
    # model makes (arguments: PII in strings, and a card number sent as a number), an edit that corrects a call.
    tools = [{"type": "function", "function": {"name": "lookup", "description": f"look up {EMAIL}", "parameters": {
        "type": "object", "properties": {"note": {"type": "string", "description": f"ring {PHONE_UK}"}}}}}]
    history = [{"role": "user", "content": "find my order"},
               {"role": "assistant", "content": None, "tool_calls": [{"id": f"call-{EMAIL}", "type": "function", "function": {
                   "name": "lookup", "arguments": json.dumps({"note": _pii_text("history arguments")})}}]},
               {"role": "tool", "tool_call_id": f"call-{EMAIL}", "content": _pii_text("tool result")}]
    backend.enqueue([{"name": "lookup", "arguments": {"note": _pii_text("call"), "card": int(CARD.replace(" ", ""))}}])
    called = client.chat.completions.create(model="flywheel-chat", messages=history, tools=tools, tool_choice="required",
                                            user=USER)
    call = called.choices[0].message.tool_calls[0]
    assert EMAIL in call.function.arguments  # the client's own answer is not redacted
    resp = client.post("/feedback", cast_to=httpx.Response, body={
        "request_id": called.id, "kind": "edit", "tool_call_id": call.id, "user": USER, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "lookup",
                                                             "arguments": json.dumps({"note": _pii_text("fixed")})}}]})
    assert resp.status_code == 200, resp.text
    # A failed generation: its error message holds PII.
    backend.fail_next(502, f"upstream refused {_pii_text('error')}")
    with pytest.raises(Exception):
        client.chat.completions.create(model="flywheel-chat", messages=[{"role": "user", "content": "hi"}], user=USER,
                                       extra_headers=headers)

    # Feedback: edit text, comment, user, session id; and a request id with PII in it.
    for request_id in (r.id, f"req-{EMAIL}"):
        resp = client.post("/feedback", cast_to=httpx.Response, body={
            "request_id": request_id, "kind": "edit", "text": _pii_text("edit"), "comment": _pii_text("comment"),
            "user": USER, "session_id": f"sess-{IBAN}"})
        assert resp.status_code in (200, 400, 404), resp.text  # a fake request id may be refused
    fed = 1 + (resp.status_code == 200)

    # Ingest: every field of the event schema a sender fills.
    now = datetime.now(timezone.utc).isoformat()
    items = [
        {"type": "interaction", "event_id": f"ev-{EMAIL}", "request_id": f"req-{SSN}", "session_id": f"sess-{PHONE_UK}",
         "user_id": OTHER_USER, "app": f"app {EMAIL}", "created_at": now, "model_alias": f"alias {PHONE_FR}",
         "model_version": f"v {STRIPE}",
         "messages": [{"role": "user", "content": _pii_text("ingest"), "name": EMAIL}],
         "drafts": [{"index": 0, "content": _pii_text("ingest draft")}],
         "params": {"stop": [SSN], "note": _pii_text("params"), "temperature": 0.2},
         "tags": {"task_type": f"t {IBAN}", "robustness": [f"passport no. {PASSPORT}"], "source": f"src {EMAIL}",
                  "labels": {f"k {EMAIL}": _pii_text("label")}}},
        {"type": "interaction", "request_id": "req-ext-error", "session_id": "s-ext", "user": USER,
         "model_alias": "x", "model_version": "y", "messages": [{"role": "user", "content": "hi"}], "status": "error",
         "error": {"type": f"Err {EMAIL}", "message": _pii_text("ingest error"), "status": 500}},
        {"type": "feedback", "event_id": f"fb-{EMAIL}", "request_id": f"req-{SSN}", "kind": "edit",
         "text": _pii_text("ingest edit"), "comment": _pii_text("ingest comment"), "user_id": OTHER_USER,
         "session_id": f"sess-{PHONE_UK}", "app": f"app {CARD}"},
    ]
    ingest = httpx.post(f"{gw.url}/v1/events", headers={"Authorization": f"Bearer {gw.tokens['ingest']}"},
                        json={"events": items})
    assert ingest.json()["accepted"] == 3, ingest.text

    # A record that skipped the gateway and breaks the schema: the landing dead-letters it.
    topics = topic_names(settings)
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap)
    poison = producer.send(topics["interactions"], key=EMAIL.encode(),
                           value=json.dumps({"type": "interaction", "note": _pii_text("poison")}).encode()).get(timeout=30)
    producer.close()

    wait_for(lambda: count(control_plane, "interactions") == 6 and count(control_plane, "feedback") == fed + 2
             and count(control_plane, "dead_letters") == 1, timeout=60, what="everything to land")
    spooled = b"".join(p.read_bytes() for p in settings.data_path.rglob("*") if p.is_file())
    assert b"<EMAIL>" in spooled  # the spool holds the events, redacted

    # The pipeline kept what it should: placeholders, pseudonyms, hashed ids that still join.
    rows = query(control_plane, "SELECT user_id, session_id, app, task_type FROM interactions ORDER BY created_at")
    assert {u for u, *_ in rows} == {gw.gw.pseudonym(USER), gw.gw.pseudonym(OTHER_USER)}
    assert ("<EMAIL>" in rows[0][1] or rows[0][1].startswith("h_")) and rows[0][2] == "app <PHONE>"
    assert query(control_plane, "SELECT count(*) FROM feedback f JOIN interactions i USING (request_id)")[0][0] == 3
    assert "<IBAN>" in query(control_plane, "SELECT payload FROM dead_letters")[0][0]

    consumer = KafkaConsumer(*topics.values(), bootstrap_servers=settings.bootstrap, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=3000)
    kafka = b"".join((rec.key or b"") + b"\n" + (rec.value or b"") for rec in consumer  # all but our own poison
                     if (rec.topic, rec.partition, rec.offset) != (poison.topic, poison.partition, poison.offset))
    consumer.close()
    tables = [t for (t,) in query(control_plane, "SELECT table_name FROM information_schema.tables "
                                                 "WHERE table_type = 'BASE TABLE'")]
    duck = "\n".join(str(row) for t in tables for row in query(control_plane, f'SELECT * FROM "{t}"'))
    files = b"".join(p.read_bytes() for p in settings.data_path.rglob("*") if p.is_file())
    logs = "\n".join(f"{rec.getMessage()} {rec.exc_text or ''}" for rec in caplog.records)
    assert b"<SSN>" in kafka and "<PASSPORT>" in duck and "dead_letters" in tables
    for raw in RAW:
        assert raw.encode() not in kafka, f"{raw!r} reached Kafka"
        assert raw not in duck, f"{raw!r} reached DuckDB"
        assert raw.encode() not in files, f"{raw!r} reached a file of the data directory (spool, logs...)"
        assert raw not in logs, f"{raw!r} reached the logs"
