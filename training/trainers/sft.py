"""LoRA SFT on a dataset snapshot with TRL's ``SFTTrainer``.

- Loss on assistant tokens only (``assistant_only_loss``; the bundled chat template marks
  assistant content with ``{% generation %}``). ``flywheel.assistant_turns``: ``all``
  trains on every assistant turn of a conversation; ``last`` only on the final answer
  (the conversation becomes TRL's prompt/completion form, so the earlier turns are
  context).
- Incremental: continues the parent adapter when one is given, else a fresh LoRA.
- Record weights (``weight`` in sft.jsonl) up-sample: a record is seen ``round(weight)``
  times per epoch (at least once).
- Eval loss per task type on eval.jsonl, as separate channels (``eval_<task>_loss``),
  every ``eval_steps`` and at the end, gathered by :class:`TaskLossCallback`.
- Checkpoints every ``save_steps`` under ``<out>/checkpoints``; a stage started again on
  the same folder resumes from the last one.
- Tool calls (issue 12): a record with ``tools`` (TRL's tool format: assistant
  ``tool_calls``, ``tool`` results) is rendered as the local backend renders a request
  that offers tools (`render_tool_messages`: the Hermes format of
  ``serving.backends.local.tools``, which ``serving/chat_templates/smollm2_tools.jinja``
  writes for vLLM), because the bundled chat template ignores ``tools``: the model trains
  on the very text it is served.
- ``flywheel.shared_prefix_packing``: examples that start with the same prompt tokens share
  one copy of them in a training row (``packing.py``); the loss is unchanged, the compute of
  the shared prefix is paid once. A step then holds ``per_device_train_batch_size`` packed
  rows of up to ``pack_max_examples`` examples each.
- ``flywheel.token_loss``: ``mean`` is the usual mean over answer tokens. ``focal`` weights
  each answer token by ``(1 - p)^focal_gamma`` (``p``: the model's probability of the right
  token, no gradient through the weight) and divides by the weights' sum: tokens the model
  already writes (the JSON format, ~75 of a chart answer's ~80 tokens) fall out of the loss,
  the few it gets wrong (the decisions: a chart type, whether a ``topN`` follows) carry it.
  Same compute as ``mean`` (:func:`focal_token_loss`).
- ``flywheel.replay_loss`` (with packing): how the general replay records (the dataset's
  guard against forgetting) train. ``ce`` learns their reference answers like any record;
  ``kl`` keeps the model's distribution on them where the base model's is: the loss on a
  replay answer token is ``replay_kl_beta * KL(base || tuned)`` over the vocabulary, the
  base's distribution taken from the same forward pass with the adapter switched off
  (one forward more, no gradient, on replay rows only). Learning the 44 reference answers
  by heart over many epochs is itself a drift from the base; the KL is not.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from training.trainers.config import StageConfig, build_args, build_lora, device_plan
from training.errors import TrainingError
from training.trainers.lora import attach_adapter, load_base, save_adapter
from training.datasets.snapshot import Snapshot

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"


@dataclass
class StageResult:
    """What a stage reports into run.json."""

    stage: str
    status: str
    steps: int
    resumed_from_step: int | None
    train_loss: list[dict] = field(default_factory=list)        # [{"step", "loss"}]
    eval_loss: dict[str, list[dict]] = field(default_factory=dict)  # task type -> [{"step", "loss"}]
    metrics: dict = field(default_factory=dict)
    adapter: str | None = None
    examples: int = 0
    tokens: int = 0
    train_runtime_s: float = 0.0
    tokens_per_s: float = 0.0
    device: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)  # why rows left before training, with counts
    packing: dict | None = None  # shared-prefix packing: examples, rows, tokens before/after
    supervised_tokens: int = 0   # answer tokens the loss was on (a resumed run: since the resume)

    def to_dict(self) -> dict:
        return asdict(self)


def channel_name(task_type: str) -> str:
    """The eval dataset key (and metric infix) of a task type: ``eval_<channel>_loss``."""
    return re.sub(r"[^a-z0-9]+", "_", task_type.lower()).strip("_") or "unknown"


def render_tool_messages(messages: list[dict], tools: list[dict] | None = None) -> list[dict]:
    """Plain ``{role, content}`` messages of a conversation with tools, tool calls or tool
    results, rendered exactly as the local backend renders a request (the tools in the
    system message, each call a ``<tool_call>`` block, results as a user turn of
    ``<tool_response>`` blocks); other conversations come back as they are."""
    if not tools and not any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        return messages
    from serving.backends.base import GenerationRequest
    from serving.backends.local.tools import render_messages

    def as_openai(m: dict) -> dict:
        if not m.get("tool_calls"):
            return m
        calls = [{**c, "id": c.get("id") or f"call_{k}", "function": {
            "name": c["function"]["name"],
            "arguments": c["function"]["arguments"] if isinstance(c["function"]["arguments"], str)
            else json.dumps(c["function"]["arguments"], ensure_ascii=False)}} for k, c in enumerate(m["tool_calls"])]
        return {**m, "tool_calls": calls}

    return render_messages(GenerationRequest(messages=tuple(as_openai(m) for m in messages), tools=tuple(tools or ())))


def _conversation(messages: list[dict], assistant_turns: str, tools: list[dict] | None = None) -> dict:
    messages = render_tool_messages(messages, tools)
    if assistant_turns == "last":
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    return {"messages": messages}


def sft_rows(records: list[dict], assistant_turns: str = "all") -> list[dict]:
    """Training rows in TRL's conversational format, weights applied as repeats; ``replay``
    marks the general replay records (``flywheel.replay_loss``)."""
    from training.datasets.builder import REPLAY_TASK

    rows = []
    for rec in records:
        row = {**_conversation(rec["messages"], assistant_turns, rec.get("tools")),
               "replay": rec.get("task_type") == REPLAY_TASK}
        rows += [row] * max(1, round(rec.get("weight", 1.0)))
    return rows


def eval_rows_by_task(records: list[dict], assistant_turns: str = "all") -> dict[str, list[dict]]:
    by_task: dict[str, list[dict]] = {}
    for rec in records:
        by_task.setdefault(channel_name(rec["task_type"]), []).append(
            _conversation(rec["messages"], assistant_turns, rec.get("tools")))
    return by_task


class TaskLossCallback(TrainerCallback):
    """Collects the per-task-type eval losses (one channel per task) and the training loss
    as the trainer logs them; ``on_channels`` (if given) sees each eval round."""

    def __init__(self, channels: dict[str, str], on_channels: Callable[[int, dict], None] | None = None):
        self.channels = channels  # channel -> task type
        self.eval_loss: dict[str, list[dict]] = {t: [] for t in channels.values()}
        self.train_loss: list[dict] = []
        self.on_channels = on_channels

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "loss" in logs:
            self.train_loss.append({"step": state.global_step, "loss": float(logs["loss"])})
        seen = {}
        for channel, task in self.channels.items():
            key = f"eval_{channel}_loss"
            if key in logs:
                seen[task] = float(logs[key])
                self.eval_loss[task].append({"step": state.global_step, "loss": seen[task]})
        if seen and self.on_channels is not None:
            self.on_channels(state.global_step, seen)


def last_checkpoint(folder: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not folder.is_dir():
        return None
    found = get_last_checkpoint(str(folder))
    return Path(found) if found else None


def checkpoint_step(path: Path | None) -> int | None:
    return int(path.name.rsplit("-", 1)[1]) if path is not None else None


def build_sft_trainer(snapshot: Snapshot, out_dir: Path | str, *, model_dir: Path | str, cfg: StageConfig,
                      parent: Path | str | None = None, extra_callbacks=()):
    """An ``SFTTrainer`` ready to train (model, adapter, datasets, callbacks), and the
    :class:`TaskLossCallback` that gathers its loss channels."""
    from datasets import Dataset

    out_dir = Path(out_dir)
    plan = device_plan(cfg)
    turns = cfg.flywheel.get("assistant_turns", "all")
    train = Dataset.from_list(sft_rows(snapshot.sft, turns))
    evals = eval_rows_by_task(snapshot.eval, turns) if cfg.flywheel.get("per_task_eval", True) else {}
    eval_sets = {ch: Dataset.from_list(rows) for ch, rows in evals.items()}
    task_of = {channel_name(r["task_type"]): r["task_type"] for r in snapshot.eval}
    extra = {"include_num_input_tokens_seen": "non_padding"}
    if eval_sets:
        extra["eval_strategy"] = cfg.args.get("eval_strategy", "steps")
    else:
        extra["eval_strategy"] = "no"
    args = build_args(cfg, out_dir / CHECKPOINTS, plan, **extra)
    model, tokenizer = load_base(model_dir, plan)
    model = attach_adapter(model, build_lora(cfg), parent)
    callback = TaskLossCallback({ch: task_of.get(ch, ch) for ch in eval_sets})
    packing = cfg.flywheel.get("shared_prefix_packing", False)
    trainer = flywheel_trainer_class()(model=model, args=args, train_dataset=train, eval_dataset=eval_sets or None,
                                       processing_class=tokenizer, callbacks=[callback, *extra_callbacks])
    trainer.flywheel_plan = plan
    if cfg.flywheel.get("token_loss", "mean") == "focal":
        trainer.flywheel_focal_gamma = float(cfg.flywheel.get("focal_gamma", 2.0))
    if cfg.flywheel.get("replay_loss", "ce") == "kl":
        if packing:
            trainer.flywheel_replay_kl_beta = float(cfg.flywheel.get("replay_kl_beta", 1.0))
        else:  # the packed rows carry which examples are replay; TRL's rows do not
            log.warning("sft: flywheel.replay_loss=kl needs shared_prefix_packing; the replay records train on "
                        "their reference answers (ce)")
    trainer.flywheel_dropped = account_truncation(trainer, len(train), {ch: len(d) for ch, d in eval_sets.items()},
                                                  cfg.args.get("max_length"), "sft")
    trainer.flywheel_packing = None
    if packing:
        trainer.flywheel_packing = pack_train_dataset(trainer, tokenizer, cfg)
    return trainer, callback


def pack_train_dataset(trainer, tokenizer, cfg: StageConfig) -> dict:
    """Replace the trainer's tokenized training set (TRL built input_ids and labels) by
    shared-prefix packed rows, and its collator by the one that builds their attention."""
    from datasets import Dataset

    from training.trainers.packing import SharedPrefixCollator, pack_shared_prefix

    examples = list(trainer.train_dataset.select_columns(["input_ids", "labels", "replay"]))
    rows, stats = pack_shared_prefix(
        examples, max_length=int(cfg.flywheel.get("pack_max_length", 2048)),
        max_examples=int(cfg.flywheel.get("pack_max_examples", 8)))
    trainer.train_dataset = Dataset.from_list(rows)
    trainer._set_signature_columns_if_needed()  # TRL keeps the model's inputs and seq_lengths; we add `replay`
    trainer._signature_columns = [*trainer._signature_columns, "replay"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer.data_collator = SharedPrefixCollator(pad, dtype=next(trainer.model.parameters()).dtype)
    log.info("shared-prefix packing: %d examples in %d rows, %d -> %d tokens (%.0f%% saved)", stats.examples,
             stats.rows, stats.tokens_before, stats.tokens_after, 100 * stats.saved)
    return stats.to_dict()


def focal_token_loss(log_probs, label_mask, gamma: float):
    """The focal loss over answer tokens: ``sum(w * -log p) / sum(w)`` with
    ``w = (1 - p)^gamma`` detached (``log_probs``: each position's log-probability of its
    label, zero where ``label_mask`` is false). ``gamma = 0`` is the mean loss."""
    import torch

    mask = label_mask.to(log_probs.dtype)
    weights = ((1 - log_probs.detach().exp()).clamp(min=0) ** gamma) * mask
    return (weights * -log_probs).sum() / weights.sum().clamp(min=torch.finfo(log_probs.dtype).tiny)


def replay_kl(model, model_inputs: dict, replay, keep, log_probs):
    """KL(base || tuned) at each kept position of the `replay` rows (zeros elsewhere):
    the base's distribution from the same rows with the adapter switched off, no gradient.
    `log_probs`: the tuned model's log-softmax at the kept positions, (rows, kept, vocab)."""
    import torch

    rows = replay.nonzero().squeeze(-1)
    with torch.no_grad(), model.disable_adapter():
        base = model(**{k: v[rows] for k, v in model_inputs.items()}, use_cache=False, logits_to_keep=keep)
        base_log_probs = base.logits.float().log_softmax(-1)
    kl = torch.zeros(log_probs.shape[:2], dtype=log_probs.dtype, device=log_probs.device)
    kl[rows] = (base_log_probs.exp() * (base_log_probs - log_probs[rows])).sum(-1)
    return kl


