"""The gateway with the real model (SmolLM2-135M-Instruct, continuous batching), the real
broker and DuckDB, driven by the official openai client."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from kafka import KafkaConsumer

from streams.topics import topic_names
from tests.conftest import REPO, count, query, wait_for

PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]


def test_streaming_equals_non_streaming_for_greedy(model_gateway):
    client = model_gateway.client()
    plain = client.chat.completions.create(model="flywheel-chat", messages=PROMPT, temperature=0, max_tokens=40)
    stream = client.chat.completions.create(model="flywheel-chat", messages=PROMPT, temperature=0, max_tokens=40,
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, usage, ids = [], None, None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    text = plain.choices[0].message.content
    assert text and "".join(pieces) == text
    assert finish == plain.choices[0].finish_reason
    assert usage.completion_tokens == plain.usage.completion_tokens
    assert len(ids) == 1 and ids != {plain.id}


def test_two_drafts_and_concurrent_requests(model_gateway):
    client = model_gateway.client()
    r = client.chat.completions.create(model="flywheel-chat", messages=PROMPT, n=2, temperature=0.9, max_tokens=24, seed=7)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)
    # Several requests at once share forward passes and each gets its own answer.
    questions = [f"What is {i} plus {i}?" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda q: client.chat.completions.create(
            model="flywheel-chat", messages=[{"role": "user", "content": q}], temperature=0, max_tokens=16), questions))
    alone = client.chat.completions.create(model="flywheel-chat", messages=[{"role": "user", "content": questions[3]}],
                                           temperature=0, max_tokens=16)
    assert answers[3].choices[0].message.content == alone.choices[0].message.content


def test_feedback_lands_joined_to_its_request(model_gateway, control_plane):
    client = model_gateway.client()
    r = client.chat.completions.create(model="flywheel-chat", messages=PROMPT, n=2, temperature=0.8, max_tokens=12,
                                       user="ana", extra_headers={"X-Session-Id": "sess-join"})
    for body in [{"kind": "thumb", "value": -1, "draft": 1}, {"kind": "choice", "draft": 0},
                 {"kind": "edit", "draft": 1, "text": "Red, orange and yellow."}, {"kind": "rating", "value": 4},
                 {"kind": "regenerate"}, {"kind": "copy"}]:
        resp = client.post("/feedback", body={"request_id": r.id, "user": "ana", **body}, cast_to=httpx.Response)
        assert resp.status_code == 200 and resp.json()["request_id"] == r.id
    wait_for(lambda: count(control_plane, "feedback") == 6 and count(control_plane, "interactions") == 1,
             what="the interaction and its feedback")
    rows = query(control_plane, """
        SELECT f.kind, f.draft, f.value, f.user_id = i.user_id, i.session_id, json_array_length(i.drafts),
               json_extract_string(i.drafts, '$[' || f.draft || '].content') IS NOT NULL
        FROM feedback f JOIN interactions i USING (request_id) ORDER BY f.kind""")
    assert [r[0] for r in rows] == ["choice", "copy", "edit", "rating", "regenerate", "thumb"]
    assert all(r[3] and r[4] == "sess-join" and r[5] == 2 and r[6] for r in rows)
    assert query(control_plane, "SELECT text FROM feedback WHERE kind = 'edit'")[0][0] == "Red, orange and yellow."
    (version, usage, ttft, total) = query(control_plane, "SELECT model_version, completion_tokens, ttft_ms, total_ms FROM interactions")[0]
    assert version == "base" and usage > 0 and 0 < ttft <= total


def test_no_raw_pii_reaches_kafka_or_duckdb(model_gateway, control_plane, settings):
    corpus = [json.loads(line) for line in (REPO / "tests" / "data" / "pii_corpus.jsonl").read_text().splitlines() if line.strip()]
    secrets_ = [p for item in corpus for p in item["pii"]]
    assert len(secrets_) >= 20
    client = model_gateway.client()
    chat_ids = []
    for item in corpus[:12]:  # through chat: messages (and the model's echo, if any) are redacted
        r = client.chat.completions.create(model="flywheel-chat", temperature=0, max_tokens=8, user=item["text"][:40],
                                           messages=[{"role": "user", "content": item["text"]}])
        chat_ids.append(r.id)
    for item in corpus:  # through feedback edits and comments
        client.post("/feedback", body={"request_id": chat_ids[0], "kind": "edit", "text": item["text"],
                                       "comment": item["text"]}, cast_to=httpx.Response)
    ingest = httpx.post(f"{model_gateway.url}/v1/events", headers={"Authorization": f"Bearer {model_gateway.tokens['ingest']}"},
                        json={"events": [{"type": "interaction", "request_id": f"ext-{i}", "session_id": "ext",
                                          "model_alias": "x", "model_version": "y",
                                          "messages": [{"role": "user", "content": item["text"]}],
                                          "drafts": [{"index": 0, "content": item["text"]}]} for i, item in enumerate(corpus)]})
    assert ingest.json()["accepted"] == len(corpus)
    wait_for(lambda: count(control_plane, "feedback") == len(corpus)
             and count(control_plane, "interactions") == 12 + len(corpus), timeout=60, what="everything to land")

    t = topic_names(settings)
    consumer = KafkaConsumer(t["interactions"], t["feedback"], bootstrap_servers=settings.bootstrap,
                             auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=3000)
    raw = b"".join(r.value for r in consumer)
    consumer.close()
    dump = "".join(str(row) for table in ("interactions", "feedback")
                   for row in query(control_plane, f"SELECT * FROM {table}"))
    for secret in secrets_:
        assert secret.encode() not in raw, f"{secret!r} reached Kafka"
        assert secret not in dump, f"{secret!r} reached DuckDB"
    assert b"<EMAIL>" in raw and b"<PHONE>" in raw


def test_simulated_traffic_lands_with_its_feedback(model_gateway, control_plane, tmp_path):
    from flywheel.simulate import run_simulation

    manifest = tmp_path / "truth.jsonl"
    report = run_simulation(f"{model_gateway.url}/v1", model_gateway.tokens["chat"], seed=3, duration_s=None,
                            max_sessions=6, concurrency=3, manifest_path=manifest, max_tokens=24, progress=False)
    assert report.requests > 0 and report.errors == 0
    sent_feedback = sum(report.feedback.values())
    wait_for(lambda: count(control_plane, "interactions") == report.requests
             and count(control_plane, "feedback") == sent_feedback, timeout=60, what="the simulated traffic to land")
    truth = [json.loads(line) for line in manifest.read_text().splitlines()]
    landed = {r[0] for r in query(control_plane, "SELECT request_id FROM interactions")}
    assert {t["request_id"] for t in truth if t.get("request_id")} == landed
    # Feedback refers to landed requests only; the ground truth never travels with the traffic.
    assert count(control_plane, "feedback f LEFT JOIN interactions i USING (request_id)", "i.request_id IS NULL") == 0
    assert count(control_plane, "interactions", "tags::VARCHAR LIKE '%persona%' OR tags::VARCHAR LIKE '%honest%'") == 0


def test_a_registered_adapter_serves_through_routing(settings, start_gateway, local_backend, model_dir, tmp_path):
    from serving.adapters import make_random_adapter
    from serving.registry import RegistryError
    from services.control.plane import ControlPlane

    adapter = make_random_adapter(model_dir, tmp_path / "lora", seed=3)
    s = settings.replace(gateway={"routing_poll_s": 0.2})
    plane = ControlPlane(s).start(scheduler=False)
    try:
        with plane.reader() as cur:
            reg = plane.registry(cur)
            reg.register("lora-1", adapter, notes="random LoRA for the test")  # checked on the real base
            broken = tmp_path / "broken"
            broken.mkdir()
            (broken / "adapter_config.json").write_text("{}")
            with pytest.raises(RegistryError, match="does not load"):
                reg.register("lora-2", broken)
            reg.set_routes("flywheel-chat", {"lora-1": 50, "base": 50}, reason="test canary")
        gw = start_gateway(s, local_backend)
        wait_for(lambda: gw.gw.router.table.revision == 1, timeout=30, what="the gateway to pick up the routes")
        assert "lora-1" in local_backend.versions()
        client = gw.client()
        answers: dict[str, set[str]] = {}
        for i in range(16):
            r = client.chat.completions.create(model="flywheel-chat", messages=PROMPT, temperature=0, max_tokens=12,
                                               user=f"user-{i}")
            answers.setdefault(r.system_fingerprint.split(":")[1], set()).add(r.choices[0].message.content)
        assert set(answers) == {"base", "lora-1"}  # both sides of the split served
        assert len(answers["base"]) == 1 and len(answers["lora-1"]) == 1  # greedy: one answer per version
        assert answers["base"] != answers["lora-1"]  # the adapter changes the model
        wait_for(lambda: count(plane, "interactions") == 16, what="the interactions to land")
        by_version = dict(query(plane, "SELECT model_version, count(*) FROM interactions GROUP BY 1"))
        assert set(by_version) == {"base", "lora-1"}
    finally:
        plane.stop(drain=False)
    gw.stop(drain_timeout=0.5)
    local_backend.unload_adapter("lora-1")
