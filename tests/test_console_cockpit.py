"""The operator console as a cockpit (issue #15), in real Chromium over a control plane
filled with simulator traffic: three hours of synthetic sessions served by three model
versions (landed as the gateway's events), one real curation run (candidates and their
prompt vectors), evaluations with per-task-type reports, flywheel turns, a canary in
progress with its analysis, dead letters from records the landing refused, and decisions of
two reviewers. Every page is screenshotted and every chart must have drawn; the overview's
screenshot is the README's (docs/images/console-overview.png). Any JavaScript error fails.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from serving.registry import Registry
from services.control.plane import ControlPlane
from services.control.turn import RefreshRun, Step, save_run
from streams.topics import ensure_topics, topic_names
from tests.conftest import REPO, make_settings, operator_get, operator_token, query, wait_for
from tests.test_console import CHROMIUM_ARGS, chromium_path, log_in
from training.curation import review

SCREENSHOT = REPO / "docs" / "images" / "console-overview.png"
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _traffic(cur) -> None:
    """A few sessions every five minutes over the last three hours: `base` serves them at
    first, then `ft-1` (a better model), and `ft-2` is the canary of the last half hour."""
    from flywheel.simulate.synthetic import synthetic_events
    from streams.landing import land_events

    interactions, feedback = [], []
    for k in range(36):
        start = NOW - timedelta(minutes=180 - 5 * k)
        mix = [("base", 0.45, 5)] if k < 15 else [("ft-1", 0.7, 5)] if k < 30 else [("ft-1", 0.7, 3), ("ft-2", 0.8, 2)]
        for version, p_correct, n in mix:
            i, f, _ = synthetic_events(n, seed=100 + k, start=start, run_tag=f"{version}-{k}", p_correct=p_correct)
            interactions += [x.model_copy(update={"model_version": version}) for x in i]
            feedback += f
    land_events(cur, interactions, feedback)


def _report(task_types: dict[str, tuple[float, float, float | None]], candidate: str, production: str) -> dict:
    """An evaluation report as the evaluation job writes it: per task type the verifier pass
    rate of both versions and the candidate's judge win rate."""
    def fig(c, p):
        return {"candidate": c, "production": p, "delta": c - p, "ci": [c - p - 0.1, c - p + 0.1]}

    types = [{"task_type": t, "n": 20, "loss": fig(1.0, 1.1), "pass_rate": fig(c, p), "usability": fig(c, p),
              "judge": {"win_rate": w, "wins": 10, "ties": 2, "losses": 8} if w is not None else None,
              "verdict": "better", "reasons": []} for t, (c, p, w) in task_types.items()]
    mean = lambda side: sum(t["pass_rate"][side] for t in types) / len(types)  # noqa: E731
    return {"candidate": candidate, "production": production, "dataset": "ds-test", "types": types,
            "created_at": datetime.now(timezone.utc).isoformat(), "overall": {"n": 40, "pass_rate": fig(mean("candidate"), mean("production"))},
            "general": {}, "samples": [], "gate": {"passed": True, "reasons": ["no task type worse"]}}


def _versions_and_rollout(plane, tmp: Path) -> None:
    """ft-1 evaluated against base and promoted; ft-2 evaluated against ft-1 and on canary."""
    from training.evaluation.evaluate import record_evaluation

    alias = plane.settings.model.alias
    figures = {"ft-1": ("base", {"data-viz/chart-config": (0.55, 0.30, 0.62), "reasoning/math": (0.70, 0.65, 0.52)}),
               "ft-2": ("ft-1", {"data-viz/chart-config": (0.72, 0.55, 0.58), "reasoning/math": (0.72, 0.70, 0.50)})}
    for version, (production, types) in figures.items():
        with plane.reader() as cur:
            reg = Registry(cur, models_dir=plane.settings.data_path / "models", base_model="SmolLM2-135M-Instruct",
                           alias=alias, base_model_dir=lambda: tmp, check=lambda base, adapter: None)
            src = tmp / f"adapter-{version}"
            src.mkdir()
            (src / "adapter_config.json").write_text("{}")
            reg.register(version, src, parent=production, dataset=None)
            folder = plane.settings.data_path / "evals" / f"{version}-vs-{production}"
            folder.mkdir(parents=True)
            report = _report(types, version, production)
            (folder / "report.json").write_text(json.dumps(report))
            record_evaluation(cur, report, folder, source="job", recorded_by="test")
        plane.rollouts.start(alias, version)
        if version == "ft-1":
            plane.rollouts.act(alias, "promote", reason="the canary held")
    plane.rollouts.tick(now=datetime.now(timezone.utc) + timedelta(hours=1))  # one analysis of the canary