def flywheel_trainer_class():
    """TRL's ``SFTTrainer`` that also counts the tokens of supervision it trained on (answer
    tokens: the figure that matters when prompts are long and shared), and counts computed
    tokens right under shared-prefix packing's 4D attention mask (Trainer and TRL sum the
    mask, which is a padding mask only in 2D)."""
    import torch
    from trl import SFTTrainer

    from training.trainers.packing import IGNORE, real_tokens

    class FlywheelSFTTrainer(SFTTrainer):
        flywheel_supervised_tokens = 0
        flywheel_focal_gamma: float | None = None  # set: the focal token loss (training only)
        flywheel_answer_head = True  # training: the LM head only where labels are (False: TRL's path, for benches)
        flywheel_replay_kl_beta: float | None = None  # set: replay rows train on KL(base || tuned) (training only)

        def _track_num_input_tokens(self, inputs):
            if self.args.include_num_input_tokens_seen != "no":
                self.state.num_input_tokens_seen += real_tokens(inputs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            before = self._total_train_tokens
            tokens = real_tokens(inputs)
            replay = inputs.pop("replay", None)  # which rows are general replay (packed batches only)
            kl = self.flywheel_replay_kl_beta is not None and replay is not None and bool(replay.any())
            if self.model.training and (self.flywheel_answer_head or self.flywheel_focal_gamma is not None or kl):
                out = self._answer_loss(model, inputs, return_outputs, num_items_in_batch, replay if kl else None)
            else:
                out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                           num_items_in_batch=num_items_in_batch)
            if self.model.training:
                self._total_train_tokens = before + tokens
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
                self.flywheel_supervised_tokens += int((inputs["labels"] != IGNORE).sum())
            return out

        def _answer_loss(self, model, inputs, return_outputs, num_items_in_batch, replay=None):
            # The LM head only where a label is (`logits_to_keep` as positions): a packed
            # row's prompt is most of its tokens, and TRL's fused head scores every position
            # off GPU (a third of a CPU step went there). Same loss as TRL's `nll`.
            labels = inputs["labels"][:, 1:]
            # `replay`: rows whose answers train on KL toward the base (None: none)
            keep = (labels != IGNORE).any(0).nonzero().squeeze(-1)
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            outputs = model(**model_inputs, use_cache=False, logits_to_keep=keep)
            targets = labels[:, keep]
            mask = targets != IGNORE
            vocab_log_probs = outputs.logits.float().log_softmax(-1)  # once, for the loss and the metrics
            log_probs = vocab_log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            ce_mask = mask if replay is None else mask & ~replay[:, None]
            count = torch.as_tensor(mask.sum() if num_items_in_batch is None else num_items_in_batch).clamp(min=1)
            if self.flywheel_focal_gamma is not None:
                loss = focal_token_loss(log_probs, ce_mask, self.flywheel_focal_gamma)
                if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                    # the Trainer leaves gradient accumulation to such a loss: a mean per micro-batch
                    loss = loss / self.current_gradient_accumulation_steps
            else:
                loss = -(log_probs * ce_mask).sum() / count
            if replay is not None:
                kl = replay_kl(model, model_inputs, replay, keep, vocab_log_probs)
                loss = loss + self.flywheel_replay_kl_beta * (kl * (mask & replay[:, None])).sum() / count
            valid = int(mask.sum())
            if valid:
                with torch.no_grad():
                    lp = vocab_log_probs[mask]
                    entropy = -(lp.exp() * lp).sum(-1)
                    self._metrics["train"]["entropy"].append(float(entropy.mean()))
                    top1 = lp.argmax(-1) == targets[mask]
                    self._metrics["train"]["mean_token_accuracy"].append(float(top1.float().mean()))
            return (loss, outputs) if return_outputs else loss

    return FlywheelSFTTrainer


