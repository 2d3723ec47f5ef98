"""Feedback integrity (issue #13), attacked: feedback is bound to the key and user that made
the request, duplicates count once, one user cannot swing a rollout verdict or fill a
curation run, and an untrusted user's edit is not auto-approved.

Real parts: the gateway over HTTP (scripted backend), the broker, the control plane's
landing into DuckDB, the real lander, curation with its embedder."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest

from serving.rollout import AnalysisPolicy, analyse
from serving.rollout.windows import version_window
from streams.landing import Record
from streams.schemas import Feedback, Interaction
from streams.topics import topic_names
from tests.conftest import count, query, seed_candidates, wait_for
from training.curation import review
from training.curation.mine import Window, mine
from training.curation.user_cap import user_cap

CHAT = {"model": "flywheel-chat", "messages": [{"role": "user", "content": "hello"}]}


def post(gw, path: str, body: dict, role: str = "chat", client: httpx.Client | None = None) -> httpx.Response:
    return (client or httpx).post(gw.url + path, json=body, headers={"Authorization": f"Bearer {gw.tokens[role]}"})


def assert_error(resp: httpx.Response, status: int, code: str, param: str | None) -> str:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["param"] == param
    return err["message"]


# -- the gateway: a request's feedback is its requester's -------------------------------------

def test_feedback_from_another_key_or_user_is_refused(scripted_gateway, control_plane):
    gw = scripted_gateway
    rid = gw.client("chat").chat.completions.create(**CHAT, user="alice").id
    alice = gw.gw.pseudonym("alice")

    # Another key (admin may chat and give feedback) cannot rate it, with or without alice's name.
    for body in ({"kind": "thumb", "value": -1}, {"kind": "thumb", "value": -1, "user": "alice"}):
        msg = assert_error(post(gw, "/v1/feedback", {"request_id": rid, **body}, role="admin"), 404,
                           "request_not_found", "request_id")
        assert "this API key" in msg
    # The same key under another user: the attack that picks a version by changing `user`.
    msg = assert_error(post(gw, "/v1/feedback", {"request_id": rid, "kind": "thumb", "value": -1, "user": "mallory"}),
                       403, "feedback_user_mismatch", "user")
    assert "only the user who made a request may rate it" in msg
    # A draft the answer does not have (n was 1).
    assert_error(post(gw, "/v1/feedback", {"request_id": rid, "kind": "thumb", "value": -1, "draft": 3, "user": "alice"}),
                 400, "invalid_value", "draft")
    # Batch ingest is held to the request's user too (item by item).
    batch = post(gw, "/v1/events", {"events": [
        {"type": "feedback", "request_id": rid, "kind": "thumb", "value": -1, "user": "mallory"},
        {"type": "feedback", "request_id": rid, "kind": "copy"}]}, role="ingest")
    assert batch.status_code == 200 and batch.json()["accepted"] == 1
    assert batch.json()["data"][0]["error"]["param"] == "events[0].user"

    # The requester: named, or not (then the feedback is stored as alice's).
    assert post(gw, "/v1/feedback", {"request_id": rid, "kind": "thumb", "value": 1, "user": "alice"}).status_code == 200
    assert post(gw, "/v1/feedback", {"request_id": rid, "kind": "rating", "value": 5}).status_code == 200
    wait_for(lambda: count(control_plane, "feedback") == 3 and count(control_plane, "interactions") == 1,
             what="the accepted feedback to land")
    assert query(control_plane, "SELECT DISTINCT user_id FROM feedback") == [(alice,)]
    assert query(control_plane, "SELECT user_id FROM interactions") == [(alice,)]


def test_two_hundred_duplicate_thumbs_from_one_user_count_once(scripted_gateway, control_plane):
    gw = scripted_gateway
    start = datetime.now(timezone.utc) - timedelta(minutes=1)
    rid = gw.client("chat").chat.completions.create(**CHAT, user="bob").id
    with httpx.Client() as client:
        for k in range(200):  # 199 thumbs up, then the one that stands: down
            body = {"request_id": rid, "kind": "thumb", "value": 1 if k < 199 else -1, "user": "bob"}
            assert post(gw, "/v1/feedback", body, client=client).status_code == 200
        for stars in (5, 5, 5, 2):
            assert post(gw, "/v1/feedback", {"request_id": rid, "kind": "rating", "value": stars},
                        client=client).status_code == 200
    wait_for(lambda: count(control_plane, "feedback") == 204 and count(control_plane, "interactions") == 1,
             timeout=60, what="every feedback event to land")
    (version,) = query(control_plane, "SELECT model_version FROM interactions")[0]
    end = datetime.now(timezone.utc) + timedelta(minutes=1)
    with control_plane.reader() as cur:
        # The rollout analysis: one thumb (the latest, down) and one rating (the latest, 2 stars).
        window = version_window(cur, version, start, end)
        assert (window.thumbs_up, window.thumbs_down, window.ratings) == (0, 1, (0, 1, 0, 0, 0))
        # What the control plane reads with its settings (rollout.max_feedback_per_user) says the same.
        capped = control_plane.rollouts.window(cur, version, start, end, None)
        assert (capped.thumbs_up, capped.thumbs_down, capped.ratings) == (0, 1, (0, 1, 0, 0, 0))
        # Curation's mining: one thumb down, one rating, on the one candidate.
        (cand,) = mine(cur, Window(None, end)).candidates
    assert (cand.feedback.thumbs_up, cand.feedback.thumbs_down, cand.feedback.ratings) == (0, 1, [2])


# -- the rollout analysis: one user cannot swing a verdict --------------------------------------

T0 = datetime(2026, 3, 2, 12, tzinfo=timezone.utc)


class Traffic:
    """Interactions and feedback landed through the control plane's real lander."""

    def __init__(self, plane):
        self.plane, self.topics, self.records, self.n = plane, topic_names(plane.settings), [], 0

    def request(self, version: str, user: str | None) -> str:
        self.n += 1
        rid = f"r-{self.n}"
        inter = Interaction(event_id=f"ev-{self.n}", request_id=rid, session_id=f"s-{self.n}", user_id=user,
                            created_at=T0 + timedelta(seconds=self.n % 50), model_alias="flywheel-chat",
                            model_version=version, messages=[{"role": "user", "content": "q"}],
                            drafts=[{"index": 0, "content": "a"}], timing={"total_ms": 300.0})
        self.records.append(Record(self.topics["interactions"], 0, self.n, None, inter.model_dump_json().encode()))
        return rid

    def thumb(self, rid: str, user: str | None, value: int, draft: int = 0) -> None:
        self.n += 1
        fb = Feedback(event_id=f"fb-{self.n}", request_id=rid, kind="thumb", value=value, user_id=user, draft=draft,
                      created_at=T0 + timedelta(seconds=55, microseconds=self.n))
        self.records.append(Record(self.topics["feedback"], 0, self.n, None, fb.model_dump_json().encode()))

    def land(self) -> None:
        self.plane.landing.lander.land(self.records)
        self.records = []


