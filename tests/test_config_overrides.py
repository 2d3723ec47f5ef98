"""Training config values are checked against their types where they enter (#10): `--set`
overrides, `refresh.train_overrides` and the YAML files. Fast: nothing trains."""

from __future__ import annotations

import pytest
import yaml

from flywheel.settings import Settings
from training.errors import TrainingConfigError
from training.trainers.config import (
    build_args,
    build_lora,
    check_overrides,
    default_config_path,
    load_stage_config,
    parse_overrides,
)


def test_an_override_is_coerced_by_its_field_type(tmp_path):
    parsed = parse_overrides(["sft.args.learning_rate=1e-3", "sft.args.max_steps='4'", "sft.lora.r='8'",
                              "sft.args.run_name=123", "sft.flywheel.per_task_eval=0", "dpo.args.beta=2e-1"])
    assert ("args", "learning_rate", "1e-3") in parsed["sft"]  # what PyYAML makes of a float without a dot
    cfg = load_stage_config("sft", overrides=parsed["sft"])
    assert cfg.args["learning_rate"] == 0.001 and isinstance(cfg.args["learning_rate"], float)
    assert cfg.args["max_steps"] == 4 and cfg.lora["r"] == 8 and cfg.args["run_name"] == "123"
    assert cfg.flywheel["per_task_eval"] is False
    assert load_stage_config("dpo", overrides=parsed["dpo"]).args["beta"] == 0.2
    args = build_args(cfg, tmp_path)  # reaches TRL (and torch's optimizer) as a number
    assert args.learning_rate == 0.001 and args.max_steps == 4
    assert build_lora(cfg).r == 8


def test_values_that_fit_are_kept_as_written():
    raw = yaml.safe_load(default_config_path("sft").read_text())
    cfg = load_stage_config("sft")
    assert (cfg.args, cfg.lora, cfg.flywheel) == (raw["args"], raw["lora"], raw["flywheel"])
    # a pattern PEFT documents as a Literal value ('pissa_niter_[number of iters]') is a pattern
    assert load_stage_config("sft", overrides=[("lora", "init_lora_weights", "pissa_niter_4")]).lora[
        "init_lora_weights"] == "pissa_niter_4"


def test_values_in_the_yaml_file_are_coerced_too(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("args:\n  learning_rate: 1e-3\n  max_steps: '7'\nlora:\n  r: 8\n")
    cfg = load_stage_config("sft", path)
    assert cfg.args == {"learning_rate": 0.001, "max_steps": 7}
    path.write_text("args:\n  learning_rate: fast\n")
    with pytest.raises(TrainingConfigError) as err:
        load_stage_config("sft", path)
    assert str(path) in str(err.value) and "args.learning_rate must be float, got 'fast'" in str(err.value)
    assert "override" not in str(err.value)


@pytest.mark.parametrize("item, message", [
    ("sft.args.learning_rate=fast", r"args.learning_rate must be float, got 'fast' \(from an override\): .*number"),
    ("sft.args.max_steps=1.5", r"args.max_steps must be int, got 1.5 .*fractional"),
    ("dpo.args.beta=[0.1]", r"dpo config .*args.beta must be float, got \[0.1\]"),
    ("sft.lora.bias=some", r"lora.bias must be 'none' or 'all' or 'lora_only', got 'some'"),
    ("sft.lora.r=eight", r"lora.r must be int, got 'eight'"),
    ("sft.flywheel.qlora=maybe", r"flywheel.qlora must be bool, got 'maybe'"),
    ("sft.flywheel.assistant_turns=first", r"flywheel.assistant_turns must be 'all' or 'last', got 'first'"),
    ("sft.args.learning_rat=1e-3", r"args learning_rat are not SFTConfig fields"),
    ("sft.flywheel.packing_mode=1", r"flywheel.packing_mode is not an option"),
    ("sft.optim.lr=1", r"STAGE.SECTION.KEY=VALUE"),
])
def test_a_bad_override_is_rejected_with_the_key_and_the_reason(item, message):
    with pytest.raises(TrainingConfigError, match=message):
        check_overrides([item])


def test_flywheel_train_checks_overrides_before_it_starts_a_job(tmp_path):
    from tests.test_training import tiny_snapshot
    from training.trainers.runner import plan_job

    s = Settings(data_dir=str(tmp_path / "data"))
    tiny_snapshot(s.data_path / "datasets" / "ds-1")
    plan = plan_job(s, "ds-1", model_dir="/m", versions=[], overrides=("sft.args.learning_rate=1e-3",))
    assert plan.command[-2:] == ["--set", "sft.args.learning_rate=1e-3"]  # the job coerces it the same way
    with pytest.raises(TrainingConfigError, match="args.learning_rate must be float, got 'fast'"):
        plan_job(s, "ds-1", model_dir="/m", versions=[], overrides=("sft.args.learning_rate=fast",))
    assert not s.runs_path.exists()  # no job folder, no job


def test_a_flywheel_turn_with_a_bad_train_override_fails_before_mining(tmp_path):
    from services.control.migrations import ALL
    from services.control.turn import list_runs, refresh, save_run
    from streams.warehouse import apply_migrations, connect

    conn = connect(tmp_path / "t.duckdb")
    apply_migrations(conn, ALL)
    s = Settings(data_dir=str(tmp_path / "data")).replace(
        refresh={"train_overrides": ["sft.args.max_steps=2", "sft.args.learning_rate=fast"]})
    try:
        run = refresh(conn, s, "ref-bad", save=lambda r: save_run(conn, r))
        assert run.status == "failed" and run.steps == []  # nothing mined, nothing trained
        assert run.reason.startswith("refresh.train_overrides: ") and "learning_rate must be float" in run.reason
        assert list_runs(conn)[0]["reason"] == run.reason
    finally:
        conn.close()
