"""docker-compose.yml cannot run here (no Docker engine): check that it parses, has the
services production needs, and names only commands and settings that exist."""

from __future__ import annotations

import re

import yaml

from flywheel.cli import main
from flywheel.settings import load_settings
from tests.conftest import REPO


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_has_the_production_services():
    services = _compose()["services"]
    assert {"kafka", "vllm", "control-plane", "stream-worker", "gateway-1", "gateway-2"} <= set(services)
    assert services["stream-worker"]["command"] == ["flywheel", "stream-worker"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "kafka-data:/var/lib/kafka/data" in services["kafka"]["volumes"]
    assert "--enable-lora" in services["vllm"]["command"]
    assert services["vllm"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    # Each gateway has its own spool; both read the same keys.
    assert services["gateway-1"]["volumes"][0] != services["gateway-2"]["volumes"][0]
    assert (REPO / "Dockerfile").is_file()


def test_every_command_and_setting_named_exists():
    services = _compose()["services"]
    for name, svc in services.items():
        command = svc.get("command")
        if not command or command[0] != "flywheel":
            continue
        group, args = main, command[1:]
        while args and hasattr(group, "commands"):
            assert args[0] in group.commands, f"{name}: `flywheel {' '.join(command[1:])}` is not a command"
            group, args = group.commands[args[0]], args[1:]
        env = {k: re.sub(r"\$\{[^}]*\}", "x", str(v)) for k, v in svc["environment"].items()}
        settings = load_settings(None, env=env)  # unknown FLYWHEEL_* keys raise here
        assert settings.kafka.bootstrap == "kafka:9092"
        assert settings.model.backend == "openai" and settings.model.upstream_url.startswith("http://vllm:")
