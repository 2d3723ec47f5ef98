"""Starting a training job from the `flywheel train` command (or the scheduler).

The job runs in its own process (``python -m training.trainers.job``): a crash or an out-of-memory
kill cannot take the caller down, and the same command line runs under ``accelerate
launch`` on a GPU host. This module resolves the snapshot, picks the parent adapter (the
production version's, for incremental training), builds the command line from the
settings, runs it while echoing its output (and keeping it in ``job.log``), and reads the
resulting ``run.json``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from flywheel.settings import Settings
from training.errors import JobError, SnapshotError
from training.trainers.config import check_overrides
from training.trainers.job import RUN_FILE, read_run
from training.datasets.snapshot import snapshot_dir

LOG_FILE = "job.log"


@dataclass(frozen=True)
class JobPlan:
    run_id: str
    dataset: str
    dataset_dir: Path
    out_dir: Path
    parent_version: str | None
    parent_adapter: Path | None
    command: list[str]

    @property
    def log_path(self) -> Path:
        return self.out_dir / LOG_FILE


def resolve_dataset(settings: Settings, dataset: str) -> Path:
    """A snapshot version under DATA_DIR/datasets, or a path to a snapshot folder."""
    candidate = snapshot_dir(settings.data_path, dataset)
    if candidate.is_dir():
        return candidate
    as_path = Path(dataset).expanduser()
    if as_path.is_dir() and (as_path / "manifest.json").is_file():
        return as_path.resolve()
    known = sorted(p.name for p in (settings.data_path / "datasets").glob("*") if p.is_dir()) \
        if (settings.data_path / "datasets").is_dir() else []
    raise SnapshotError(f"no dataset snapshot {dataset!r} under {settings.data_path / 'datasets'}"
                        + (f" (have: {', '.join(known[-10:])})" if known else " (none built yet)"))


def production_parent(versions: list[dict]) -> tuple[str | None, Path | None]:
    """The production version and its adapter folder (``(name, None)`` when production is
    the bare base model; ``(None, None)`` when no version is in production)."""
    prod = [v for v in versions if v.get("status") == "production"]
    if not prod:
        return None, None
    latest = max(prod, key=lambda v: str(v.get("updated_at") or v.get("created_at") or ""))
    path = latest.get("adapter_path")
    return latest["version"], Path(path) if path else None


def new_run_id(dataset: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    slug = re.sub(r"[^a-z0-9]+", "-", dataset.lower()).strip("-")[:24] or "dataset"
    return f"{now:%Y%m%d-%H%M%S}-{slug}"


def candidate_name(run_id: str) -> str:
    """Default version name of the candidate a run registers (immutable, registry-valid)."""
    return f"ft-{run_id}"[:64]


def plan_job(settings: Settings, dataset: str, *, model_dir: Path | str, versions: list[dict],
             parent: str | None = None, fresh: bool = False, run_id: str | None = None,
             overrides: tuple[str, ...] = (), python: str = sys.executable) -> JobPlan:
    """Decide what to run. ``parent`` names a version to continue (default: production's,
    when ``training.incremental``); ``fresh`` starts a new LoRA on the base. The configs and
    overrides are checked here (TrainingConfigError), before any job starts."""
    cfg = settings.training
    dataset_dir = resolve_dataset(settings, dataset)
    run_id = run_id or new_run_id(dataset_dir.name)
    out_dir = settings.runs_path / run_id
    parent_version, parent_adapter = None, None
    if parent and not fresh:
        match = [v for v in versions if v.get("version") == parent]
        if not match:
            raise JobError(f"no model version {parent!r} to continue; see `flywheel models list`")
        parent_version = parent
        parent_adapter = Path(match[0]["adapter_path"]) if match[0].get("adapter_path") else None
    elif cfg.incremental and not fresh:
        parent_version, parent_adapter = production_parent(versions)
    cmd = [python, "-m", "training.trainers.job", "--dataset", str(dataset_dir), "--out", str(out_dir),
           "--model-dir", str(model_dir)]
    if parent_adapter is not None:
        cmd += ["--parent", str(parent_adapter)]
    if cfg.sft_config:
        cmd += ["--sft-config", cfg.sft_config]
    if cfg.dpo_config:
        cmd += ["--dpo-config", cfg.dpo_config]
    if not cfg.dpo:
        cmd.append("--no-dpo")
    cmd += ["--threads", str(cfg.threads), "--nice", str(cfg.nice)]  # serving on this machine keeps a core
    settings_overrides = [f"sft.args.save_steps={cfg.checkpoint_steps}", f"dpo.args.save_steps={cfg.checkpoint_steps}",
                          f"sft.flywheel.assistant_turns={cfg.assistant_turns}"]
    check_overrides((*settings_overrides, *overrides), cfg.sft_config or None, cfg.dpo_config or None)
    for item in (*settings_overrides, *overrides):
        cmd += ["--set", item]
    return JobPlan(run_id, dataset_dir.name, dataset_dir, out_dir, parent_version, parent_adapter, cmd)


def run_plan(plan: JobPlan, *, echo: Callable[[bytes], None] | None = None, cwd: Path | str | None = None,
             env: dict | None = None) -> dict:
    """Run the job process to its end, echoing its output; return run.json. Raises
    JobError when the job fails (the tail of its log in the message)."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[2]
    child_env = dict(env if env is not None else os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), child_env.get("PYTHONPATH", "")]))
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    tail = bytearray()
    with open(plan.log_path, "ab") as log:
        proc = subprocess.Popen(plan.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=cwd or repo,
                                env=child_env)
        try:
            while chunk := os.read(proc.stdout.fileno(), 65536):
                log.write(chunk)
                log.flush()
                tail += chunk
                del tail[:-4000]
                if echo is not None:
                    echo(chunk)
        except BaseException:
            proc.terminate()  # Ctrl-C: stop the job too; run it again to resume from its checkpoint
            proc.wait(30)
            raise
        finally:
            proc.stdout.close()
        code = proc.wait()
    run = read_run(plan.out_dir)
    if code != 0 or run is None or run.get("status") != "done":
        last = tail.decode("utf-8", "replace").replace("\r", "\n").strip().splitlines()[-12:]
        raise JobError(f"training job {plan.run_id} failed (exit code {code}); full log in {plan.log_path}; "
                       f"run it again to resume from the last checkpoint.\n" + "\n".join(last))
    return run


__all__ = ["JobPlan", "plan_job", "run_plan", "production_parent", "resolve_dataset", "candidate_name", "RUN_FILE"]
