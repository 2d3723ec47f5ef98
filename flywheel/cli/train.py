"""`flywheel train`: fine-tune on a dataset snapshot as a job, then register the candidate
(library: training/trainers/)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from flywheel.cli._common import ask, console, kv_table, model_versions, settings_of, with_registry


@click.command()
@click.option("--dataset", required=True,
              help="Dataset snapshot version (a folder under DATA_DIR/datasets) or the path to a snapshot folder.")
@click.option("--parent", default=None,
              help="Continue this version's adapter. Default: the production version's (training.incremental).")
@click.option("--fresh", is_flag=True, help="Start a new LoRA on the base model instead of continuing production.")
@click.option("--run-id", default=None, help="Reuse this run folder under training.runs_dir: resumes a killed run "
              "from its last checkpoint.")
@click.option("--version", "version_name", default=None, help="Name of the candidate version. Default: ft-RUN_ID.")
@click.option("--set", "overrides", multiple=True, metavar="STAGE.SECTION.KEY=VALUE",
              help="Override a training config value, e.g. --set sft.args.max_steps=20 --set dpo.args.beta=0.2.")
@click.option("--no-register", is_flag=True, help="Train only; do not register the result as a candidate.")
@click.pass_context
def train(ctx, dataset, parent, fresh, run_id, version_name, overrides, no_register) -> None:
    """Fine-tune on a dataset snapshot: LoRA SFT then DPO (when the snapshot has pairs), as a
    job in its own process (`python -m training.trainers.job`; its progress is shown here and kept in
    RUN/job.log), then register the adapter as a `candidate` version with its dataset and
    run (through the control plane when it runs, else in the DuckDB file)."""
    from serving.model_store import ensure_hf_model
    from training.trainers.runner import candidate_name, plan_job, run_plan

    s = settings_of(ctx)
    plan = plan_job(s, dataset, model_dir=ensure_hf_model(s.model_cache_path), versions=model_versions(s),
                    parent=parent, fresh=fresh, run_id=run_id, overrides=tuple(overrides))
    start = f"continuing {plan.parent_version} ({plan.parent_adapter})" if plan.parent_adapter else \
        f"fresh LoRA on the base model{f' (production is {plan.parent_version})' if plan.parent_version else ''}"
    console.print(f"training run [bold]{plan.run_id}[/] on dataset {plan.dataset}: {start}; output {plan.out_dir}")

    def echo(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()

    run = run_plan(plan, echo=echo)
    table = kv_table(f"training run {plan.run_id}")
    for stage, info in run["stages"].items():
        if info.get("status") == "done":
            table.add_row(f"{stage}: steps", str(info["steps"]))
            table.add_row(f"{stage}: tokens/s", f"{info['tokens_per_s']:.1f}")
            if info.get("train_loss"):
                table.add_row(f"{stage}: training loss first -> last",
                              f"{info['train_loss'][0]['loss']:.3f} -> {info['train_loss'][-1]['loss']:.3f}")
        else:
            table.add_row(stage, info.get("reason") or info.get("status", "-"))
    for task, loss in run.get("eval_loss_by_task", {}).items():
        table.add_row(f"eval loss: {task}", f"{loss:.3f}")
    console.print(table)
    if no_register:
        console.print(f"adapter in {run['adapter']} (not registered)")
        return
    version = version_name or candidate_name(plan.run_id)
    body = {"version": version, "adapter_path": run["adapter"], "parent": plan.parent_version,
            "dataset": plan.dataset, "training_run": plan.run_id, "notes": f"trained on {plan.dataset}"}
    reg = ask(s, "POST", "/api/models", body, local=lambda: with_registry(
        s, lambda r: r.register(version, Path(run["adapter"]), parent=plan.parent_version, notes=body["notes"],
                                dataset=plan.dataset, training_run=plan.run_id).to_dict()))
    console.print(f"registered [bold]{reg['version']}[/] ({reg['status']}) from run {plan.run_id}")
