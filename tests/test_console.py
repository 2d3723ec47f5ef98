"""The operator console in real Chromium (Playwright driving Debian's chromium): pages
served by a running control plane behind its login (the local admin token pasted into the
login page), actions that go through its JSON API with the session's CSRF token, review
decisions through the real broker into DuckDB."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from serving.registry import Registry
from services.control.plane import ControlPlane
from tests.conftest import operator_get, operator_token, query, record_gate, seed_candidates, wait_for
from training.curation import review

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    exe = os.environ.get("FLYWHEEL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.fail("no Chromium: `make install` installs Debian's chromium (apt); or point FLYWHEEL_CHROMIUM at one")
    return exe


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def console(settings):
    plane = ControlPlane(settings, serve_api=True).start(scheduler=False)
    yield plane, f"http://{settings.control.host}:{settings.control.port}"
    plane.stop(drain=False)


def log_in(pg, url: str, token: str) -> None:
    pg.goto(f"{url}/console/login")
    pg.fill("#token", token)
    with pg.expect_navigation():
        pg.get_by_role("button", name="Log in").click()


@pytest.fixture
def page(browser, console):
    """A logged-in page (the local admin token): any JavaScript error fails the test."""
    plane, url = console
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    log_in(pg, url, operator_token(plane.settings))
    assert pg.url.endswith("/console/"), pg.url
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _state_of(plane) -> dict[str, str]:
    with plane.reader() as cur:
        return review.review_state(cur)


def test_the_console_needs_a_login_and_a_role_for_each_action(console, browser):
    """Not logged in: every page sends you to the login page and back after. A viewer sees
    the queue, but the API refuses a viewer's decision and the page says why. Log out ends it."""
    from services.control.operators import create_operator

    plane, url = console
    ids = seed_candidates(plane, [{"task_type": "reasoning/math"}])
    _, token = create_operator(plane.settings, "viewer", "vic")
    context = browser.new_context()
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(f"{url}/console/review")
        assert "/console/login" in pg.url
        pg.fill("#token", "fwop-not-a-token")
        with pg.expect_navigation():
            pg.get_by_role("button", name="Log in").click()
        assert "that token is not valid" in pg.locator("#login-error").inner_text()
        pg.fill("#token", token)
        with pg.expect_navigation():
            pg.get_by_role("button", name="Log in").click()
        assert pg.url.endswith("/console/review") and "vic · viewer" in pg.locator("#operator").inner_text()
        pg.check(f"input[name=cid][value='{ids[0]}']")
        pg.get_by_role("button", name="Approve selected").click()
        pg.wait_for_function("document.getElementById('flash').className === 'error'")
        assert "needs the reviewer role" in pg.locator("#flash").inner_text()
        assert _state_of(plane) == {ids[0]: "pending"}
        with pg.expect_navigation():
            pg.get_by_role("button", name="Log out").click()
        assert "/console/login" in pg.url
        pg.goto(f"{url}/console/")
        assert "/console/login" in pg.url
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_review_queue_approves_in_bulk_and_edits_one(console, page):
    plane, url = console
    ids = seed_candidates(plane, [{"task_type": "reasoning/math", "label": "good"}, {"task_type": "reasoning/math"},
                                  {"task_type": "chat/chitchat", "response": "meh"}])
    page.goto(f"{url}/console/review")
    rows = page.locator("#queue tr[data-candidate]")
    assert rows.count() == 3 and "pending 3" in page.locator("#counts").inner_text()

    page.get_by_role("button", name="Approve selected").click()  # nothing selected: refused on the page
    assert "select candidates first" in page.locator("#flash").inner_text()

    page.fill("#reviewer", "ana")
    page.dispatch_event("#reviewer", "change")
    for cid in ids[:2]:
        page.check(f"input[name=cid][value='{cid}']")
    page.fill("#reason", "checked the maths")
    with page.expect_navigation(timeout=30_000):  # the page reloads once the batch has landed
        page.get_by_role("button", name="Approve selected").click()
    assert page.locator("#queue tr[data-candidate]").count() == 1  # only the untouched one is pending
    assert _state_of(plane) == {ids[0]: "approved", ids[1]: "approved", ids[2]: "pending"}
    decided = query(plane, "SELECT reviewer, reason, source FROM review_decisions ORDER BY candidate_id")
    assert decided == [("ana", "checked the maths", "api")] * 2  # the reviewer name came from the page

    page.click(f"#queue tr[data-candidate='{ids[2]}'] a")
    assert page.locator("#model-answer").inner_text() == "meh"
    page.fill("#edited", "")  # an empty edit is refused by the API, and the page says why
    page.get_by_role("button", name="Save edit").click()
    page.wait_for_function("document.getElementById('flash').className === 'error'")
    assert "needs the edited_response" in page.locator("#flash").inner_text()
    page.fill("#edited", "A much better answer.")
    with page.expect_navigation(timeout=30_000):
        page.get_by_role("button", name="Save edit").click()
    assert page.locator("#state").inner_text() == "edited"
    assert "ana" in page.locator("#decisions").inner_text()
    with plane.reader() as cur:  # what the dataset builder reads next
        approved = {r["candidate_id"]: r["response"] for r in review.approved_candidates(cur)}
    assert approved == {ids[0]: "answer 0", ids[1]: "answer 1", ids[2]: "A much better answer."}


