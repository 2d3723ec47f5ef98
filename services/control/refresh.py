"""The scheduled refresh in the control plane: one flywheel turn at a time
(services/control/turn.py) in a thread, started by the scheduler (``refresh.cron`` or
``refresh.interval_min``; ``refresh.after_feedback`` once that many feedback events have
landed since the last turn started) or through POST /api/refresh (`flywheel refresh`).
Single-flight: a trigger that fires while a turn runs is skipped (and logged)."""

from __future__ import annotations

import logging
import threading

from flask import Flask, jsonify, request

from flywheel.errors import FlywheelError
from flywheel.settings import Settings
from services.control.errors import error_json
from services.control.protocol import Empty, parse, query_limit
from streams.schemas import new_id

log = logging.getLogger(__name__)

#: APScheduler job ids of the refresh triggers.
SCHEDULE_JOB, FEEDBACK_JOB = "refresh", "refresh-after-feedback"


class RefreshBusy(FlywheelError):
    status = 409


class RefreshRunner:
    def __init__(self, settings: Settings, plane):
        self.settings = settings
        self.plane = plane
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.current: str | None = None
        self.scheduler = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, trigger: str = "request") -> dict:
        with self._lock:
            if self.running:
                raise RefreshBusy(f"refresh {self.current} is still running; `flywheel refresh --list` shows it")
            curation = self.plane.api_extensions.get("curation") if hasattr(self.plane, "api_extensions") else None
            if curation is not None and curation.running:
                raise RefreshBusy("a curation run is in progress; try again when it has finished")
            self.current = new_id("ref-")
            log.info("refresh %s started (%s)", self.current, trigger)
            self._thread = threading.Thread(target=self._run, args=(self.current,), name="refresh", daemon=True)
            self._thread.start()
            return {"run_id": self.current, "status": "running", "trigger": trigger}

    # -- triggers ----------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Turns left `running` by a control plane that died are failed now, with the reason."""
        from services.control.turn import reconcile_interrupted

        with self.plane.reader() as cur:
            ids = reconcile_interrupted(cur)
        for run_id in ids:
            log.warning("refresh %s was interrupted (the control plane stopped during it): marked failed", run_id)
        return ids

    def install(self, scheduler) -> None:
        """Add the triggers the settings ask for to ``scheduler`` (APScheduler)."""
        from apscheduler.triggers.cron import CronTrigger

        cfg = self.settings.refresh
        self.scheduler = scheduler
        if cfg.interval_h:
            log.warning("refresh.interval_h is deprecated: write refresh.interval_min = %g", cfg.interval_h * 60)
        if cfg.cron:
            scheduler.add_job(self.scheduled, CronTrigger.from_crontab(cfg.cron, timezone="UTC"), args=(f"cron {cfg.cron}",),
                              id=SCHEDULE_JOB, max_instances=1, coalesce=True, misfire_grace_time=600)
        elif cfg.every_min > 0:
            scheduler.add_job(self.scheduled, "interval", minutes=cfg.every_min, args=(f"every {cfg.every_min:g} min",),
                              id=SCHEDULE_JOB, max_instances=1, coalesce=True, misfire_grace_time=600)
        if cfg.after_feedback > 0:
            scheduler.add_job(self.check_feedback, "interval", seconds=cfg.check_s, id=FEEDBACK_JOB, max_instances=1,
                              coalesce=True)

    def scheduled(self, trigger: str = "schedule") -> None:
        try:
            self.start(trigger)
        except RefreshBusy as e:
            log.info("scheduled refresh skipped: %s", e)

    def check_feedback(self) -> str | None:
        """Start a turn when ``refresh.after_feedback`` feedback events have landed since the
        last turn started; return its id (None: not yet, or busy)."""
        from services.control.turn import feedback_since_last_turn

        wanted = self.settings.refresh.after_feedback
        if wanted <= 0 or self.running:
            return None
        try:
            with self.plane.reader() as cur:
                landed = feedback_since_last_turn(cur)
        except Exception:  # noqa: BLE001 - one failed count must not stop the scheduler; it is logged
            log.exception("counting feedback for refresh.after_feedback failed")
            return None
        if landed < wanted:
            return None
        try:
            return self.start(f"{landed} feedback events since the last turn (after_feedback {wanted})")["run_id"]
        except RefreshBusy as e:
            log.info("refresh after feedback skipped: %s", e)
            return None

    def schedule(self) -> dict:
        """The triggers in effect, with the scheduled turn's next time (for the API and CLI)."""
        cfg = self.settings.refresh
        job = self.scheduler.get_job(SCHEDULE_JOB) if self.scheduler is not None else None
        next_at = getattr(job, "next_run_time", None) if job is not None else None
        return {"cron": cfg.cron or None, "interval_min": cfg.every_min or None,
                "after_feedback": cfg.after_feedback or None, "next_run_at": next_at.isoformat() if next_at else None}

    # -- the turn ----------------------------------------------------------------------
    def _run(self, run_id: str) -> None:
        import os

        from flywheel.settings import settings_env
        from services.control.turn import refresh, save_run
        from training.job_limits import job_threads, thread_env

        def save(run) -> None:
            with self.plane.reader() as cur:
                save_run(cur, run)

        def start_rollout(candidate: str) -> dict:
            return self.plane.rollouts.start(self.settings.model.alias, candidate)

        # The jobs' thread pools are bounded from the start (training.threads): the gateway keeps a core.
        env = {**os.environ, **settings_env(self.settings), **thread_env(job_threads(self.settings.training.threads))}
        if getattr(self.plane, "job_token", None):  # the jobs call the API as the plane's own operator
            env["FLYWHEEL_CONTROL__TOKEN"] = self.plane.job_token
        try:
            with self.plane.reader() as cur:
                run = refresh(cur, self.settings, run_id, start_rollout=start_rollout, save=save,
                              progress=lambda m: log.info("refresh %s: %s", run_id, m), env=env)
            log.info("refresh %s %s%s", run_id, run.status, f": {run.reason}" if run.reason else "")
        except Exception:  # noqa: BLE001 - recorded on the run row by refresh(); the plane goes on
            log.exception("refresh %s failed", run_id)


def init_app(app: Flask, settings: Settings, plane) -> None:
    from services.control.turn import get_run, list_runs

    runner = plane.refresh

    @app.errorhandler(RefreshBusy)
    def _busy(e: RefreshBusy):
        return error_json(str(e), e.status)

    @app.post("/api/refresh")
    def refresh_start():
        parse(Empty, optional=True)
        return jsonify(runner.start()), 202

    @app.get("/api/refresh")
    def refresh_list():
        with plane.reader() as cur:
            return jsonify({"data": list_runs(cur, query_limit(20)),
                            "running": runner.current if runner.running else None, "schedule": runner.schedule()})

    @app.get("/api/refresh/<run_id>")
    def refresh_one(run_id: str):
        with plane.reader() as cur:
            run = get_run(cur, run_id)
        if run is None:
            return error_json(f"no flywheel turn {run_id!r}; `flywheel refresh --list` shows them", 404)
        return jsonify(run)
