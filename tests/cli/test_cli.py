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
    (image_id,) = ID.findall(output)
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
    assert "size" in result.output
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


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_exits_zero_without_a_command(flag: str) -> None:
    from limner import __version__

    result = runner.invoke(app, [flag])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == __version__
