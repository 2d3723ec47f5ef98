"""The scheduled refresh in the control plane: one flywheel turn at a time (services/control/turn.py)
in a thread, started by the scheduler every `refresh.interval_h` hours or through
POST /api/refresh (`flywheel refresh`)."""

from __future__ import annotations

import logging
import threading

from flask import Flask, jsonify, request

from flywheel.errors import FlywheelError
from streams.schemas import new_id

log = logging.getLogger(__name__)


class RefreshBusy(FlywheelError):
    status = 409


class RefreshRunner:
    def __init__(self, settings, plane):
        self.settings = settings
        self.plane = plane
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.current: str | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> dict:
        with self._lock:
            if self.running:
                raise RefreshBusy(f"refresh {self.current} is still running; `flywheel refresh --list` shows it")
            curation = self.plane.api_extensions.get("curation") if hasattr(self.plane, "api_extensions") else None
            if curation is not None and curation.running:
                raise RefreshBusy("a curation run is in progress; try again when it has finished")
            self.current = new_id("ref-")
            self._thread = threading.Thread(target=self._run, args=(self.current,), name="refresh", daemon=True)
            self._thread.start()
            return {"run_id": self.current, "status": "running"}

    def scheduled(self) -> None:
        try:
            self.start()
        except RefreshBusy as e:
            log.info("scheduled refresh skipped: %s", e)

    def _run(self, run_id: str) -> None:
        import os

        from flywheel.settings import settings_env
        from services.control.turn import refresh, save_run

        def save(run) -> None:
            with self.plane.reader() as cur:
                save_run(cur, run)

        def start_rollout(candidate: str) -> dict:
            return self.plane.rollouts.start(self.settings.model.alias, candidate)

        try:
            with self.plane.reader() as cur:
                run = refresh(cur, self.settings, run_id, start_rollout=start_rollout, save=save,
                              progress=lambda m: log.info("refresh %s: %s", run_id, m),
                              env={**os.environ, **settings_env(self.settings)})
            log.info("refresh %s %s%s", run_id, run.status, f": {run.reason}" if run.reason else "")
        except Exception:  # noqa: BLE001 - recorded on the run row by refresh(); the plane goes on
            log.exception("refresh %s failed", run_id)


def init_app(app: Flask, settings, plane) -> None:
    from services.control.turn import list_runs

    runner = plane.refresh

    @app.errorhandler(RefreshBusy)
    def _busy(e: RefreshBusy):
        return jsonify({"error": {"message": str(e), "type": "invalid_request_error"}}), e.status

    @app.post("/api/refresh")
    def refresh_start():
        return jsonify(runner.start()), 202

    @app.get("/api/refresh")
    def refresh_list():
        with plane.reader() as cur:
            return jsonify({"data": list_runs(cur, request.args.get("limit", default=20, type=int)),
                            "running": runner.current if runner.running else None})
