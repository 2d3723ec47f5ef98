"""Curation runs inside the control plane (the DuckDB writer): one at a time, in a thread,
with live progress for `flywheel mine`; routes under /api/curation."""

from __future__ import annotations

import logging
import threading

from flask import Flask, jsonify, request

from flywheel.errors import FlywheelError
from flywheel.settings import Settings
from services.control.errors import error_json
from services.control.protocol import CurationStart, parse, query_limit
from streams.schemas import new_id
from training.curation.pipeline import CurationBusy

log = logging.getLogger(__name__)


class CurationNotFound(FlywheelError):
    status = 404


class CurationRunner:
    """Starts `training.curation.pipeline.curate` runs on the plane's connection, one at a time."""

    def __init__(self, settings: Settings, plane):
        self.settings = settings
        self.plane = plane
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.state: dict = {}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, full: bool = False) -> dict:
        with self._lock:
            if self.running:  # (a run started elsewhere in the process fails its thread with CurationBusy)
                raise CurationBusy(f"curation run {self.state.get('run_id')} is still running; wait for it "
                                   "(flywheel mine --show RUN)")
            run_id = new_id("cur-")
            self.state = {"run_id": run_id, "status": "running", "stage": "start", "done": 0, "total": 0}
            self._thread = threading.Thread(target=self._run, args=(run_id, full), name="curation", daemon=True)
            self._thread.start()
            return dict(self.state)

    def _progress(self, stage: str, done: int, total: int) -> None:
        self.state.update(stage=stage, done=done, total=total)

    def _run(self, run_id: str, full: bool) -> None:
        from training.curation.pipeline import curate

        try:
            with self.plane.reader() as cur:
                curate(cur, self.settings, run_id=run_id, full=full, progress=self._progress)
            self.state.update(status="finished")
        except Exception as e:  # noqa: BLE001 - recorded on the run row and in the state; the plane goes on
            log.exception("curation run %s failed", run_id)
            self.state.update(status="failed", error=f"{type(e).__name__}: {e}")

    def live(self, run_id: str) -> dict | None:
        return dict(self.state) if self.state.get("run_id") == run_id else None


def init_app(app: Flask, settings: Settings, plane) -> None:
    """Attach the curation routes and the runner (``app.extensions["curation"]``)."""
    from training.curation.pipeline import get_run, list_runs

    runner = CurationRunner(settings, plane)
    app.extensions["curation"] = runner
    with plane.reader() as cur:  # a run the previous process did not finish never will
        cur.execute("UPDATE curation_runs SET status = 'failed', finished_at = now(), "
                    "error = 'interrupted: the process running it stopped' WHERE status = 'running'")

    @app.errorhandler(CurationBusy)
    @app.errorhandler(CurationNotFound)
    def _curation_error(e: FlywheelError):
        return error_json(str(e), e.status)

    @app.post("/api/curation/runs")
    def curation_start():
        return jsonify(runner.start(full=parse(CurationStart, optional=True).full)), 202

    @app.get("/api/curation/runs")
    def curation_list():
        limit = query_limit(20)
        with plane.reader() as cur:
            return jsonify({"data": list_runs(cur, limit)})

    @app.get("/api/curation/runs/<run_id>")
    def curation_show(run_id: str):
        with plane.reader() as cur:
            run = get_run(cur, run_id)
        live = runner.live(run_id)
        if run is None and live is None:
            raise CurationNotFound(f"no curation run {run_id!r}; list them with `flywheel mine --list`")
        run = run or {"run_id": run_id}
        if live is not None:
            # The thread's state wins: the row says 'finished' once written, but the run
            # goes on with the auto review; and a run refused (busy) has no row at all.
            run["progress"] = live
            run["status"] = live["status"]
            if live.get("error"):
                run["error"] = live["error"]
        return jsonify(run)