def _turns(plane) -> None:
    def step(name, took, status="done", detail=""):
        return Step(name, status, detail, started_at=(NOW - timedelta(minutes=40)).isoformat(),
                    finished_at=NOW.isoformat(), duration_s=took)

    older = RefreshRun("ref-older", "stopped", [step("mine", 12.0), step("dataset", 3.1, "done", "ds-a")],
                       reason="no new data since the last trained dataset")
    last = RefreshRun("ref-last", "finished", [step("mine", 41.5), step("dataset", 6.2), step("train", 512.0),
                                               step("evaluate", 188.0), step("canary", 0.4)],
                      dataset="ds-test", candidate="ft-2", passed=True, reason="ft-2 passed the gate: canary started")
    with plane.reader() as cur:
        save_run(cur, older)
        save_run(cur, last)


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    from training.curation.pipeline import curate

    tmp = tmp_path_factory.mktemp("cockpit")
    settings = make_settings(tmp, broker.bootstrap, curation={"watermark_lag_s": 0}, review={"auto_approve": False})
    ensure_topics(settings.bootstrap, list(topic_names(settings).values()), settings.kafka.partitions)
    plane = ControlPlane(settings, serve_api=True).start(scheduler=False)
    try:
        with plane.reader() as cur:
            _traffic(cur)
            curate(cur, settings)
        _versions_and_rollout(plane, tmp)
        _turns(plane)
        # Records the landing refuses become dead letters, with the reason.
        topic = settings.topic("interactions")
        plane.producer.emit_many([(topic, f"k{n}", b'{"type": "interaction", "oops": ' + str(n).encode() + b"}")
                                  for n in range(3)] + [(topic, "k9", b"not json at all")])
        wait_for(lambda: query(plane, "SELECT count(*) FROM dead_letters")[0][0] >= 4, timeout=60, what="dead letters")
        yield plane, f"http://{settings.control.host}:{settings.control.port}"
    finally:
        plane.stop(drain=False)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, stack):
    plane, url = stack
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    log_in(pg, url, operator_token(plane.settings))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def emit_reviews(plane, ids: list[str], action: str, reviewer: str, **kw) -> None:
    events = review.make_reviews(ids, action, reviewer=reviewer, source="api", **kw)
    plane.producer.emit_many([(plane.settings.topic("reviews"), e.candidate_id, e) for e in events])
    batch = events[0].event_id.split("-")[1]
    wait_for(lambda: query(plane, "SELECT count(*) FROM review_decisions WHERE starts_with(event_id, ?)",
                           [f"rv-{batch}-"])[0][0] == len(events), timeout=30, what="reviews landed")


def states(plane, ids) -> dict[str, str]:
    with plane.reader() as cur:
        return review.review_state(cur, ids)


def charts_drawn(pg) -> list[str]:
    """The titles of the page's charts, each asserted drawn: an SVG with a line, point or bar
    that has a size on the screen."""
    titles = []
    figures = pg.locator("figure.chart")
    for k in range(figures.count()):
        fig = figures.nth(k)
        title = fig.locator("figcaption").inner_text()
        assert "empty" not in (fig.get_attribute("class") or ""), f"chart {title!r} has nothing to draw"
        marks = fig.locator("svg .line, svg .point, svg .bar")
        assert marks.count() > 0, f"chart {title!r} drew nothing"
        box = fig.locator("svg").bounding_box()
        assert box and box["width"] > 100 and box["height"] > 20, title
        titles.append(title)
    return titles


