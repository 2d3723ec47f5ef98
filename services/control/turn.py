"""One turn of the flywheel, as the scheduler runs it: mine -> dataset -> train -> evaluate
-> canary.

It runs inside the control plane (the DuckDB writer): curation and the dataset build use
its connection; training and evaluation are jobs in their own processes (`flywheel train`,
`flywheel eval`): the training job registers the candidate through the control plane's API
(with the plane's own job token), the evaluation job writes its report, and the turn
records that report's verdict itself. A candidate that passes the gate starts a canary rollout (the rollout
controller then promotes or rolls it back on live feedback); one that fails stays a
`candidate`, and the run says why.

Each turn is a row in `refresh_runs` with one entry per step (status, detail, times,
duration, and while it runs its latest progress line), so `flywheel refresh` and the
console can show what the flywheel is doing, how long each stage took and where it
stopped: no new candidates, a dataset that has not changed since the last trained one, a
failed job, a gate that said no. A turn the control plane did not live to finish is marked
failed when it starts again (:func:`reconcile_interrupted`).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from flywheel.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: The reason a turn gets when the control plane stopped while it ran (reconcile_interrupted).
INTERRUPTED = "interrupted: the control plane stopped while this turn was running; marked failed when it started again"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Step:
    name: str
    status: str = "running"  # running | done | skipped | failed
    detail: str = ""
    started_at: str = field(default_factory=_now)
    finished_at: str | None = None
    duration_s: float | None = None  # set when the step ends
    progress: str = ""  # the latest progress line while it runs (a job's last log line, a curation stage)


@dataclass
class RefreshRun:
    run_id: str
    status: str = "running"  # running | finished | stopped | failed
    steps: list[Step] = field(default_factory=list)
    dataset: str | None = None
    candidate: str | None = None
    passed: bool | None = None
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class StepFailed(RuntimeError):
    pass


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def last_line(path: Path, limit: int = 160) -> str:
    """The last non-empty line of a log (a progress bar's latest redraw counts as a line)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", _ANSI.sub("", tail)) if ln.strip()]
    return lines[-1][:limit] if lines else ""


def _job(argv: list[str], log_path: Path, env: dict | None = None, *, on_progress: Progress | None = None,
         poll_s: float = 2.0) -> int:
    """Run a `flywheel` command as a job in its own process; its output goes to a log file,
    whose latest line goes to ``on_progress`` every ``poll_s`` while it runs."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flywheel", *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
        shown = ""
        try:
            while True:
                try:
                    return proc.wait(timeout=poll_s)
                except subprocess.TimeoutExpired:
                    line = last_line(log_path)
                    if on_progress is not None and line and line != shown:
                        shown = line
                        on_progress(line)
        except BaseException:
            proc.terminate()
            proc.wait(30)
            raise


def _wait_auto_review(conn, settings: Settings, review: dict, say: Callable[[str], None]) -> None:
    """Wait (up to review.wait_landed_s) until the auto review's decisions, produced to Kafka
    by the curation run, have landed: the dataset is built from landed decisions only."""
    from training.curation.review import landed_count

    batch, total = review.get("batch"), sum(v for k, v in review.items() if k in ("approve", "reject"))
    if not batch or not total:
        return
    deadline = time.monotonic() + settings.review.wait_landed_s
    while (landed := landed_count(conn, batch)) < total and time.monotonic() < deadline:
        say(f"auto review: {landed}/{total} decisions landed")
        time.sleep(0.5)
    if landed < total:
        log.warning("auto review: %d of %d decisions landed within %ss; the dataset is built without the rest",
                    landed, total, settings.review.wait_landed_s)


def _review_summary(review: dict) -> str:
    if not review.get("auto"):
        return ""
    return f"; auto review approved {review.get('approve', 0)}, rejected {review.get('reject', 0)}"


def _job_report(settings: Settings, candidate: str, since: float) -> Path | None:
    """The report folder the evaluation job wrote for ``candidate`` after ``since`` (a turn's
    candidate name is its own, so the newest such folder is this turn's job's)."""
    found = [p.parent for p in (settings.data_path / "evals").glob(f"{candidate}-vs-*/report.json")
             if p.stat().st_mtime >= since - 1]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def refresh(conn: duckdb.DuckDBPyConnection, settings: Settings, run_id: str, *,
            start_rollout: Callable[[str], dict] | None = None, save: Callable[[RefreshRun], None] | None = None,
            progress: Progress | None = None, env: dict | None = None) -> RefreshRun:
    """Run one turn; ``save`` is called when it starts, after every step and on progress
    (at most once a second), to persist and show it."""
    from training.curation.pipeline import curate
    from training.datasets.builder import build_dataset
    from training.evaluation.evaluate import record_evaluation
    from training.errors import DatasetError, TrainingConfigError
    from training.trainers.config import check_overrides

    cfg = settings.refresh
    run = RefreshRun(run_id)
    say = progress or (lambda _m: None)
    save = save or (lambda _r: None)
    logs = settings.data_path / "logs" / "refresh"
    clock: dict[str, float] = {}  # step name -> monotonic start
    saved_at = [0.0]
    save(run)  # the row exists (and its started_at counts) from the start

    def step(name: str) -> Step:
        started = Step(name)
        run.steps.append(started)
        clock[name] = time.monotonic()
        save(run)
        say(f"{name} started")
        return started

    def note(current: Step, line: str) -> None:
        current.progress = line
        if time.monotonic() - saved_at[0] >= 1.0:
            saved_at[0] = time.monotonic()
            save(run)

    def end(finished: Step, status: str, detail: str) -> None:
        finished.status, finished.detail, finished.progress = status, detail, ""
        finished.finished_at = _now()
        finished.duration_s = round(time.monotonic() - clock.get(finished.name, time.monotonic()), 1)
        save(run)
        say(f"{finished.name} {status} in {finished.duration_s:.1f}s: {detail}")

    def stop(reason: str) -> RefreshRun:
        run.status, run.reason = "stopped", reason
        save(run)
        return run

    try:  # the training job's configs: a bad override fails the turn now, not the job after mining and loading
        check_overrides(cfg.train_overrides, settings.training.sft_config or None, settings.training.dpo_config or None)
    except TrainingConfigError as e:
        run.status, run.reason = "failed", f"refresh.train_overrides: {e}"
        save(run)
        return run

    try:
        mining = step("mine")
        result = curate(conn, settings, progress=lambda stage, done, total: note(mining, f"{stage} {done}/{total}"))
        kept = len(result.kept)
        _wait_auto_review(conn, settings, result.funnel.get("review") or {}, lambda m: note(mining, m))
        end(mining, "done", f"curation run {result.run_id}: {kept} kept of {len(result.candidates)}"
            + _review_summary(result.funnel.get("review") or {}))

        dataset_step = step("dataset")
        try:
            built = build_dataset(conn, settings, progress=lambda m: note(dataset_step, m))
        except DatasetError as e:
            end(dataset_step, "skipped", str(e))
            return stop("no dataset to train on")
        run.dataset = built.version
        trained = conn.execute("SELECT version FROM model_versions WHERE dataset = ? ORDER BY created_at DESC LIMIT 1",
                               [built.version]).fetchone()
        if trained is not None:
            end(dataset_step, "skipped", f"{built.version} is unchanged and already trained ({trained[0]})")
            return stop("no new data since the last trained dataset")
        if built.counts.get("sft", 0) < cfg.min_sft_records:
            end(dataset_step, "skipped", f"{built.version} has {built.counts.get('sft', 0)} SFT records; "
                              f"refresh.min_sft_records is {cfg.min_sft_records}")
            return stop("too little data")
        end(dataset_step, "done", f"{built.version}: {built.counts}")

        training = step("train")
        run.candidate = f"ft-{run_id.removeprefix('ref-')}"[:64].lower()
        argv = ["train", "--dataset", built.version, "--version", run.candidate]
        for override in cfg.train_overrides:
            argv += ["--set", override]
        code = _job(argv, logs / f"{run_id}-train.log", env, on_progress=lambda m: note(training, m))
        if code != 0:
            end(training, "failed", f"`flywheel {' '.join(argv)}` exited {code}; see {logs / f'{run_id}-train.log'}")
            raise StepFailed("training failed")
        end(training, "done", f"registered {run.candidate}")

        evaluation = step("evaluate")
        eval_started = time.time()
        code = _job(["eval", "--candidate", run.candidate, "--no-record"], logs / f"{run_id}-eval.log", env,
                    on_progress=lambda m: note(evaluation, m))
        # The job only writes its report; the result is recorded here, from that report, so
        # the gate's verdict is this job's and never one posted to the API by hand.
        folder = _job_report(settings, run.candidate, eval_started)
        if folder is None:
            end(evaluation, "failed",
                f"`flywheel eval` exited {code} without a report; see {logs / f'{run_id}-eval.log'}")
            raise StepFailed("evaluation failed")
        report = json.loads((folder / "report.json").read_text())
        record_evaluation(conn, report, folder, source="job", recorded_by=f"refresh {run_id}")
        run.passed = bool(report["gate"]["passed"])
        reasons = "; ".join(report["gate"]["reasons"])
        end(evaluation, "done", f"{'passed' if run.passed else 'failed'}: {reasons} ({folder})")
        if not run.passed:
            return stop(f"the gate rejected {run.candidate}: {reasons}")

        canary = step("canary")
        if not cfg.auto_rollout or start_rollout is None:
            end(canary, "skipped", "refresh.auto_rollout is off: start it with `flywheel rollout start`")
        else:
            state = start_rollout(run.candidate)
            end(canary, "done", f"rollout of {run.candidate} started: {state.get('weights')}")
        run.status = "finished"
        save(run)
        return run
    except Exception as e:
        if run.steps and run.steps[-1].status == "running":
            end(run.steps[-1], "failed", f"{type(e).__name__}: {e}")
        run.status, run.reason = "failed", f"{type(e).__name__}: {e}"
        save(run)
        if isinstance(e, StepFailed):
            return run
        raise


def save_run(conn: duckdb.DuckDBPyConnection, run: RefreshRun) -> None:
    conn.execute("INSERT OR REPLACE INTO refresh_runs (run_id, status, steps, dataset, candidate, passed, reason, "
                 "started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, coalesce((SELECT started_at FROM refresh_runs "
                 "WHERE run_id = ?), now()), now())",
                 [run.run_id, run.status, json.dumps([asdict(s) for s in run.steps]), run.dataset, run.candidate,
                  run.passed, run.reason, run.run_id])


def _row(r, st, steps, d, c, p, why, t0, t1) -> dict:
    return {"run_id": r, "status": st, "steps": json.loads(steps), "dataset": d, "candidate": c, "passed": p,
            "reason": why, "started_at": str(t0), "updated_at": str(t1)}


_COLUMNS = "run_id, status, steps, dataset, candidate, passed, reason, started_at, updated_at"


def list_runs(conn: duckdb.DuckDBPyConnection, limit: int = 20) -> list[dict]:
    cur = conn.execute(f"SELECT {_COLUMNS} FROM refresh_runs ORDER BY started_at DESC LIMIT ?", [limit])
    return [_row(*r) for r in cur.fetchall()]


def get_run(conn: duckdb.DuckDBPyConnection, run_id: str) -> dict | None:
    r = conn.execute(f"SELECT {_COLUMNS} FROM refresh_runs WHERE run_id = ?", [run_id]).fetchone()
    return _row(*r) if r else None


def reconcile_interrupted(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Mark turns left `running` (the control plane was killed during them) `failed`, and
    their running step too; return their ids. Called when the control plane starts, before
    any turn can run: the one writer of the database, so no live turn is among them."""
    rows = conn.execute("SELECT run_id, steps FROM refresh_runs WHERE status = 'running'").fetchall()
    for run_id, steps in rows:
        steps = json.loads(steps)
        for st in steps:
            if st.get("status") == "running":
                st.update(status="failed", detail=INTERRUPTED, progress="", finished_at=_now())
        conn.execute("UPDATE refresh_runs SET status = 'failed', reason = ?, steps = ?, updated_at = now() "
                     "WHERE run_id = ?", [INTERRUPTED, json.dumps(steps), run_id])
    return [r for r, _ in rows]


def feedback_since_last_turn(conn: duckdb.DuckDBPyConnection) -> int:
    """Feedback events landed since the last turn started (all of them before the first)."""
    return conn.execute("SELECT count(*) FROM feedback WHERE landed_at > coalesce((SELECT max(started_at) FROM "
                        "refresh_runs), '-infinity'::TIMESTAMPTZ)").fetchone()[0]
