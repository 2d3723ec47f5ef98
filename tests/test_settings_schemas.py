"""Settings (file + environment), the event contract, and the CLI's inspection commands."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from flywheel.cli import main
from flywheel.errors import ConfigError
from flywheel.settings import load_settings
from streams.schemas import Feedback, Interaction, json_schemas


def test_file_then_environment(tmp_path):
    cfg = tmp_path / "fw.toml"
    cfg.write_text('data_dir = "/srv/fw"\n[gateway]\nport = 9001\nthreads = 8\n[privacy]\nkinds = ["EMAIL"]\n')
    s = load_settings(cfg, env={"FLYWHEEL_GATEWAY__PORT": "9002", "FLYWHEEL_LOG_LEVEL": "DEBUG"})
    assert (s.data_dir, s.gateway.port, s.gateway.threads, s.log_level) == ("/srv/fw", 9002, 8, "DEBUG")
    assert s.privacy.kinds == ("EMAIL",)
    assert s.bootstrap == "127.0.0.1:19092"  # embedded default
    assert load_settings(None, env={"FLYWHEEL_KAFKA__BOOTSTRAP": "k1:9092"}).bootstrap == "k1:9092"


@pytest.mark.parametrize("env, message", [
    ({"FLYWHEEL_GATEWAY__PORTT": "1"}, "gateway.portt"),
    ({"FLYWHEEL_NOPE__X": "1"}, "unknown settings section 'nope'"),
    ({"FLYWHEEL_GATEWAY__THREADS": "0"}, "gateway.threads"),
    ({"FLYWHEEL_MODEL__BACKEND": "vllm"}, "model.backend: Input should be 'local', 'openai' or 'scripted'"),
    ({"FLYWHEEL_ROLLOUT__METHOD": "bayes"}, "rollout.method"),
    ({"FLYWHEEL_PRIVACY__KINDS": '["EMAIL", "DNA"]'}, "privacy.kinds.1"),
    ({"FLYWHEEL_LOG_LEVEL": "LOUD"}, "log_level"),
])
def test_bad_settings_name_the_key(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(None, env=env)


def test_missing_settings_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def _interaction(**changes):
    base = dict(event_id="e1", request_id="r1", session_id="s1", created_at=datetime.now(timezone.utc),
                model_alias="a", model_version="base", messages=[{"role": "user", "content": "hi"}],
                drafts=[{"index": 0, "content": "hello", "finish_reason": "stop"}])
    base.update(changes)
    return Interaction(**base)


def test_events_are_strict():
    ok = _interaction()
    assert Interaction.model_validate_json(ok.model_dump_json()) == ok
    with pytest.raises(ValidationError, match="Extra inputs"):
        Interaction.model_validate_json(ok.model_dump_json().replace('"turn":1', '"turn":1,"x":1'))
    with pytest.raises(ValidationError):
        Interaction.model_validate_json(ok.model_dump_json().replace('"turn":1', '"turn":"1"'))  # no coercion
    with pytest.raises(ValidationError, match="timezone"):
        _interaction(created_at=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="at least one draft"):
        _interaction(drafts=[])
    with pytest.raises(ValidationError, match="needs an error"):
        _interaction(status="error")
    now = datetime.now(timezone.utc)
    assert Feedback(event_id="f", request_id="r", kind="choice", draft=1, created_at=now).draft == 1
    for bad in [dict(kind="thumb", value=2), dict(kind="rating", value=0), dict(kind="edit"),
                dict(kind="copy", value=1), dict(kind="choice", text="x")]:
        with pytest.raises(ValidationError):
            Feedback(event_id="f", request_id="r", created_at=now, **bad)


def test_schema_command_prints_every_event_schema():
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    schemas = json.loads(result.output)
    assert {"interaction", "feedback", "dead_letter", "deployment", "metrics"} <= set(schemas)
    assert schemas == json.loads(json.dumps(json_schemas()))
    assert schemas["feedback"]["additionalProperties"] is False
    assert "event_id" in schemas["interaction"]["required"]


def test_every_command_has_help():
    runner = CliRunner()

    def walk(cmd, path):
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(main, [])


def test_settings_env_reproduces_the_settings_in_a_child_process():
    from flywheel.settings import Settings, load_settings, settings_env

    s = Settings(data_dir="/srv/fw").replace(kafka={"topic_prefix": "x."}, privacy={"kinds": ["EMAIL"]},
                                             curation={"dedup_threshold": 0.9, "budgets": {"reasoning/math": 2.0}})
    env = settings_env(s)
    assert env["FLYWHEEL_KAFKA__TOPIC_PREFIX"] == '"x."' and env["FLYWHEEL_DATA_DIR"] == '"/srv/fw"'
    assert load_settings(None, env=env) == s


def test_secrets_are_masked_when_printed_and_passed_in_clear_to_child_processes():
    from flywheel.settings import settings_env

    env = {"FLYWHEEL_TEACHER__API_KEY": "sk-teacher-secret", "FLYWHEEL_JUDGE__API_KEY": "sk-judge-secret",
           "FLYWHEEL_MODEL__UPSTREAM_API_KEY": "sk-upstream-secret", "FLYWHEEL_PRIVACY__USER_SALT": "12345"}
    result = CliRunner().invoke(main, ["config"], env=env)
    assert result.exit_code == 0, result.output
    assert "secret" not in result.output and "12345" not in result.output and "**********" in result.output
    s = load_settings(None, env=env)
    assert s.privacy.user_salt.get_secret_value() == "12345"  # a number-like secret stays as written
    assert "sk-teacher-secret" not in repr(s) and "sk-teacher-secret" not in str(s.teacher)
    child = settings_env(s)
    assert json.loads(child["FLYWHEEL_TEACHER__API_KEY"]) == "sk-teacher-secret"
    assert load_settings(None, env=child) == s
    assert load_settings(None, env=child).model.upstream_api_key.get_secret_value() == "sk-upstream-secret"


def test_the_three_endpoints_share_one_type():
    from flywheel.settings import OpenAIEndpoint, Settings

    s = Settings().replace(teacher={"base_url": "http://t/v1", "model": "big", "api_key": "k-t"},
                           judge={"model": "judge"}, model={"upstream_url": "http://vllm:8000/v1"})
    assert all(isinstance(e, OpenAIEndpoint) for e in (s.teacher, s.judge, s.model.upstream))
    judge = s.judge.resolve(s.teacher)  # empty fields are the teacher's
    assert (judge.base_url, judge.model, judge.api_key.get_secret_value()) == ("http://t/v1", "judge", "k-t")
    assert judge.retries == 2
    assert (s.model.upstream.base_url, s.model.upstream.model) == ("http://vllm:8000/v1", "SmolLM2-135M-Instruct")
