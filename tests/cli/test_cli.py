from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from limner.cli import app
from limner.sandbox.renderer import read_stamp
from tests import images

runner = CliRunner()
ID = re.compile(r"img_[0-9A-Z]{26}")


@pytest.fixture(autouse=True)
def _local_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LIMNER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no stray .env
    return tmp_path / "data"


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_generate_writes_a_png_that_shows_the_prompt_then_edit_names_its_parent(tmp_path: Path) -> None:
    out = tmp_path / "out"
    output = invoke("generate", "a lighthouse at dusk", "--out", str(out))
    (image_id,) = set(ID.findall(output))  # the ID, and again in the unwrapped file name
    written = out / f"{image_id}.png"
    stamp = read_stamp(written.read_bytes())
    assert stamp is not None and stamp["prompt"] == "a lighthouse at dusk"

    edited = invoke("edit", image_id, "--prompt", "make it stormy", "--out", str(out))
    new_id = next(i for i in ID.findall(edited) if i != image_id)
    new_stamp = read_stamp((out / f"{new_id}.png").read_bytes())
    assert new_stamp is not None and new_stamp["kind"] == "edit"
    assert new_stamp["inputs"] == [json.loads(invoke("images", "show", image_id))["sha256"]]
    record = json.loads(invoke("images", "show", new_id))
    assert record["source"] == "edited" and record["is_sandbox"] is True
    assert record["parents"] == [{"id": image_id, "role": "input", "exists": True}]


def test_generate_several_with_options(tmp_path: Path) -> None:
    output = invoke("generate", "two kites", "-n", "2", "--size", "1024x1536", "--quality", "low")
    ids = ID.findall(output)
    assert len(ids) == 2
    assert "1024x1536" in output
    listing = invoke("images", "list")
    assert all(i in listing for i in ids)


def test_edit_with_a_mask_file(tmp_path: Path) -> None:
    (image_id,) = ID.findall(invoke("generate", "a field", "--size", "1024x1024"))
    mask = tmp_path / "mask.png"
    mask.write_bytes(images.mask_png(32, 32))
    output = invoke("edit", image_id, "--prompt", "a tree", "--mask", str(mask))
    new_id = [i for i in ID.findall(output) if i != image_id][-1]
    parents = json.loads(invoke("images", "show", new_id))["parents"]
    assert [p["role"] for p in parents] == ["input", "mask"]


def test_export_and_delete(tmp_path: Path) -> None:
    (image_id,) = ID.findall(invoke("generate", "a boat"))
    invoke("images", "export", image_id, "--out", str(tmp_path / "exp"))
    assert (tmp_path / "exp" / f"{image_id}.png").exists()
    invoke("images", "delete", image_id)
    result = runner.invoke(app, ["images", "show", image_id])
    assert result.exit_code == 66
    assert "No image with ID" in result.output


def test_errors_have_exit_codes_and_hints() -> None:
    result = runner.invoke(app, ["generate", "x", "--size", "999x999"])
    assert result.exit_code == 65
    assert "size" in result.output and "call again" not in result.output  # words for a person, not the LLM
    result = runner.invoke(app, ["edit", "img_01JD0000000000000000000000", "--prompt", "p"])
    assert result.exit_code == 66


def test_provider_failure_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_PROVIDER_MAX_RETRIES", "0")
    result = runner.invoke(app, ["generate", "a cat [[sandbox:moderation]]"])
    assert result.exit_code == 69
    assert "content policy" in result.output and "What to do" in result.output


def test_tokens_create_prints_the_token_last() -> None:
    output = invoke("tokens", "create", "--user", "carol")
    token = output.split()[-1]
    assert token.startswith("lmn_") and len(token) > 30
    second = invoke("tokens", "create", "--user", "carol").split()[-1]
    assert second != token


def test_users_create_and_duplicates() -> None:
    assert "created user dave" in invoke("users", "create", "dave")
    result = runner.invoke(app, ["users", "create", "dave"])
    assert result.exit_code == 65 and "already exists" in result.output


def test_db_upgrade_and_sweep() -> None:
    assert "up to date" in invoke("db", "upgrade")
    assert "removed 0 orphan" in invoke("db", "sweep", "--min-age", "0")