def test_overview_drives_a_rollout(console, page, tmp_path):
    plane, url = console
    alias = plane.settings.model.alias
    with plane.reader() as cur:  # a candidate version (adapter check skipped: this test is about the page)
        reg = Registry(cur, models_dir=plane.settings.data_path / "models", base_model="SmolLM2-135M-Instruct",
                       alias=alias, base_model_dir=lambda: tmp_path, check=lambda base, adapter: None)
        src = tmp_path / "adapter"
        src.mkdir()
        (src / "adapter_config.json").write_text("{}")
        reg.register("cand-1", src)
    record_gate(plane, "cand-1")  # its evaluation passed the gate
    plane.rollouts.start(alias, "cand-1")

    page.goto(f"{url}/")  # the root redirects to the console
    assert page.url.endswith("/console/")
    assert "cand-1" in page.locator("#models").inner_text()
    card = page.locator(f".card[data-alias='{alias}']")
    assert "progressing" in card.locator(".rollout").inner_text()
    card.locator(".reason").fill("holding for the weekend")
    with page.expect_navigation():
        card.get_by_role("button", name="pause").click()
    card = page.locator(f".card[data-alias='{alias}']")
    assert "paused" in card.locator(".rollout").inner_text() and "holding for the weekend" in card.inner_text()
    with page.expect_navigation():
        page.locator(f".card[data-alias='{alias}']").get_by_role("button", name="rollback").click()
    card = page.locator(f".card[data-alias='{alias}']")
    assert "rolled_back" in card.locator(".rollout").inner_text()
    assert "base 100%" in card.inner_text()  # all traffic back on production
    assert plane.rollouts.status(alias)["status"] == "rolled_back"
    assert query(plane, "SELECT status FROM model_versions WHERE version = 'cand-1'") == [("rolled_back",)]
    card.get_by_role("button", name="pause").click()  # a finished rollout refuses, and the page says so
    page.wait_for_function("document.getElementById('flash').className === 'error'")
    assert "cannot pause the rollout of 'cand-1'" in page.locator("#flash").inner_text()


def test_evaluation_report_opens_from_the_list_with_its_charts(console, page, tmp_path):
    from training.evaluation.evaluate import record_evaluation, render_html

    plane, url = console
    report = {"candidate": "cand-1", "production": "base", "dataset": "ds-1", "created_at": "2026-11-26T00:00:00+00:00",
              "overall": {"n": 2}, "general": {}, "samples": [], "gate": {"passed": False, "reasons": ["math worse"]},
              "types": [{"task_type": "reasoning/math", "n": 2, "loss": {"delta": 0.2, "ci": [0.1, 0.3]},
                         "pass_rate": {"candidate": 0.5, "production": 1.0, "delta": -0.5, "ci": [-1, 0]},
                         "usability": {"delta": -0.1, "ci": [-0.2, 0]}, "judge": None, "verdict": "worse",
                         "reasons": ["math worse"]}]}
    folder = tmp_path / "eval-1"
    folder.mkdir()
    (folder / "report.html").write_text(render_html(report))
    with plane.reader() as cur:
        record_evaluation(cur, report, folder)

    page.goto(f"{url}/console/evaluations")
    table = page.locator("#evaluations")
    assert "fail" in table.inner_text() and "math worse" in table.inner_text()
    page.get_by_role("link", name="eval-1").click()
    page.wait_for_load_state()
    assert "FAIL" in page.content()
    box = page.locator("svg").first.bounding_box()  # the charts are drawn, not just present
    assert box and box["width"] > 100 and box["height"] > 20


def test_datasets_page_builds_a_version_or_says_why_not(console, page):
    plane, url = console
    page.goto(f"{url}/console/datasets")
    page.get_by_role("button", name="Build a dataset now").click()  # nothing approved yet
    page.wait_for_function("document.getElementById('flash').className === 'error'")
    assert "nothing to train on" in page.locator("#flash").inner_text()

    ids = seed_candidates(plane, [{"label": "good", "label_confidence": 0.9, "response": f"a fine answer {k}"}
                                  for k in range(4)])
    events = review.make_reviews(ids, "approve", reviewer="ana", source="api")
    plane.producer.emit_many([(plane.settings.topic("reviews"), e.candidate_id, e) for e in events])
    wait_for(lambda: set(_state_of(plane).values()) == {"approved"}, timeout=30, what="approvals landed")
    with page.expect_navigation(timeout=60_000):
        page.get_by_role("button", name="Build a dataset now").click()
    version = page.locator("#datasets tr td a").first.inner_text()
    assert version.startswith("ds-") and query(plane, "SELECT version FROM datasets") == [(version,)]
    page.get_by_role("link", name=version).click()
    assert version in page.locator("h1").inner_text() and "sft" in page.content()


def test_pages_answer_bad_input_and_empty_state_clearly(console):
    plane, url = console

    def get(path: str) -> tuple[int, str]:
        return operator_get(plane, url, path)

    status, body = get("/console/metrics?minutes=abc")
    assert status == 400 and "minutes must be a number" in body
    assert get("/console/review/nope")[0] == 404
    assert get("/console/datasets/nope")[0] == 404
    assert get("/console/evaluations/nope/report")[0] == 404
    assert get("/console/review?limit=x")[0] == 400
    status, body = get("/console/metrics")
    assert status == 200 and "no windows in this span" in body
    for path in ("/console/", "/console/datasets", "/console/evaluations", "/console/review?state=all"):
        assert get(path)[0] == 200, path

    ids = seed_candidates(plane, [{}, {}, {}])  # paging keeps the filter
    status, body = get("/console/review?state=all&limit=2")
    assert status == 200 and ids[0] in body and ids[2] not in body
    link = re.search(r'href="\?([^"]+)">next 2', body).group(1).replace("&amp;", "&")
    assert "state=all" in link and "offset=2" in link
    status, body = get("/console/review?" + link)
    assert status == 200 and ids[2] in body and ids[0] not in body

    with plane.reader() as cur:  # a panel that cannot be read: the page still renders, and says why
        cur.execute("DROP TABLE refresh_runs")
    status, body = get("/console/")
    assert status == 200 and "cannot read flywheel turns" in body and "refresh_runs" in body
