"""Console routes: login and logout, overview, diagnostics and dead letters, datasets,
evaluations (with their report pages), live metrics; the review pages are in
`services.console.review_pages`, the conversations in `services.console.conversation_pages`.
Read-only here, each panel one call into the reading modules (overview, health, reviewing,
conversations); actions go through the JSON API. Every page needs a login
(services/control/auth.py): a token pasted into the login page becomes a signed session
cookie."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

from flask import Blueprint, Flask, abort, g, redirect, render_template, request, send_file, session, url_for

from serving.registry import RegistryError
from services.control.auth import csrf_ok, public, requires
from services.control.status import landed_status

log = logging.getLogger(__name__)


def _safe(fn, what: str, default=None):
    """A panel that cannot be read (e.g. a table a later migration adds) shows as empty, and
    the page says why in its problems box; the error is logged too."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - an empty panel with the reason beats a 500 page
        log.warning("console: cannot read %s: %s", what, e)
        g.setdefault("console_problems", []).append(f"cannot read {what}: {e}")
        return [] if default is None else default


def _short(text, n: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def init_app(app: Flask, settings, plane) -> None:
    from services.console import conversation_pages, health, review_pages
    from services.console import overview as ov
    from services.console.charts import Colours
    from training.curation.pipeline import list_runs as curation_runs
    from training.datasets.builder import get_dataset, list_datasets
    from training.errors import DatasetError
    from training.evaluation.evaluate import list_evaluations
    from flywheel.humanize import format_duration
    from services.control.turn import list_runs as refresh_runs
    from streams.live_metrics import metrics_filters, read_windows

    bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                   static_folder="static", static_url_path="/static")
    bp.add_app_template_filter(_short, "short")
    bp.add_app_template_filter(format_duration, "duration")
    bp.add_app_template_filter(lambda w: f"{float(w):g}%", "pct")
    bp.add_app_template_filter(lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str), "pretty")

    def page(template: str, **context):
        return render_template(f"console/{template}", nav=request.endpoint, problems=g.get("console_problems", []),
                               **context)

    def _next(target: str | None) -> str:
        """Where to go after logging in: a console page of this site, nothing else."""
        target = target or "/console/"
        return target if target.startswith("/console") and not target.startswith("//") else "/console/"

    @bp.get("/login")
    @public
    def login():
        return page("login.html", error=None, next=_next(request.args.get("next")))

    @bp.post("/login")
    @public
    def login_post():
        """A token from the form becomes a session. The form carries the CSRF token the
        login page put in the session, so no other site can log a browser in."""
        nxt = _next(request.form.get("next"))
        if not csrf_ok():
            return page("login.html", error="the login form expired: reload the page and try again", next=nxt), 403
        op = app.extensions["operators"].verify((request.form.get("token") or "").strip())
        if op is None:
            log.warning("console login refused from %s", request.remote_addr)
            return page("login.html", error="that token is not valid", next=nxt), 401
        session.clear()
        session.permanent = True
        session["op"] = op.id
        session["csrf"] = secrets.token_urlsafe(32)
        g.operator, g.operator_via = op, "login"
        return redirect(nxt)

    @bp.post("/logout")
    @requires("viewer")
    def logout():
        session.clear()
        return redirect(url_for("console.login"))

    @bp.get("/")
    def overview():
        try:
            with plane.reader() as cur:
                span = ov.span_of(cur, request.args.get("range"))
        except ValueError as e:
            return page("message.html", title="Bad time range", message=str(e)), 400
        colour = Colours()
        with plane.reader() as cur:
            registry = plane.registry(cur)
            models = [m.to_dict() for m in registry.list()]
            routing = registry.routing_table().to_dict()
            series = _safe(lambda: ov.traffic(cur, span), "traffic", {})
            lines = _safe(lambda: ov.evaluation_lines(cur), "evaluations", {"versions": [], "types": {}})
            mined = _safe(lambda: curation_runs(cur, 5), "curation runs")
            turns = _safe(lambda: refresh_runs(cur, 5), "flywheel turns")
            rates = _safe(lambda: health.events_per_minute(cur, span), "events per minute", {})
            delay = _safe(lambda: health.landing_delay(cur), "landing delay", {})
            dead = _safe(lambda: health.dead_letter_summary(cur), "dead letters", {"total": 0, "reasons": []})
            gateway = health.probe_gateway(settings.gateway_url)
            if gateway["reachable"]:
                gateway["lag"] = _safe(lambda: health.landing_lag(cur, gateway["acked_offsets"]), "landing lag", 0)
        for m in models:  # a version keeps its colour on every chart of the page
            colour(m["version"])
        rollouts = {}
        for name in routing["routes"]:
            try:
                rollouts[name] = plane.rollouts.status(name)
            except RegistryError:
                rollouts[name] = None
        return page("overview.html", span=span, ranges=list(ov.RANGES), models=models, routing=routing,
                    rollouts=rollouts, steps=plane.rollouts.policy.steps, curation=mined, refresh=turns,
                    totals=ov.traffic_totals(series), charts=ov.traffic_charts(series, span, colour),
                    eval_charts=ov.evaluation_charts(lines), eval_versions=lines["versions"],
                    turn_chart=ov.turn_chart(turns[0] if turns else None), schedule=plane.refresh.schedule(),
                    turn_running=plane.refresh.current if plane.refresh.running else None,
                    events_chart=health.events_chart(rates), delay=delay, dead=dead, gateway=gateway,
                    landing=plane.landing_stats(), own_spool=plane.producer.stats()["spool_depth"])

    @bp.get("/diagnostics")
    def diagnostics():
        """Internal bookkeeping: rows per table, landed positions, the landing consumer, the
        producers' dead-letter files, the refresh triggers, the loaded domains."""
        from flywheel.domains import active_domains
        from streams.producer import dead_letter_counts

        with plane.reader() as cur:
            status = landed_status(cur)
        return page("diagnostics.html", status=status, landing=plane.landing_stats(), producer=plane.producer.stats(),
                    dead_files=dead_letter_counts(settings.data_path), schedule=plane.refresh.schedule(),
                    domains=active_domains().names, gateway=health.probe_gateway(settings.gateway_url))

    @bp.get("/dead-letters")
    def dead_letters():
        args = {k: v for k, v in request.args.items() if v}
        try:
            limit, offset = int(args.get("limit", 50)), int(args.get("offset", 0))
            if not 1 <= limit <= 500 or offset < 0:
                raise ValueError("limit must be 1..500 and offset at least 0")
        except ValueError as e:
            return page("message.html", title="Bad filter", message=str(e)), 400
        with plane.reader() as cur:
            rows = _safe(lambda: health.list_dead_letters(cur, reason=args.get("reason"), topic=args.get("topic"),
                                                          limit=limit, offset=offset), "dead letters")
            summary = _safe(lambda: health.dead_letter_summary(cur, top=20), "dead letters", {"total": 0, "reasons": []})
            topics = _safe(lambda: health.dead_letter_topics(cur), "dead-letter topics")
        return page("dead_letters.html", rows=rows, summary=summary, topics=topics, args=args, limit=limit,
                    offset=offset)

    @bp.get("/datasets")
    def datasets():
        with plane.reader() as cur:
            rows = _safe(lambda: list_datasets(cur), "datasets")
        return page("datasets.html", rows=rows)

    @bp.get("/datasets/<version>")
    def dataset(version: str):
        with plane.reader() as cur:
            try:
                d = get_dataset(cur, version)
            except DatasetError as e:
                return page("message.html", title="No such dataset", message=str(e)), 404
        return page("dataset.html", d=d)

    @bp.get("/evaluations")
    def evaluations():
        with plane.reader() as cur:
            rows = _safe(lambda: list_evaluations(cur, request.args.get("candidate") or None), "evaluations")
        return page("evaluations.html", rows=rows)

    @bp.get("/evaluations/<eval_id>/report")
    def evaluation_report(eval_id: str):
        """The report page the evaluation job wrote, from the folder recorded for it (never a
        path taken from the request)."""
        with plane.reader() as cur:
            row = cur.execute("SELECT report_path FROM evaluations WHERE eval_id = ?", [eval_id]).fetchone()
        if row is None:
            abort(404)
        html = Path(row[0]) / "report.html"
        if not html.is_file():
            return page("message.html", title="Report missing", message=f"{html} is not there any more"), 404
        return send_file(html, mimetype="text/html")

    @bp.get("/metrics")
    def metrics():
        try:
            filters = metrics_filters(request.args)
        except ValueError as e:
            return page("message.html", title="Bad filter", message=str(e)), 400
        with plane.reader() as cur:
            rows = _safe(lambda: read_windows(cur, **filters), "live metrics")
        return page("metrics.html", rows=list(reversed(rows)), args=request.args)

    review_pages.register(bp, plane, page, _safe)
    conversation_pages.register(bp, plane, page, _safe)
    app.register_blueprint(bp)

    @app.get("/")
    @public
    def root():
        return redirect("/console/")