def test_invalid_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_MAX_UPLOAD_BYTES", "lots")
    result = runner.invoke(app, ["images", "list"])
    assert result.exit_code == 78
    assert "LIMNER_MAX_UPLOAD_BYTES" in result.output


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["generate"],
        ["edit"],
        ["images"],
        ["images", "list"],
        ["tokens", "create"],
        ["users", "create"],
        ["db", "upgrade"],
        ["serve"],
        ["sandbox"],
    ],
)
def test_help_everywhere(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_chat_makes_then_changes_a_picture(tmp_path: Path) -> None:
    out = tmp_path / "chat-images"
    result = runner.invoke(app, ["chat", "--out", str(out)], input="draw a lighthouse\nnow make it stormy\n/quit\n")
    assert result.exit_code == 0, (result.output, result.exception)
    ids = ID.findall(result.stdout)
    files = sorted(p.stem for p in out.iterdir())
    assert len(files) == 2 and set(files) <= set(ids)
    first, second = (i for i in dict.fromkeys(ids) if i in files)
    record = json.loads(invoke("images", "show", second))
    assert record["parents"] == [{"id": first, "role": "input", "exists": True}]
    assert "image_edit_oai" in result.stdout


def test_no_sandbox_notice_when_a_provider_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGE_GEN_OAI_API_KEY", "sk-test")
    monkeypatch.setenv("IMAGE_GEN_OAI_BASEURL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("LIMNER_PROVIDER_MAX_RETRIES", "0")
    result = runner.invoke(app, ["generate", "a lighthouse"])
    assert result.exit_code == 69
    assert "sandbox" not in result.output.lower()
    assert "Could not connect" in result.output
    assert "Check IMAGE_GEN_OAI_BASEURL (now http://127.0.0.1:9/v1)" in result.output  # the setting to change


def test_version_prints_the_package_version() -> None:
    from importlib.metadata import version

    for flag in ("--version", "-V"):
        result = runner.invoke(app, [flag])
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"limner {version('limner')}"


def test_user_option_reaches_images_made_for_another_user_and_hints_in_cli_terms() -> None:
    invoke("tokens", "create", "--user", "me")
    (image_id,) = ID.findall(invoke("generate", "a kite", "--user", "me"))
    missing = runner.invoke(app, ["edit", image_id, "--prompt", "stormy"])
    assert missing.exit_code == 66
    assert "limner images list --user local" in missing.output and "--user NAME" in missing.output
    assert "do not invent IDs" not in missing.output
    assert image_id in invoke("images", "list", "--user", "me")
    edited = invoke("edit", image_id, "--prompt", "stormy", "--user", "me")
    assert any(i != image_id for i in ID.findall(edited))
    unknown = runner.invoke(app, ["images", "list", "--user", "nobody"])
    assert unknown.exit_code == 65 and "no user named 'nobody'" in unknown.output


def test_json_shape_of_generate_and_images_list(tmp_path: Path) -> None:
    from limner.api.schemas import ImageOut

    made = json.loads(invoke("generate", "two kites", "-n", "2", "--json", "--out", str(tmp_path / "o")))
    assert len(made["images"]) == 2
    first = made["images"][0]
    assert set(first) == set(ImageOut.model_fields) | {"file"}
    assert Path(first["file"]).is_file() and first["content_url"] == f"/api/images/{first['id']}/content"
    listed = json.loads(invoke("images", "list", "--json"))
    assert {i["id"] for i in listed["images"]} == {i["id"] for i in made["images"]}
    assert listed["images"][0]["file"] is None


def test_port_in_use_is_named_with_its_exit_code() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port)])
    assert result.exit_code == 75, result.output
    assert "already in use" in result.output and "--port" in result.output and "LIMNER_PORT" in result.output


def test_progress_bar_shows_the_fraction_on_a_terminal_and_nothing_on_stdout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    from limner import cli

    monkeypatch.setenv("LIMNER_SD_STEPS", "60")  # 60 steps of the emulator's 0.02 s: polled several times
    monkeypatch.setattr(cli, "err_console", Console(stderr=True, force_terminal=True, width=120))
    result = runner.invoke(app, ["generate", "a slow field", "--tool", "stable-diffusion"])
    assert result.exit_code == 0, result.output
    fractions = [int(p) for p in re.findall(r"(\d{1,3})%", result.stderr)]
    assert any(0 < f < 100 for f in fractions), result.stderr
    assert "step " in result.stderr
    assert "%" not in result.stdout and len(ID.findall(result.stdout)) == 1


def test_installed_command_in_a_narrow_pipe_prints_whole_lines_and_no_progress(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "30", "LIMNER_SD_STEPS": "40"}
    deep = tmp_path / "a-folder-name-long-enough-to-wrap" / "twice-over-at-thirty-columns"
    made = subprocess.run(
        [sys.executable, "-m", "limner", "generate", "a field", "--tool", "stable-diffusion", "--out", str(deep)],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    (line,) = made.stdout.splitlines()
    image_id, size, media_type, path = line.split("  ")
    assert (size, media_type) == ("1024x1024", "image/png")
    assert ID.fullmatch(image_id) and Path(path) == deep / f"{image_id}.png" and Path(path).is_file()
    assert "\x1b" not in made.stderr  # no bar's control codes when stderr is a pipe either
    listed = subprocess.run(
        [sys.executable, "-m", "limner", "images", "list"], env=env, capture_output=True, text=True, check=True
    )
    (row,) = listed.stdout.splitlines()
    assert row.split("\t")[0] == image_id and row.split("\t")[-1] == "a field"


def _every_command() -> list[list[str]]:
    import typer.main

    found: list[list[str]] = []

    def walk(group: object, path: list[str]) -> None:
        for name, command in getattr(group, "commands", {}).items():
            found.append([*path, name])
            walk(command, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


@pytest.mark.parametrize("command", _every_command(), ids=" ".join)
def test_help_reads_like_a_manual(command: list[str]) -> None:
    """Every option shows a word for its value (`--size WxH`), flags show none (not `--json <bool>`), lists
    no Python type (`<list[str]>`), usage no lower-case placeholder (`{prompt}`), and `-n` is not `--n`.

    typer's own conventions stay: `{PROMPT}` marks a required argument in the usage line, and an argument's
    row names its type (`PROMPT <str>`, `IMAGE_ID... <list[str]>`); an option's row never does.
    """
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = result.output
    assert re.findall(r"<bool>|\{[a-z_]+\}|--n\b", text) == [], text
    option_rows = [line for line in text.splitlines() if line.lstrip().startswith("-")]
    assert [row for row in option_rows if re.search(r"<[a-z ]+>", row)] == [], text


@pytest.mark.parametrize("command", [["images", "list"], ["tokens", "list"], ["users", "list"], ["db", "upgrade"]])
def test_commands_that_call_no_tool_do_not_mention_the_sandbox(command: list[str]) -> None:
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "sandbox" not in result.output.lower()
