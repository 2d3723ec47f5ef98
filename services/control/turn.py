"""One turn of the flywheel, as the scheduler runs it: mine -> dataset -> train -> evaluate
-> canary.

It runs inside the control plane (the DuckDB writer): curation and the dataset build use
its connection; training and evaluation are jobs in their own processes (`flywheel train`,
`flywheel eval`), which reach the control plane's API to register the candidate and record
the evaluation. A candidate that passes the gate starts a canary rollout (the rollout
controller then promotes or rolls it back on live feedback); one that fails stays a
`candidate`, and the run says why.

Each turn is a row in `refresh_runs` with one entry per step (status, detail, times), so
`flywheel refresh --list` and the console can show what the flywheel did and where it
stopped: no new candidates, a dataset that has not changed since the last trained one,
a failed job, a gate that said no.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

Progress = Callable[[str], None]


@dataclass
class Step:
    name: str
    status: str = "running"  # running | done | skipped | failed
    detail: str = ""
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    finished_at: str | None = None


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


def _job(argv: list[str], log_path: Path, env: dict | None = None) -> int:
    """Run a `flywheel` command as a job in its own process; its output goes to a log file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.run([sys.executable, "-m", "flywheel", *argv], stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env).returncode


def refresh(conn, settings, run_id: str, *, start_rollout: Callable[[str], dict] | None = None,
            save: Callable[[RefreshRun], None] | None = None, progress: Progress | None = None,
            env: dict | None = None) -> RefreshRun:
    """Run one turn; ``save`` is called after every step (to persist and show progress)."""
    from training.curation.pipeline import curate
    from training.datasets.builder import build_dataset
    from training.errors import DatasetError

    cfg = settings.refresh
    run = RefreshRun(run_id)
    say = progress or (lambda _m: None)
    save = save or (lambda _r: None)
    logs = settings.data_path / "logs" / "refresh"

    def step(name: str) -> Step:
        s = Step(name)
        run.steps.append(s)
        save(run)
        say(name)
        return s

    def end(s: Step, status: str, detail: str) -> None:
        s.status, s.detail = status, detail
        s.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        save(run)

    def stop(reason: str) -> RefreshRun:
        run.status, run.reason = "stopped", reason
        save(run)
        return run

    try:
        s = step("mine")
        result = curate(conn, settings)
        kept = len(result.kept)
        end(s, "done", f"curation run {result.run_id}: {kept} kept of {len(result.candidates)}")

        s = step("dataset")
        try:
            built = build_dataset(conn, settings)
        except DatasetError as e:
            end(s, "skipped", str(e))
            return stop("no dataset to train on")
        run.dataset = built.version
        trained = conn.execute("SELECT version FROM model_versions WHERE dataset = ? ORDER BY created_at DESC LIMIT 1",
                               [built.version]).fetchone()
        if trained is not None:
            end(s, "skipped", f"{built.version} is unchanged and already trained ({trained[0]})")
            return stop("no new data since the last trained dataset")
        if built.counts.get("sft", 0) < cfg.min_sft_records:
            end(s, "skipped", f"{built.version} has {built.counts.get('sft', 0)} SFT records; "
                              f"refresh.min_sft_records is {cfg.min_sft_records}")
            return stop("too little data")
        end(s, "done", f"{built.version}: {built.counts}")

        s = step("train")
        run.candidate = f"ft-{run_id.removeprefix('ref-')}"[:64].lower()
        argv = ["train", "--dataset", built.version, "--version", run.candidate]
        for override in cfg.train_overrides:
            argv += ["--set", override]
        code = _job(argv, logs / f"{run_id}-train.log", env)
        if code != 0:
            end(s, "failed", f"`flywheel {' '.join(argv)}` exited {code}; see {logs / f'{run_id}-train.log'}")
            raise StepFailed("training failed")
        end(s, "done", f"registered {run.candidate}")

        s = step("evaluate")
        code = _job(["eval", "--candidate", run.candidate], logs / f"{run_id}-eval.log", env)
        row = conn.execute("SELECT passed, reasons, report_path FROM evaluations WHERE candidate = ? "
                           "ORDER BY created_at DESC LIMIT 1", [run.candidate]).fetchone()
        if row is None:
            end(s, "failed", f"`flywheel eval` exited {code} without a result; see {logs / f'{run_id}-eval.log'}")
            raise StepFailed("evaluation failed")
        run.passed = bool(row[0])
        reasons = "; ".join(json.loads(row[1]))
        end(s, "done", f"{'passed' if run.passed else 'failed'}: {reasons} ({row[2]})")
        if not run.passed:
            return stop(f"the gate rejected {run.candidate}: {reasons}")

        s = step("canary")
        if not cfg.auto_rollout or start_rollout is None:
            end(s, "skipped", "refresh.auto_rollout is off: start it with `flywheel rollout start`")
        else:
            state = start_rollout(run.candidate)
            end(s, "done", f"rollout of {run.candidate} started: {state.get('weights')}")
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


def save_run(conn, run: RefreshRun) -> None:
    conn.execute("INSERT OR REPLACE INTO refresh_runs (run_id, status, steps, dataset, candidate, passed, reason, "
                 "started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, coalesce((SELECT started_at FROM refresh_runs "
                 "WHERE run_id = ?), now()), now())",
                 [run.run_id, run.status, json.dumps([asdict(s) for s in run.steps]), run.dataset, run.candidate,
                  run.passed, run.reason, run.run_id])


def list_runs(conn, limit: int = 20) -> list[dict]:
    cur = conn.execute("SELECT run_id, status, steps, dataset, candidate, passed, reason, started_at, updated_at "
                       "FROM refresh_runs ORDER BY started_at DESC LIMIT ?", [limit])
    return [{"run_id": r, "status": st, "steps": json.loads(steps), "dataset": d, "candidate": c, "passed": p,
             "reason": why, "started_at": str(t0), "updated_at": str(t1)}
            for r, st, steps, d, c, p, why, t0, t1 in cur.fetchall()]