def test_a_flood_from_one_user_cannot_swing_the_rollout_analysis_past_the_cap(settings, control_plane):
    t = Traffic(control_plane)
    # Production: 200 people, one answer each, 10 % thumbs down. The canary: 100 people, the same.
    for version, people in (("base", 200), ("cand", 100)):
        for k in range(people):
            user = f"{version}-user-{k}"
            t.thumb(t.request(version, user), user, -1 if k % 10 == 0 else 1)
    # The attacker found a `user` the router sends to the canary and floods it: 300 requests,
    # each thumbed down 5 times; thumbs down on other people's canary answers under its own
    # name; and thumbs on drafts the answers do not have.
    for _ in range(300):
        rid = t.request("cand", "mallory")
        for _ in range(5):
            t.thumb(rid, "mallory", -1)
    for k in range(1, 200, 2):
        t.thumb(f"r-{k}", "mallory", -1)  # someone else's request: never counts
    victim = t.request("cand", "victim")
    for draft in range(1, 40):
        t.thumb(victim, "victim", -1, draft=draft)  # no such drafts: never count
    t.land()

    start, end = T0, T0 + timedelta(minutes=1)
    policy = AnalysisPolicy()  # the defaults the control plane uses
    with control_plane.reader() as cur:
        base = control_plane.rollouts.window(cur, "base", start, end, None)
        cand = control_plane.rollouts.window(cur, "cand", start, end, None)
        uncapped = version_window(cur, "cand", start, end, max_feedback_per_user=0)
    cap = settings.rollout.max_feedback_per_user
    assert cap == 5
    assert (base.thumbs_up, base.thumbs_down) == (180, 20)
    # Each of mallory's 300 requests counts once (dedup), mallory counts 5 times at most (the cap).
    assert (cand.thumbs_up, cand.thumbs_down) == (90, 10 + cap)
    assert (uncapped.thumbs_up, uncapped.thumbs_down) == (90, 10 + 300)
    swung = analyse(uncapped, base, policy).check("negative_feedback")
    held = analyse(cand, base, policy).check("negative_feedback")
    assert swung.outcome == "fail"  # what the flood did before the cap
    assert held.outcome != "fail", held.reason
    assert held.figures["canary_feedback"] == 90 + 10 + cap


# -- curation: the per-user cap, and edits auto-approved only from trusted users ----------------

def test_the_user_cap_is_a_share_of_what_everyone_keeps_once_capped():
    honest = {f"u{k}": 10 for k in range(100)}
    cap = user_cap({**honest, "mallory": 5000}, share=0.1, floor=20)
    assert cap == 111  # 111 <= 0.1 * (1000 + 111): mallory is at most a tenth of what is kept
    assert cap <= 0.1 * (sum(honest.values()) + cap) < cap + 1
    assert user_cap(honest, share=0.1, floor=20) is None  # nobody over it
    assert user_cap({"solo": 500}, share=0.1, floor=20) == 20  # the floor keeps a one-user run alive
    assert user_cap({**honest, "mallory": 5000}, share=1.0, floor=20) is None  # 1: no cap