def account_truncation(trainer, train_rows: int, eval_rows: dict[str, int], max_length, stage: str) -> dict:
    """TRL drops rows whose answer is cut off entirely at ``max_length``: count them (run.json
    keeps the reason), stop when nothing is left to train on, and drop an eval channel left
    empty rather than crash on it."""
    dropped = {}
    lost = train_rows - len(trainer.train_dataset)
    if lost:
        dropped["train_answer_truncated_away"] = lost
        log.warning("%s: %d of %d training rows lost their whole answer to truncation at max_length=%s",
                    stage, lost, train_rows, max_length)
    if len(trainer.train_dataset) == 0:
        raise TrainingError(f"{stage}: every training row lost its answer to truncation at max_length={max_length}; "
                            f"raise {stage}.args.max_length")
    if isinstance(trainer.eval_dataset, dict):
        for ch in list(trainer.eval_dataset):
            lost = eval_rows.get(ch, 0) - len(trainer.eval_dataset[ch])
            if lost:
                dropped[f"eval_{ch}_answer_truncated_away"] = lost
            if len(trainer.eval_dataset[ch]) == 0:
                del trainer.eval_dataset[ch]
        if not trainer.eval_dataset:
            from transformers.trainer_utils import IntervalStrategy

            trainer.eval_dataset = None
            trainer.args.eval_strategy = IntervalStrategy.NO
    return dropped


