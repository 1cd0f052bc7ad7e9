"""The README is the user's manual: a test keeps it complete."""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from limner.cli import app
from limner.config import Settings
from limner.runtime import Runtime

README = (Path(__file__).parents[2] / "README.md").read_text()


def _section(title: str) -> str:
    """The text under a heading, down to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}\n", README, re.M)
    assert match, f"README has no section {title!r}"
    level = len(match.group(1))
    end = re.compile(rf"^#{{1,{level}}} ", re.M).search(README, match.end())
    return README[match.end() : end.start() if end else len(README)]


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", _section("Quick start"), re.S)
    assert blocks[0].strip() == "scripts/venv serve && .venv/bin/limner serve"
    test_command = blocks[1].strip()
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    assert test_command in ci


def test_every_setting_is_in_the_configuration_table() -> None:
    table = _section("Configuration")
    documented = set()
    for cell in re.findall(r"^\| (`[A-Z0-9_]+`(?: / `[A-Z0-9_]+`)*) \|", table, re.M):
        documented |= set(re.findall(r"`([A-Z0-9_]+)`", cell))
    expected = {name for names in Settings.env_names().values() for name in names}
    assert documented == expected


async def test_every_tool_parameter_is_documented(runtime: Runtime) -> None:
    tools = _section("Tools")
    for spec, _status in runtime.all_tools():
        assert f"`{spec.name}`" in tools, spec.name
        for parameter in spec.json_schema()["properties"]:
            assert re.search(rf"`{spec.name}`.*?\| `{parameter}` \|", tools, re.S), (spec.name, parameter)


def test_every_cli_command_is_documented() -> None:
    cli = _section("CLI")
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for sub in subcommands:
                assert f"`limner {name} {sub}" in cli, f"{name} {sub}"
        else:
            assert f"`limner {name}" in cli, name


def test_every_error_code_is_in_the_error_table() -> None:
    from limner.api.errors import _HTTP_CODES, STATUS_TABLE

    errors = _section("Errors")
    for cls, _status in STATUS_TABLE:
        if cls.code not in ("limner_error", "provider_error", "invalid_input"):
            assert f"`{cls.code}`" in errors, cls.code
    for code in [*_HTTP_CODES.values(), "invalid_request", "internal_error"]:  # the HTTP layer's own codes
        assert f"`{code}`" in errors, code