def test_every_page_draws_its_charts_from_simulated_traffic(stack, page, tmp_path):
    plane, url = stack
    page.goto(f"{url}/console/?range=6h")
    drawn = charts_drawn(page)
    assert {"Requests per minute", "Thumbs up per request", "Thumbs down per request", "Edits per request",
            "Regenerations per request", "Latency (p95 solid, p50 dashed)", "Events per minute"} <= set(drawn)
    assert {"all types", "data-viz/chart-config", "reasoning/math"} <= set(drawn)  # quality over versions
    assert any(t.startswith("Last turn ref-last") for t in drawn)
    # one line per version on the traffic chart, the versions in the legend
    traffic = page.locator("#chart-traffic svg")
    assert traffic.locator("polyline").count() == 3 and all(v in traffic.text_content() for v in ("base", "ft-1", "ft-2"))
    totals = page.locator("#version-totals").inner_text()
    assert all(v in totals for v in ("base", "ft-1", "ft-2"))
    # quality: base -> ft-1 -> ft-2, the chart-config line rises
    assert "base → ft-1 → ft-2" in page.locator("#quality").inner_text()
    points = page.locator("#quality figure:has(figcaption:text-is('data-viz/chart-config')) circle title")
    assert [t for t in points.all_text_contents() if t.startswith("verifier pass")] == [
        "verifier pass · base: 30%", "verifier pass · ft-1: 55%", "verifier pass · ft-2: 72%"]
    # the flywheel's state: the last turn, why it ended, the next turn, the canary and its analysis
    assert "ft-2 passed the gate" in page.locator("#turn-outcome").inner_text()
    assert "none scheduled" in page.locator("#next-turn").inner_text()
    card = page.locator(".card[data-alias]")
    assert "rollout of ft-2 over ft-1" in card.locator(".rollout").inner_text()
    assert "canary 5%" in card.inner_text() and card.locator(".meter span").count() == 1
    assert card.locator("table.analysis tr").count() > 1  # the analysis' checks
    # data health
    health = page.locator("#data-health").inner_text()
    assert "landing delay" in health and "not reachable" in health  # no gateway runs in this test
    assert page.locator("#dead-letter-count").inner_text().startswith("4 ")
    assert "landing_offsets" not in page.locator("main").inner_text()  # internal tables live on Diagnostics
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 20_000

    # the time-range control
    page.get_by_role("link", name="1h", exact=True).click()
    page.wait_for_url(re.compile(r"range=1h"))
    assert page.locator("#range a.active").inner_text() == "1h"
    assert "points every 1 min" in page.locator("#span").inner_text()
    assert page.locator("#chart-traffic svg .point").count() > 0
    page.get_by_role("link", name="all", exact=True).click()
    page.wait_for_url(re.compile(r"range=all"))
    charts_drawn(page)

    shots = {"diagnostics": "/console/diagnostics", "dead-letters": "/console/dead-letters",
             "review": "/console/review", "desk": "/console/review/desk", "conflicts": "/console/review/conflicts",
             "conversations": "/console/conversations"}
    edited = query(plane, "SELECT candidate_id FROM candidates WHERE response_source = 'edit' AND status = 'kept' "
                          "ORDER BY candidate_id LIMIT 1")[0][0]
    shots["candidate"] = f"/console/review/{edited}"  # with the user's correction and the diff
    for name, path in shots.items():
        page.goto(url + path)
        charts_drawn(page)
        page.screenshot(path=str(tmp_path / f"console-{name}.png"), full_page=True)
    assert "landing_offsets" in page.goto(url + "/console/diagnostics").text()
    page.goto(url + "/console/conversations")
    page.locator("#sessions tr[data-session] a").first.click()
    page.wait_for_url(re.compile(r"/console/conversations/"))
    assert charts_drawn(page) == ["Latency per request"]
    page.screenshot(path=str(tmp_path / "console-session.png"), full_page=True)


def test_bad_range_and_unknown_session_are_answered_clearly(stack):
    plane, url = stack

    def get(path):
        return operator_get(plane, url, path)

    status, body = get("/console/?range=2y")
    assert status == 400 and "unknown range" in body
    assert get("/console/conversations/nope")[0] == 404
    assert get("/console/conversations?limit=x")[0] == 400
    assert get("/console/conversations?label=great")[0] == 400
    assert get("/console/review/desk?queue=mine")[0] == 400
    assert get("/console/dead-letters?limit=0")[0] == 400
    status, body = get("/api/review/conflicts")
    assert status == 200 and "agreement" in json.loads(body)


def current_card(pg) -> str:
    return pg.locator("#card-holder .review-card").get_attribute("data-candidate")


def wait_card(pg, candidate_id: str) -> None:
    pg.wait_for_function("id => (document.querySelector('#card-holder .review-card') || {dataset: {}}).dataset.candidate === id",
                         arg=candidate_id)


