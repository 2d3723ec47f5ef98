"""Training on dataset snapshots: LoRA SFT, DPO, the job and `flywheel train`.

Real parts: the bundled SmolLM2-135M, TRL's trainers, a subprocess job killed with
SIGKILL and resumed, the registry in a DuckDB file. Tiny data and a few steps keep each
test within a couple of minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE, REPO, free_port, query, wait_for
from training.trainers.config import load_stage_config, parse_overrides
from training.errors import SnapshotError, TrainingConfigError
from training.datasets.snapshot import load_snapshot, write_snapshot

CHART = '{"chartType": "CHART_COLUMN", "chartFields": {"dimensions": ["Region"], "metrics": ["Sales"]}}'
SMALL = {"max_length": 96, "per_device_train_batch_size": 2, "per_device_eval_batch_size": 4, "logging_steps": 1,
         "save_steps": 100, "eval_steps": 100}


def tiny_snapshot(folder: Path, version: str = "tiny-1", *, dpo: bool = True) -> Path:
    sft, pairs = [], []
    for i, region in enumerate(["Region", "City", "Country", "Store"]):
        sft.append({"messages": [{"role": "system", "content": "Answer with JSON."},
                                 {"role": "user", "content": f"sales by {region.lower()}"},
                                 {"role": "assistant", "content": CHART.replace("Region", region)}],
                    "task_type": "chart_config", "weight": 1.0, "source_ids": [f"evt-{i}"]})
        sft.append({"messages": [{"role": "user", "content": f"Say hello to {region}."},
                                 {"role": "assistant", "content": f"Hello, {region}!"},
                                 {"role": "user", "content": "Once more, please."},
                                 {"role": "assistant", "content": f"Hello again, {region}!"}],
                    "task_type": "chitchat", "weight": 1.0, "source_ids": [f"evt-c{i}"]})
        pairs.append({"prompt": [{"role": "user", "content": f"sales by {region.lower()}"}],
                      "chosen": [{"role": "assistant", "content": CHART.replace("Region", region)}],
                      "rejected": [{"role": "assistant", "content": "A pie chart of everything, I think."}],
                      "task_type": "chart_config"})
    evals = [{"messages": [{"role": "user", "content": "sales by segment"},
                           {"role": "assistant", "content": CHART.replace("Region", "Segment")}],
              "task_type": "chart_config"},
             {"messages": [{"role": "user", "content": "Say hello to Paris."},
                           {"role": "assistant", "content": "Hello, Paris!"}], "task_type": "chitchat"}]
    return write_snapshot(folder, version=version, sft=sft, dpo=pairs if dpo else [], eval=evals)


def sft_cfg(**args):
    return load_stage_config("sft", overrides={"args": {**SMALL, **args}})


# -- snapshots and configs (no model) ---------------------------------------------------
def test_snapshot_roundtrip_and_strict_errors(tmp_path):
    snap = load_snapshot(tiny_snapshot(tmp_path / "s"))
    assert snap.version == "tiny-1" and len(snap.sft) == 8 and len(snap.dpo) == 4 and len(snap.eval) == 2
    assert snap.manifest["counts"] == {"sft": 8, "dpo": 4, "eval": 2}
    assert snap.task_types() == ["chart_config", "chitchat"]

    bad = tmp_path / "s" / "sft.jsonl"
    lines = bad.read_text().splitlines()
    lines[2] = json.dumps({"messages": [{"role": "user", "content": "no answer"}], "task_type": "x"})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(SnapshotError, match=r"sft.jsonl:3: the last of 'messages' must be the assistant"):
        load_snapshot(tmp_path / "s")
    with pytest.raises(SnapshotError, match="does not exist"):
        load_snapshot(tmp_path / "nope")
    (tmp_path / "s" / "sft.jsonl").write_text("\n".join(lines[:1] + lines[3:]) + "\n")
    with pytest.raises(SnapshotError, match="the manifest counts 8 sft records"):
        load_snapshot(tmp_path / "s")


def test_config_overrides_and_unknown_keys():
    parsed = parse_overrides(["sft.args.max_steps=4", "dpo.args.beta=0.2", "sft.flywheel.assistant_turns=last"])
    cfg = load_stage_config("sft", overrides=parsed["sft"])
    assert cfg.args["max_steps"] == 4 and cfg.flywheel["assistant_turns"] == "last"
    assert cfg.args["assistant_only_loss"] is True and cfg.lora["target_modules"] == "all-linear"
    assert load_stage_config("dpo", overrides=parsed["dpo"]).args["beta"] == 0.2
    with pytest.raises(TrainingConfigError, match="max_seq_length are not SFTConfig fields"):
        load_stage_config("sft", overrides=[("args", "max_seq_length", 128)])
    with pytest.raises(TrainingConfigError, match="assistant_turns must be 'all' or 'last'"):
        load_stage_config("sft", overrides=[("flywheel", "assistant_turns", "first")])
    with pytest.raises(TrainingConfigError, match="STAGE.SECTION.KEY=VALUE"):
        parse_overrides(["max_steps=4"])

    from training.trainers.config import build_args, cpu_has_native_bf16

    args = build_args(load_stage_config("dpo"), "/tmp/unused")
    assert args.learning_rate > 1e-6  # above TRL's default
    # CPU: bf16 where the CPU multiplies bf16 in hardware (AMX), fp32 elsewhere; the config decides if it says
    assert args.bf16 is cpu_has_native_bf16() and args.use_cpu is True
    assert build_args(load_stage_config("sft", overrides=[("args", "bf16", False)]), "/tmp/unused").bf16 is False
    assert build_args(load_stage_config("sft", overrides=[("args", "bf16", True)]), "/tmp/unused").bf16 is True


# -- SFT ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("turns", ["all", "last"])
def test_labels_mask_every_prompt_token(tmp_path, model_dir, turns):
    """On the collated tensors: every label != -100 lies inside an assistant reply (its
    content and the closing <|im_end|>), and every assistant reply that should be learned
    is there, whole; with `last`, only the final reply of a conversation."""
    from training.trainers.sft import build_sft_trainer

    snap = load_snapshot(tiny_snapshot(tmp_path / "s"))
    cfg = load_stage_config("sft", overrides={"args": {**SMALL, "per_device_train_batch_size": 8, "max_length": 256},
                                              # TRL's own collation, one example a row (packed rows: test_packing.py)
                                              "flywheel": {"assistant_turns": turns, "shared_prefix_packing": False}})
    trainer, _ = build_sft_trainer(snap, tmp_path / "out", model_dir=model_dir, cfg=cfg)
    batch = next(iter(trainer.get_train_dataloader()))
    tok = trainer.processing_class
    ids, labels = batch["input_ids"], batch["labels"]
    assert labels.shape == ids.shape and ids.shape[0] == 8
    expected_by_text = {}
    for rec in snap.sft:
        replies = [m["content"] for m in rec["messages"] if m["role"] == "assistant"]
        expected_by_text[rec["messages"][-1]["content"]] = replies if turns == "all" else replies[-1:]
    seen = set()
    for row in range(ids.shape[0]):
        keep = labels[row] != -100
        assert (labels[row][keep] == ids[row][keep]).all()
        runs, current = [], []
        for pos in range(ids.shape[1]):
            if keep[pos]:
                current.append(int(ids[row, pos]))
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        learned = [tok.decode(r) for r in runs]
        assert all(text.endswith("<|im_end|>") for text in learned), learned
        contents = [text[: -len("<|im_end|>")] for text in learned]
        expected = expected_by_text[contents[-1]]
        assert contents == expected, f"row {row}: learned {contents}, expected {expected}"
        # and nothing of the prompt: the masked text holds every user/system message
        masked = tok.decode(ids[row][~keep & (batch["attention_mask"][row] == 1)])
        assert "<|im_start|>user" in masked and "<|im_start|>system" in masked
        seen.add(contents[-1])
    assert len(seen) == 8


@pytest.mark.slow
def test_rows_truncated_away_are_counted_not_dropped_silently(tmp_path, model_dir):
    from training.errors import TrainingError
    from training.trainers.sft import build_sft_trainer

    folder = tiny_snapshot(tmp_path / "s")
    long_prompt = "Please chart this: " + "sales by region and month " * 40
    evals = [json.loads(x) for x in (folder / "eval.jsonl").read_text().splitlines()]
    evals[0]["messages"][0]["content"] = long_prompt  # the chart_config channel's only row
    sft = [json.loads(x) for x in (folder / "sft.jsonl").read_text().splitlines()]
    sft[0]["messages"][1]["content"] = long_prompt
    snap = load_snapshot(write_snapshot(tmp_path / "s2", version="t", sft=sft, eval=evals))
    trainer, _ = build_sft_trainer(snap, tmp_path / "out", model_dir=model_dir, cfg=sft_cfg(max_length=64))
    assert trainer.flywheel_dropped == {"train_answer_truncated_away": 1, "eval_chart_config_answer_truncated_away": 1}
    assert trainer.flywheel_packing["examples"] == 7  # the packed rows hold the 7 examples left
    assert set(trainer.eval_dataset) == {"chitchat"}
    with pytest.raises(TrainingError, match="raise sft.args.max_length"):
        build_sft_trainer(snap, tmp_path / "out2", model_dir=model_dir, cfg=sft_cfg(max_length=4))


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, model_dir):
    """One short SFT run shared by the SFT and DPO tests."""
    from training.trainers.lora import lora_state
    from training.trainers.sft import build_sft_trainer, run_trainer

    tmp = tmp_path_factory.mktemp("sft")
    snap = load_snapshot(tiny_snapshot(tmp / "s"))
    cfg = sft_cfg(max_steps=5, learning_rate=1e-3, eval_steps=5)
    trainer, callback = build_sft_trainer(snap, tmp / "out", model_dir=model_dir, cfg=cfg)
    before = lora_state(trainer.model)
    result = run_trainer(trainer, callback, tmp / "out", "sft", len(trainer.train_dataset))
    return {"snap": snap, "result": result, "before": before, "after": lora_state(trainer.model), "dir": tmp}


@pytest.mark.slow
def test_sft_changes_the_adapter_lowers_the_loss_and_logs_per_task_eval(sft_run, model_dir):
    import torch

    from training.trainers.lora import lora_state
    from training.trainers.sft import build_sft_trainer

    result, before, after = sft_run["result"], sft_run["before"], sft_run["after"]
    assert result.status == "done" and result.steps == 5 and result.resumed_from_step is None
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before) > 0, "every LoRA matrix should have moved"
    losses = [p["loss"] for p in result.train_loss]
    assert len(losses) == 5 and losses[-1] < losses[0], losses
    # one eval-loss channel per task type of eval.jsonl, evaluated at step 5 (= the end, once)
    assert set(result.eval_loss) == {"chart_config", "chitchat"}
    assert all([p["step"] for p in points] == [5] for points in result.eval_loss.values())
    assert result.tokens > 0 and result.tokens_per_s > 0
    adapter = Path(result.adapter)
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "ref").exists()

    # incremental: a new run on the parent adapter starts from its weights, not from zero
    trainer, _ = build_sft_trainer(sft_run["snap"], sft_run["dir"] / "child", model_dir=model_dir,
                                   cfg=sft_cfg(max_steps=1), parent=adapter)
    start = lora_state(trainer.model)
    assert start.keys() == after.keys()
    assert all(torch.allclose(start[k], after[k]) for k in after)


# -- DPO ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_dpo_from_the_sft_adapter_grows_the_reward_margin(sft_run, model_dir):
    from training.trainers.dpo import train_dpo

    cfg = load_stage_config("dpo", overrides={"args": {"max_steps": 3, "max_length": 96, "learning_rate": 5e-4,
                                                       "per_device_train_batch_size": 2,
                                                       "gradient_accumulation_steps": 1, "save_steps": 100}})
    out = sft_run["dir"] / "dpo"
    result = train_dpo(sft_run["snap"], out, model_dir=model_dir, cfg=cfg, adapter=sft_run["result"].adapter)
    margins = [r["margins"] for r in result.metrics["rewards"]]
    assert len(margins) == 3, result.metrics["rewards"]
    assert margins[-1] > margins[0] and margins[-1] > 0, margins
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 16 and not (out / "adapter" / "ref").exists()  # the frozen reference is not saved


# -- the job and `flywheel train` ----------------------------------------------------------
def _complete_checkpoints(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())


@pytest.mark.slow
def test_flywheel_train_killed_after_a_checkpoint_resumes_and_registers(tmp_path, model_dir):
    data = tmp_path / "data"
    tiny_snapshot(data / "datasets" / "tiny-1", dpo=False)
    env = {**os.environ, "FLYWHEEL_DATA_DIR": str(data), "FLYWHEEL_MODEL__CACHE_DIR": str(MODEL_CACHE),
           "FLYWHEEL_CONTROL__PORT": str(free_port()), "FLYWHEEL_TRAINING__CHECKPOINT_STEPS": "2",
           "FLYWHEEL_TRAINING__DPO": "true",  # on, so the stage is skipped for the snapshot's lack of pairs
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "flywheel.cli", "train", "--dataset", "tiny-1", "--run-id", "r1",
           "--set", "sft.args.max_steps=6", "--set", "sft.args.max_length=96",
           "--set", "sft.args.per_device_train_batch_size=1", "--set", "sft.args.eval_steps=100"]
    ckpts = data / "runs" / "r1" / "sft" / "checkpoints"
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own process group: the CLI and the job die together
    try:
        wait_for(lambda: _complete_checkpoints(ckpts) or proc.poll() is not None, timeout=400, interval=0.2,
                 what="a first checkpoint")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    time.sleep(0.5)
    killed_at = max(_complete_checkpoints(ckpts))
    assert killed_at < 6
    first = json.loads((data / "runs" / "r1" / "run.json").read_text())
    assert first["status"] == "running"  # SIGKILL: nothing could record the end

    done = subprocess.run(cmd + ["--version", "cand-1"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = json.loads((data / "runs" / "r1" / "run.json").read_text())
    sft = run["stages"]["sft"]
    assert run["status"] == "done" and run["attempts"] == 2
    assert sft["resumed_from_step"] == killed_at and sft["steps"] == 6
    assert [p["step"] for p in sft["train_loss"]] == list(range(killed_at + 1, 7))  # continued, not restarted
    assert run["stages"]["dpo"]["status"] == "skipped" and "no DPO pairs" in run["stages"]["dpo"]["reason"]
    assert (data / "runs" / "r1" / "adapter" / "adapter_model.safetensors").is_file()
    assert "registered cand-1 (candidate)" in done.stdout
    rows = query(data / "flywheel.duckdb", "SELECT status, dataset, training_run, parent_version, adapter_path "
                                           "FROM model_versions WHERE version = 'cand-1'")
    assert rows and rows[0][:4] == ("candidate", "tiny-1", "r1", "base")
    assert (Path(rows[0][4]) / "adapter_config.json").is_file()


@pytest.mark.slow
def test_job_runs_sft_then_dpo_and_records_the_run(tmp_path, model_dir):
    from training.trainers.job import run_job

    snap = tiny_snapshot(tmp_path / "s")
    sets = ["sft.args.max_steps=2", "sft.args.max_length=96", "sft.args.per_device_train_batch_size=2",
            "sft.args.eval_steps=100", "dpo.args.max_steps=2", "dpo.args.max_length=96",
            "dpo.args.per_device_train_batch_size=2", "dpo.args.gradient_accumulation_steps=1"]
    run = run_job(snap, tmp_path / "run", model_dir=model_dir, overrides=sets)
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())
    assert on_disk["status"] == run["status"] == "done" and on_disk["error"] is None
    assert on_disk["steps_by_stage"] == {"sft": 2, "dpo": 2} and on_disk["steps"] == 4
    assert set(on_disk["eval_loss_by_task"]) == {"chart_config", "chitchat"}
    assert len(on_disk["stages"]["dpo"]["metrics"]["rewards"]) == 2
    assert on_disk["tokens_per_s"]["sft"] > 0 and on_disk["timings_s"]["sft"] > 0
    assert on_disk["configs"]["sft"]["args"]["max_steps"] == 2
    # the final adapter is DPO's, in PEFT format
    import filecmp

    final, dpo = tmp_path / "run" / "adapter", tmp_path / "run" / "dpo" / "adapter"
    assert filecmp.cmp(final / "adapter_model.safetensors", dpo / "adapter_model.safetensors", shallow=False)
    # a finished run started again trains nothing more
    again = run_job(snap, tmp_path / "run", model_dir=model_dir, overrides=sets)
    assert again["attempts"] == 2 and again["steps"] == 4


def test_plan_job_picks_the_production_adapter_and_passes_the_settings(tmp_path):
    from flywheel.settings import Settings
    from training.errors import JobError
    from training.trainers.runner import plan_job

    s = Settings(data_dir=str(tmp_path / "data")).replace(training={"checkpoint_steps": 7, "assistant_turns": "last"})
    tiny_snapshot(s.data_path / "datasets" / "ds-1")
    versions = [{"version": "base", "status": "retired", "adapter_path": None, "updated_at": "2026-01-01"},
                {"version": "v1", "status": "production", "adapter_path": "/models/v1", "updated_at": "2026-02-01"},
                {"version": "v2", "status": "candidate", "adapter_path": "/models/v2", "updated_at": "2026-03-01"}]
    plan = plan_job(s, "ds-1", model_dir="/m", versions=versions, run_id="r1", overrides=("sft.args.max_steps=3",))
    assert plan.parent_version == "v1" and str(plan.parent_adapter) == "/models/v1"
    assert plan.out_dir == s.data_path / "runs" / "r1"
    cmd = " ".join(plan.command)
    assert "-m training.trainers.job" in cmd and "--parent /models/v1" in cmd and "--model-dir /m" in cmd
    assert "--set sft.args.save_steps=7" in cmd and "--set sft.flywheel.assistant_turns=last" in cmd
    assert cmd.endswith("--set sft.args.max_steps=3")  # the command line's overrides win over the settings'
    assert plan_job(s, "ds-1", model_dir="/m", versions=versions, parent="v2").parent_version == "v2"
    fresh = plan_job(s, "ds-1", model_dir="/m", versions=versions, fresh=True)
    assert fresh.parent_adapter is None and "--parent" not in fresh.command
    with pytest.raises(JobError, match="no model version 'v9'"):
        plan_job(s, "ds-1", model_dir="/m", versions=versions, parent="v9")
    with pytest.raises(SnapshotError, match=r"no dataset snapshot 'nope'.*have: ds-1"):
        plan_job(s, "nope", model_dir="/m", versions=versions)
