"""A training job: SFT then DPO on one dataset snapshot, in its own process.

    python -m training.trainers.job --dataset DIR --out DIR [--parent ADAPTER] [--sft-config YAML]
                           [--dpo-config YAML] [--set sft.args.max_steps=4 ...]

On a multi-GPU host the same module runs under ``accelerate launch -m training.trainers.job ...``
(the trainers are plain TRL ones; only the main process writes files).

The output folder gets:

- ``run.json``: status (running/done/failed), steps, training and per-task-type eval
  losses, reward figures, timings, tokens/s, configs, the dataset and the parent;
- ``adapter/``: the final adapter in PEFT format (DPO's if DPO ran, else SFT's);
- ``sft/`` and ``dpo/``: each stage's adapter and checkpoints.

Started again on the same output folder, a job skips a stage that finished and resumes an
interrupted one from its last checkpoint. DPO is skipped (with the reason in run.json) when
the snapshot has no pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from training.trainers.config import check_overrides
from training.errors import TrainingError
from training.trainers.sft import ADAPTER
from training.datasets.snapshot import load_snapshot

RUN_FILE = "run.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def read_run(out_dir: Path | str) -> dict | None:
    try:
        return json.loads((Path(out_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None


def _write_run(out_dir: Path, run: dict) -> None:
    if not _is_main():
        return
    tmp = out_dir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(run, indent=2))
    os.replace(tmp, out_dir / RUN_FILE)


def _say(message: str) -> None:
    if _is_main():
        print(f"[training] {message}", flush=True)


def run_job(dataset: Path | str, out_dir: Path | str, *, model_dir: Path | str, parent: Path | str | None = None,
            sft_config: Path | str | None = None, dpo_config: Path | str | None = None,
            overrides: list[str] | tuple[str, ...] = (), skip_dpo: bool = False) -> dict:
    """Run SFT then DPO; return (and write) the run record. Raises on failure after
    recording it in run.json."""
    from training.trainers.dpo import train_dpo
    from training.trainers.sft import train_sft

    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshot = load_snapshot(dataset)
    configs = check_overrides(overrides, sft_config, dpo_config)
    sft_cfg, dpo_cfg = configs["sft"], configs["dpo"]
    previous = read_run(out_dir) or {}
    if previous.get("dataset") not in (None, snapshot.version):
        raise TrainingError(f"{out_dir} holds a run on dataset {previous['dataset']!r}, not {snapshot.version!r}: "
                            f"use another output folder")
    run = {
        "run_id": out_dir.name,
        "status": "running",
        "dataset": snapshot.version,
        "dataset_path": str(snapshot.path),
        "parent_adapter": str(Path(parent).resolve()) if parent else None,
        "model_dir": str(model_dir),
        "started_at": previous.get("started_at") or _now(),
        "attempts": int(previous.get("attempts", 0)) + 1,
        "updated_at": _now(),
        "configs": {"sft": sft_cfg.to_dict(), "dpo": dpo_cfg.to_dict()},
        "counts": {"sft": len(snapshot.sft), "dpo": len(snapshot.dpo), "eval": len(snapshot.eval)},
        "stages": dict(previous.get("stages") or {}),
        "timings_s": dict(previous.get("timings_s") or {}),
        "error": None,
    }
    _write_run(out_dir, run)
    started = time.monotonic()
    try:
        # -- SFT ---------------------------------------------------------------------
        sft_done = run["stages"].get("sft", {}).get("status") == "done" and (out_dir / "sft" / ADAPTER).is_dir()
        if sft_done:
            _say("SFT finished in an earlier attempt; reusing its adapter")
        else:
            _say(f"SFT on {len(snapshot.sft)} records of {snapshot.version}"
                 f" ({'continuing ' + str(parent) if parent else 'fresh LoRA'})")
            t = time.monotonic()
            result = train_sft(snapshot, out_dir / "sft", model_dir=model_dir, cfg=sft_cfg, parent=parent)
            run["stages"]["sft"] = result.to_dict()
            run["timings_s"]["sft"] = round(time.monotonic() - t, 3)
            _write_run(out_dir, {**run, "updated_at": _now()})
        final = out_dir / "sft" / ADAPTER

        # -- DPO ---------------------------------------------------------------------
        if skip_dpo or not snapshot.dpo:
            reason = "skipped on request (--no-dpo)" if skip_dpo else "the snapshot has no DPO pairs"
            run["stages"]["dpo"] = {"stage": "dpo", "status": "skipped", "reason": reason}
            _say(f"DPO {reason}")
        elif run["stages"].get("dpo", {}).get("status") == "done" and (out_dir / "dpo" / ADAPTER).is_dir():
            _say("DPO finished in an earlier attempt; reusing its adapter")
            final = out_dir / "dpo" / ADAPTER
        else:
            _say(f"DPO on {len(snapshot.dpo)} pairs, continuing the SFT adapter")
            t = time.monotonic()
            result = train_dpo(snapshot, out_dir / "dpo", model_dir=model_dir, cfg=dpo_cfg, adapter=final)
            run["stages"]["dpo"] = result.to_dict()
            run["timings_s"]["dpo"] = round(time.monotonic() - t, 3)
            final = out_dir / "dpo" / ADAPTER

        if _is_main():
            target = out_dir / ADAPTER
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(final, target)
        run.update(_summary(run))
        run["adapter"] = str(out_dir / ADAPTER)
        run["status"] = "done"
    except BaseException as e:
        run["status"] = "failed"
        run["error"] = f"{type(e).__name__}: {e}"
        run["traceback"] = traceback.format_exc(limit=8)
        raise
    finally:
        run["timings_s"]["this_attempt"] = round(time.monotonic() - started, 3)
        run["finished_at" if run["status"] != "running" else "updated_at"] = _now()
        _write_run(out_dir, run)
    _say(f"done: adapter in {run['adapter']}, {run['steps']} steps")
    return run


def _summary(run: dict) -> dict:
    stages = [s for s in run["stages"].values() if s.get("status") == "done"]
    sft = run["stages"].get("sft", {})
    return {
        "steps": sum(s.get("steps", 0) for s in stages),
        "steps_by_stage": {s["stage"]: s.get("steps", 0) for s in stages},
        "eval_loss_by_task": {task: points[-1]["loss"] for task, points in (sft.get("eval_loss") or {}).items()
                              if points},
        "tokens_per_s": {s["stage"]: s.get("tokens_per_s") for s in stages},
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.trainers.job",
                                description="Train a LoRA adapter on a dataset snapshot: SFT, then DPO when the "
                                            "snapshot has pairs. Writes OUT/run.json and OUT/adapter/.")
    p.add_argument("--dataset", required=True, help="Dataset snapshot folder (manifest.json, sft.jsonl, ...).")
    p.add_argument("--out", required=True, help="Output folder; run again on it to resume.")
    p.add_argument("--parent", default=None, help="Parent adapter folder (PEFT) to continue; default: a fresh LoRA.")
    p.add_argument("--model-dir", default=None,
                   help="Base model in HF format. Default: the bundled model, converted in the default cache.")
    p.add_argument("--sft-config", default=None, help="SFT YAML (default training/trainers/configs/sft.yaml).")
    p.add_argument("--dpo-config", default=None, help="DPO YAML (default training/trainers/configs/dpo.yaml).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.SECTION.KEY=VALUE",
                   help="Override a config value, e.g. sft.args.max_steps=4 (repeatable).")
    p.add_argument("--no-dpo", action="store_true", help="Stop after SFT.")
    p.add_argument("--threads", type=int, default=None,
                   help="Torch/OpenMP threads of this job (training.threads; 0: the cores less one); default: torch's "
                        "own (every core).")
    p.add_argument("--nice", type=int, default=0, help="Run at this niceness (training.nice); default: unchanged.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.threads is not None or args.nice:  # first, before any torch work: serving on this machine keeps its share
        from training.job_limits import job_threads, limit_this_process, thread_env

        threads = job_threads(args.threads) if args.threads is not None else None
        if threads is not None:
            os.environ.update(thread_env(threads))  # for pools that start later (tokenizers)
        limit_this_process(threads, args.nice)
    model_dir = args.model_dir
    if model_dir is None:
        from serving.model_store import ensure_hf_model

        model_dir = ensure_hf_model()
    try:
        run_job(args.dataset, args.out, model_dir=model_dir, parent=args.parent, sft_config=args.sft_config,
                dpo_config=args.dpo_config, overrides=args.overrides, skip_dpo=args.no_dpo)
    except TrainingError as e:
        print(f"[training] failed: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