def decisions_of(plane, candidate_id: str) -> list[tuple]:
    return query(plane, "SELECT action, reviewer, reason, edited_response FROM review_decisions WHERE candidate_id = ? "
                        "ORDER BY created_at, landed_at, kafka_offset", [candidate_id])


def test_the_review_desk_is_driven_by_the_keyboard(stack, page):
    """a, r, e, j, k, u, s and A on the desk: each decision goes out at once, the next card is
    already loaded, undo restores the state before, find-similar decides a group."""
    plane, url = stack
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{url}/console/review/desk?task_type=data-viz")
    shortcuts = page.locator("#shortcuts").inner_text()
    for word in ("approve", "reject", "edit", "next / previous", "undo", "find similar"):
        assert word in shortcuts, word
    ids = json.loads(page.locator("#desk").get_attribute("data-ids"))
    assert len(ids) >= 8 and current_card(page) == ids[0]
    # the card shows what a reviewer needs: the verifier's verdict and the task type's guidelines
    assert page.locator("#verdicts li").count() >= 1 and "chartType fits the question" in page.locator("#guidelines").inner_text()
    wait_for(lambda: any(u.endswith(f"/console/review/{ids[1]}/card") for u in requested), timeout=10,
             what="the next card loaded ahead")

    page.keyboard.press("a")  # approve: the next card shows without waiting for the answer
    wait_card(page, ids[1])
    page.keyboard.press("r")
    wait_card(page, ids[2])
    page.keyboard.press("u")  # undo the reject: back to that candidate, pending again
    wait_card(page, ids[1])
    page.keyboard.press("e")
    assert page.locator("#desk-edit").is_visible()
    page.fill("#desk-edited", '{"chartType": "TABLE_DETAIL"}')
    page.keyboard.press("Control+Enter")
    wait_card(page, ids[2])
    page.keyboard.press("k")
    wait_card(page, ids[1])
    page.keyboard.press("j")
    wait_card(page, ids[2])
    wait_for(lambda: states(plane, ids[:2]) == {ids[0]: "approved", ids[1]: "edited"}, timeout=30, what="decisions landed")
    assert [d[0] for d in decisions_of(plane, ids[1])] == ["reject", "reset", "edit"]
    assert decisions_of(plane, ids[1])[-1][3] == '{"chartType": "TABLE_DETAIL"}'
    page.wait_for_function("document.querySelectorAll('#desk-log li.ok').length >= 4")  # the log says each landed
    assert "undo reject" in page.locator("#desk-log").inner_text()

    # find similar (s), tick two pending ones, decide the group with this one (A)
    page.keyboard.press("s")
    page.wait_for_selector("#card-holder .similar-list li")
    boxes = page.locator("#card-holder .similar-list input[name=similar]")
    pending = [boxes.nth(k) for k in range(boxes.count()) if boxes.nth(k).get_attribute("data-state") == "pending"]
    assert len(pending) >= 2
    for k in range(boxes.count()):
        boxes.nth(k).set_checked(False)
    group = [ids[2]] + [b.get_attribute("value") for b in pending[:2]]
    for b in pending[:2]:
        b.set_checked(True)
    page.keyboard.press("Shift+A")
    page.wait_for_function("id => (document.querySelector('#card-holder .review-card') || {dataset: {}}).dataset.candidate !== id",
                           arg=ids[2])
    wait_for(lambda: set(states(plane, group).values()) == {"approved"}, timeout=30, what="the group approved")
    assert {d[1] for cid in group for d in decisions_of(plane, cid)} == {"local-admin"}