def run_trainer(trainer, callback: TaskLossCallback, out_dir: Path, stage: str, examples: int,
                meta: dict | None = None) -> StageResult:
    """Train (resuming from the last checkpoint in ``out_dir/checkpoints``), evaluate each
    channel once more, save the adapter to ``out_dir/adapter``."""
    resume = last_checkpoint(out_dir / CHECKPOINTS)
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    runtime = time.monotonic() - started
    evaluated_last = any(p and p[-1]["step"] == trainer.state.global_step for p in callback.eval_loss.values())
    if trainer.eval_dataset and not evaluated_last:  # the channels' figures at the final step, once
        trainer.evaluate()
    state = trainer.state
    tokens = int(state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0))
    adapter = out_dir / ADAPTER
    if trainer.is_world_process_zero():  # under `accelerate launch`, one process writes
        save_adapter(trainer.model, adapter, {"stage": stage, "steps": state.global_step, **(meta or {})})
    train_runtime = float(output.metrics.get("train_runtime", runtime))
    return StageResult(
        stage=stage, status="done", steps=state.global_step, resumed_from_step=checkpoint_step(resume),
        train_loss=callback.train_loss, eval_loss=callback.eval_loss,
        metrics={k: v for k, v in output.metrics.items() if isinstance(v, (int, float))},
        adapter=str(adapter), examples=examples, tokens=tokens, train_runtime_s=round(train_runtime, 3),
        tokens_per_s=round(tokens / train_runtime, 2) if train_runtime > 0 else 0.0,
        device=getattr(trainer, "flywheel_plan").to_dict(), dropped=getattr(trainer, "flywheel_dropped", {}),
        packing=getattr(trainer, "flywheel_packing", None),
        supervised_tokens=int(getattr(trainer, "flywheel_supervised_tokens", 0)))


def train_sft(snapshot: Snapshot, out_dir: Path | str, *, model_dir: Path | str, cfg: StageConfig,
              parent: Path | str | None = None) -> StageResult:
    """Run LoRA SFT on ``snapshot.sft`` into ``out_dir`` (``adapter/`` + ``checkpoints/``)."""
    if not snapshot.sft:
        raise TrainingError(f"{snapshot.path}: no SFT records")
    out_dir = Path(out_dir)
    trainer, callback = build_sft_trainer(snapshot, out_dir, model_dir=model_dir, cfg=cfg, parent=parent)
    meta = {"dataset": snapshot.version, "parent_adapter": str(parent) if parent else None}
    return run_trainer(trainer, callback, out_dir, "sft", len(trainer.train_dataset), meta)
