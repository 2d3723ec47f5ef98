"""Docs that cannot drift: every setting and every CLI command is documented, and the
README's two commands are the ones CI and the Makefile run."""

from __future__ import annotations

import re

from flywheel.cli import main
from flywheel.settings import describe_settings, settings_markdown
from tests.conftest import REPO


def _commands(group, prefix=""):
    for name, cmd in group.commands.items():
        yield f"{prefix}{name}"
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, f"{prefix}{name} ")


def test_every_setting_is_documented():
    doc = (REPO / "docs" / "settings.md").read_text()
    missing = [key for key, _, _ in describe_settings() if f"`{key}`" not in doc]
    assert not missing, f"add these settings to docs/settings.md: {missing}"
    assert settings_markdown() in doc, "docs/settings.md is stale: paste `flywheel config --markdown` into it"


def test_every_setting_has_a_description():
    assert all(text for _, _, text in describe_settings())


def test_every_cli_command_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    missing = [c for c in _commands(main) if f"flywheel {c}" not in readme]
    assert not missing, f"document these commands in README.md: {missing}"


def test_the_two_commands_are_the_ones_ci_and_make_run():
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run: install", makefile, re.M) and re.search(r"^test: install", makefile, re.M)