def test_a_viewer_on_the_desk_is_refused_and_stays_on_the_candidate(stack, browser):
    from services.control.operators import create_operator

    plane, url = stack
    _, token = create_operator(plane.settings, "viewer", "vera")
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        log_in(pg, url, token)
        pg.goto(f"{url}/console/review/desk?task_type=writing")
        first = current_card(pg)
        pg.keyboard.press("a")
        pg.wait_for_function("document.getElementById('flash').className === 'error'")
        assert "needs the reviewer role" in pg.locator("#flash").inner_text()
        wait_card(pg, first)
        assert "refused" in pg.locator("#desk-log").inner_text()
        assert states(plane, [first]) == {first: "pending"}
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_two_reviewers_agreement_conflicts_and_second_opinions(stack, page):
    plane, url = stack
    with plane.reader() as cur:
        a, b, c = review.select_ids(cur, review.ReviewFilter(state="pending", task_type="reasoning", limit=3))
    emit_reviews(plane, [a, b, c], "approve", "ana")
    emit_reviews(plane, [a], "reject", "bob", reason="the number is wrong")
    emit_reviews(plane, [b], "edit", "bob", edited_response="42")  # an edit keeps the answer too: agreement

    page.goto(f"{url}/console/review")
    assert "agree on 1 of 2" in page.locator("#agreement").inner_text()
    page.get_by_role("link", name=re.compile(r"^Conflicts")).click()
    rows = page.locator("#conflicts tr[data-candidate]")
    assert rows.count() == 1 and rows.first.get_attribute("data-candidate") == a
    assert "ana: approve" in rows.first.inner_text() and "bob: reject" in rows.first.inner_text()
    page.goto(f"{url}/console/review/{a}")
    assert "reviewers disagree" in page.locator(".card-head").inner_text()
    page.goto(f"{url}/console/review/{b}")
    assert "reviewers agree" in page.locator(".card-head").inner_text()

    # a second opinion: carl sees what exactly one other person decided (c), ana does not see her own
    page.fill("#reviewer", "carl")
    page.dispatch_event("#reviewer", "change")
    page.goto(f"{url}/console/review")
    page.get_by_role("link", name="Second opinions").click()
    assert c in json.loads(page.locator("#desk").get_attribute("data-ids"))
    page.goto(f"{url}/console/review/desk?queue=second&reviewer=ana")
    assert c not in json.loads(page.locator("#desk").get_attribute("data-ids"))

    # settle the conflict on the desk: the decision's reason says so, and the queue is empty after
    page.goto(f"{url}/console/review/conflicts")
    page.get_by_role("link", name=re.compile("Settle them")).click()
    wait_card(page, a)
    page.keyboard.press("r")
    page.wait_for_selector("#desk-done")
    wait_for(lambda: decisions_of(plane, a)[-1][1] == "carl", timeout=30, what="the settling decision")
    assert states(plane, [a]) == {a: "rejected"}
    assert decisions_of(plane, a)[-1][1:3] == ("carl", "conflict settled: reject on the review desk")
    page.goto(f"{url}/console/review/conflicts")
    assert page.locator("#conflicts tr[data-candidate]").count() == 0 and "1 conflicts settled" in page.locator("#agreement").inner_text()


def test_the_review_card_shows_the_correction_diff_verifier_teacher_and_guidelines(stack, page):
    from training.labeling.teacher import TeacherAudit

    from training.labeling.verify import verify

    plane, url = stack
    with plane.reader() as cur:  # a user's correction of an answer the verifier fails
        cid, messages, response, reasons = next(
            (cid, m, r, v.reasons) for cid, m, r, v in (
                (cid, m, r, verify("data-viz/chart-config", json.loads(m), rejected)) for cid, m, r, rejected in cur.execute(
                    "SELECT candidate_id, messages, response, rejected_response FROM candidates WHERE response_source = "
                    "'edit' AND status = 'kept' AND task_type = 'data-viz/chart-config' ORDER BY candidate_id").fetchall())
            if not v.passed)
        TeacherAudit(cur).record({"call_id": "tc-1", "created_at": datetime.now(timezone.utc), "kind": "local",
                                  "model": "SmolLM2", "task_type": "data-viz/chart-config", "prompt": json.loads(messages),
                                  "samples": ["x", response], "verdicts": [{"passed": False, "score": 0, "reasons": ["bad"]},
                                                                           {"passed": True, "score": 1, "reasons": []}],
                                  "chosen": 1, "answer": response, "passed": True, "prompt_tokens": 10,
                                  "completion_tokens": 10, "latency_ms": 5.0, "error": None})
    page.goto(f"{url}/console/review/{cid}")
    assert page.locator("#user-correction").inner_text() == response
    diff = page.locator("#diff")
    assert diff.locator("del").count() > 0 and diff.locator("ins").count() > 0
    verdicts = page.locator("#verdicts").inner_text()
    assert re.search(r"fail\s+model answer", verdicts) and re.search(r"pass\s+correction", verdicts)
    assert reasons and all(r in verdicts for r in reasons)  # the verifier's reasons, word for word
    assert "passed the verifiers" in page.locator("#teacher").inner_text()
    assert page.locator("#teacher pre").inner_text() == response
    assert "Check:" in page.locator("#guidelines").inner_text()
    assert page.locator("#asked").inner_text().startswith("Asked:")

    # find similar from the candidate's page: a group decision, then the page reloads once it landed
    page.get_by_role("button", name="Find similar (s)").click()
    page.wait_for_selector(".similar-list li")
    pending = page.locator(".similar-list input[name=similar][data-state=pending]")
    for k in range(page.locator(".similar-list input[name=similar]").count()):
        page.locator(".similar-list input[name=similar]").nth(k).set_checked(False)
    other = pending.first.get_attribute("value")
    pending.first.set_checked(True)
    page.fill("#reason", "same request, same fix")
    with page.expect_navigation(timeout=30_000):
        page.get_by_role("button", name="Reject this and the ticked ones (R)").click()
    assert states(plane, [cid, other]) == {cid: "rejected", other: "rejected"}
    assert decisions_of(plane, other)[-1][2] == "same request, same fix"