def test_an_untrusted_users_edit_is_not_auto_approved(settings, control_plane):
    ids = seed_candidates(control_plane, [
        {"label": "unknown", "response_source": "edit"},  # a reliable rater, accuracy 0.93: approve
        {"label": "unknown", "response_source": "edit"},  # a rater with too few judgements (trust 0): wait
        {"label": "unknown", "response_source": "edit"},  # reliable, but only 0.7 accurate: wait
        {"label": "unknown", "response_source": "edit"},  # a user curation never scored (NULL): wait
    ])
    with control_plane.reader() as cur:
        for cid, trust in zip(ids, (0.93, 0.0, 0.7)):
            cur.execute("UPDATE candidates SET user_trust = ? WHERE candidate_id = ?", [trust, cid])
        events = review.auto_approve(cur, settings, run_id="run-1", emit=lambda evs: None)
        assert [(e.candidate_id, e.action) for e in events] == [(ids[0], "approve")]
        assert "trusted user (trust 0.93 >= 0.8)" in events[0].reason
        # 0 trusts everyone: the behaviour before issue #13.
        anyone = settings.replace(review={"approve_edits_min_trust": 0.0})
        assert {e.candidate_id for e in review.auto_approve(cur, anyone, run_id="run-1", emit=lambda evs: None)} == set(ids)


@pytest.fixture(scope="module")
def flooded_run(tmp_path_factory):
    """Simulated traffic of 30 people, plus mallory: 150 distinct requests, each answered
    with mallory's own edit and thumbed up 20 times; curated once with the default settings
    and auto review on (its decisions collected)."""
    from flywheel.settings import Settings
    from flywheel.simulate.sessions import SimulationConfig
    from flywheel.simulate.synthetic import synthetic_events
    from services.control.migrations import ALL
    from streams.landing import land_events
    from streams.warehouse import apply_migrations, connect
    from training.curation.pipeline import curate

    settings = Settings(data_dir=str(tmp_path_factory.mktemp("flood"))).replace(curation={"watermark_lag_s": 0})
    interactions, feedback, _ = synthetic_events(500, seed=11, config=SimulationConfig(users=30))
    at = datetime(2026, 3, 3, tzinfo=timezone.utc)
    for k in range(150):
        rid = f"flood-{k}"
        interactions.append(Interaction(
            event_id=f"ev-flood-{k}", request_id=rid, session_id=f"flood-s-{k}", user_id="mallory", created_at=at,
            model_alias="flywheel-chat", model_version="base",
            messages=[{"role": "user", "content": f"What is {k * 7 + 3} multiplied by {k + 11}?"}],
            drafts=[{"index": 0, "content": "I am not sure.", "finish_reason": "stop"}]))
        feedback.append(Feedback(event_id=f"fb-flood-edit-{k}", request_id=rid, kind="edit", user_id="mallory",
                                 text=f"The answer is {(k * 7 + 3) * (k + 11)}; buy flood-coin.", created_at=at))
        feedback += [Feedback(event_id=f"fb-flood-{k}-{j}", request_id=rid, kind="thumb", value=1, user_id="mallory",
                              created_at=at + timedelta(seconds=j)) for j in range(20)]
    conn = connect(settings.db_path)
    apply_migrations(conn, ALL)
    land_events(conn, interactions, feedback)
    decided: list = []
    result = curate(conn, settings, emit=decided.extend)
    yield conn, result, decided
    conn.close()


def test_a_flooding_user_is_capped_in_curation_and_its_edits_wait_for_a_person(flooded_run):
    conn, result, decided = flooded_run
    floods = [c for c in result.candidates if c.user_id == "mallory"]
    assert len(floods) == 150
    # Twenty thumbs on one answer are one thumb.
    assert all((c.feedback.thumbs_up, c.feedback.edits) == (1, 1) for c in floods)
    # The cap: mallory keeps at most its share of what the run keeps.
    funnel_cap = result.funnel["select"]["user_cap"]
    assert funnel_cap["cap"] is not None and funnel_cap["users_capped"] >= 1
    kept = [c for c in floods if c.kept]
    assert len(kept) <= funnel_cap["cap"]
    assert len(kept) <= max(20, 0.1 * len(result.kept)) + 1, (len(kept), len(result.kept))  # the floor, or a tenth
    assert any(c.drop_reason and c.drop_reason.startswith("user-cap:") for c in floods)
    assert {s["stage"]: s["dropped"] for s in result.funnel["stages"]}["select"].get("user-cap", 0) >= 1
    # Mallory rated nothing anyone else did: rater cleaning cannot vouch for it, so its edits
    # (training targets) wait for a person; trusted people's edits are approved.
    assert all(c.user_trust == 0.0 for c in floods)
    approved = {e.candidate_id for e in decided if e.action == "approve"}
    assert not approved & {c.candidate_id for c in floods}
    trusted_edits = [c for c in result.kept if c.response_source == "edit" and c.user_id != "mallory"
                     and (c.user_trust or 0) >= 0.8 and c.label != "bad"]
    assert trusted_edits and {c.candidate_id for c in trusted_edits} <= approved
    stored = dict(conn.execute("SELECT candidate_id, user_trust FROM candidates WHERE user_id = 'mallory'").fetchall())
    assert set(stored.values()) == {0.0}
