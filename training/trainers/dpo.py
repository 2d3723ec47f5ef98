"""DPO with TRL's ``DPOTrainer``, continuing from the SFT adapter.

When the policy is a PeftModel that already holds an adapter, TRL copies it into a frozen
``ref`` adapter and computes the reference log-probs with it, so the reference is the SFT
model itself (no second base model in memory, but three forward passes a step: ~8 s/step
against ~4 s with a fresh LoRA on this CPU). Only the trained ``default`` adapter is saved.

TRL logs ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins`` and
``rewards/accuracies`` each logging step; :class:`RewardCallback` keeps them for run.json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from training.trainers.config import StageConfig, build_args, build_lora, device_plan
from training.errors import TrainingError
from training.trainers.lora import attach_adapter, load_base
from training.trainers.sft import (CHECKPOINTS, StageResult, TaskLossCallback, account_truncation,
                                   render_tool_messages, run_trainer)
from training.datasets.snapshot import Snapshot

REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class RewardCallback(TaskLossCallback):
    """Training loss plus TRL's reward figures, per logging step."""

    def __init__(self, on_log: Callable[[int, dict], None] | None = None):
        super().__init__({})
        self.rewards: list[dict] = []
        self._on_log = on_log

    def on_log(self, args, state, control, logs=None, **kw):
        super().on_log(args, state, control, logs=logs, **kw)
        logs = logs or {}
        row = {k.split("/", 1)[1]: float(logs[k]) for k in REWARD_KEYS if k in logs and "eval" not in k}
        if row:
            row["step"] = state.global_step
            self.rewards.append(row)
            if self._on_log is not None:
                self._on_log(state.global_step, row)


def dpo_rows(records: list[dict]) -> list[dict]:
    """TRL's preference rows; a pair with ``tools`` (corrected tool calls) rendered as the
    local backend renders it (`render_tool_messages`), the answers' calls as Hermes text."""
    return [{"prompt": render_tool_messages(r["prompt"], r.get("tools")), "chosen": render_tool_messages(r["chosen"]),
             "rejected": render_tool_messages(r["rejected"])} for r in records]


def build_dpo_trainer(snapshot: Snapshot, out_dir: Path | str, *, model_dir: Path | str, cfg: StageConfig,
                      adapter: Path | str | None = None, extra_callbacks: tuple[TrainerCallback, ...] = ()):
    """A ``DPOTrainer`` whose policy continues ``adapter`` (the SFT result) or a fresh LoRA."""
    from datasets import Dataset
    from trl import DPOTrainer

    out_dir = Path(out_dir)
    plan = device_plan(cfg)
    train = Dataset.from_list(dpo_rows(snapshot.dpo))
    args = build_args(cfg, out_dir / CHECKPOINTS, plan, include_num_input_tokens_seen="non_padding",
                      eval_strategy="no")
    model, tokenizer = load_base(model_dir, plan)
    model = attach_adapter(model, build_lora(cfg), adapter)
    callback = RewardCallback()
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         callbacks=[callback, *extra_callbacks])
    trainer.flywheel_plan = plan
    trainer.flywheel_dropped = account_truncation(trainer, len(train), {}, cfg.args.get("max_length"), "dpo")
    return trainer, callback


def train_dpo(snapshot: Snapshot, out_dir: Path | str, *, model_dir: Path | str, cfg: StageConfig,
              adapter: Path | str | None = None) -> StageResult:
    """Run DPO on ``snapshot.dpo`` into ``out_dir`` (``adapter/`` + ``checkpoints/``);
    the result's ``metrics["rewards"]`` lists the logged reward figures."""
    if not snapshot.dpo:
        raise TrainingError(f"{snapshot.path}: no DPO pairs (the job skips DPO then)")
    out_dir = Path(out_dir)
    trainer, callback = build_dpo_trainer(snapshot, out_dir, model_dir=model_dir, cfg=cfg, adapter=adapter)
    meta = {"dataset": snapshot.version, "sft_adapter": str(adapter) if adapter else None}
    result = run_trainer(trainer, callback, out_dir, "dpo", len(trainer.train_dataset), meta)
    result.metrics["rewards"] = callback.rewards
    return result