def test_conversations_search_and_a_session_as_a_trace(stack, page):
    plane, url = stack
    page.goto(f"{url}/console/conversations")
    assert page.locator("#sessions tr[data-session]").count() == 50  # a page of them, latest first

    def shown() -> set[str]:
        return {r.get_attribute("data-session") for r in page.locator("#sessions tr[data-session]").all()}

    def search(**fields) -> set[str]:
        page.goto(f"{url}/console/conversations")
        for name, value in fields.items():
            if page.locator(f"#session-search select[name={name}]").count():
                page.select_option(f"#session-search select[name={name}]", value)
            else:
                page.fill(f"#session-search input[name={name}]", value)
        with page.expect_navigation():
            page.get_by_role("button", name="Search").click()
        return shown()

    assert search(version="ft-2") == {s for (s,) in query(plane, "SELECT DISTINCT session_id FROM interactions "
                                                                 "WHERE model_version = 'ft-2'")}
    user = query(plane, "SELECT user_id FROM interactions GROUP BY 1 ORDER BY count(DISTINCT session_id) DESC LIMIT 1")[0][0]
    assert search(user=user) == {s for (s,) in query(plane, "SELECT DISTINCT session_id FROM interactions WHERE user_id = ?",
                                                     [user])}
    by_text = search(q="profit margin")
    assert by_text and by_text <= {s for (s,) in query(plane, "SELECT session_id FROM interactions WHERE "
                                                              "CAST(messages AS VARCHAR) ILIKE '%profit margin%' OR "
                                                              "CAST(drafts AS VARCHAR) ILIKE '%profit margin%'")}
    typed = search(task_type="reasoning/math", label="good")
    assert typed == {s for (s,) in query(plane, "SELECT DISTINCT session_id FROM candidates WHERE task_type = "
                                                "'reasoning/math' AND label = 'good'")} and typed

    session = query(plane, "SELECT i.session_id FROM feedback f JOIN interactions i USING (request_id) "
                           "WHERE f.kind = 'edit' ORDER BY i.session_id LIMIT 1")[0][0]
    page.goto(f"{url}/console/conversations/{session}")
    trace = page.locator("#trace > li")
    assert trace.count() == query(plane, "SELECT count(*) FROM interactions WHERE session_id = ?", [session])[0][0]
    assert page.locator("#trace .fb-edit").count() >= 1 and page.locator("#trace pre.correction").count() >= 1
    assert charts_drawn(page) == ["Latency per request"]
    assert " ms" in trace.first.locator(".span-head").inner_text()


def test_dead_letters_are_browsable_by_reason(stack, page):
    plane, url = stack
    page.goto(f"{url}/console/")
    page.locator("#dead-letter-count").click()
    page.wait_for_url(re.compile(r"/console/dead-letters"))
    assert page.locator("#dead-letters tr").count() == 5  # header + 4
    page.fill("input[name=reason]", "Invalid JSON")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    rows = page.locator("#dead-letters tr:has(td)")
    assert rows.count() == 1 and "Invalid JSON" in rows.first.locator(".reason").inner_text()
    rows.first.locator("summary").click()
    assert "not json at all" in rows.first.locator("details pre").inner_text()
