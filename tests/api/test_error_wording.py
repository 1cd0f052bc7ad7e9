"""Each reader gets hints in its own words (issue 24 items 14, 15): a person in the UI or over HTTP, the
CLI's user, the LLM. Every one of these failed before: LLM wording shown to people, hints naming HTTP
routes in a terminal, no hint at all, FastAPI's "10: JSON decode error"."""

from __future__ import annotations

import httpx2
from typer.testing import CliRunner

from limner.cli import app
from limner.errors import ProviderUnavailableError
from limner.runtime import Runtime
from limner.tools.base import failed_result, run_tool

Auth = tuple[str, dict[str, str]]


async def test_an_unknown_image_is_explained_to_a_person_over_http(api: httpx2.AsyncClient, alice: Auth) -> None:
    _, headers = alice
    error = (await api.get("/api/images/img_01JD0000000000000000000000", headers=headers)).json()["error"]
    assert error["code"] == "image_not_found"
    assert "invent" not in error["hint"] and "deleted" in error["hint"]


async def test_the_llm_reads_its_own_hint_and_the_persons(runtime: Runtime, alice: Auth) -> None:
    user_id, _ = alice
    spec = runtime.tool("image_edit_oai")
    try:
        await run_tool(
            spec, {"image_ids": ["img_01JD0000000000000000000000"], "prompt": "p"}, runtime.tool_context(user_id)
        )
    except Exception as exc:
        result = failed_result(exc, spec.name)
    else:
        raise AssertionError("an unknown ID must fail")
    assert "What to do: Use an image ID from this conversation or from image_list; do not invent IDs." in result.text
    assert "For the user: Check the ID" in result.text
    assert "invent" not in str(result.metadata["error"]["hint"])  # the UI shows this one


async def test_arguments_the_tool_refuses_get_a_hint_for_people_and_one_for_the_llm(
    api: httpx2.AsyncClient, alice: Auth
) -> None:
    _, headers = alice
    error = (await api.post("/api/tools/image_gen_oai", headers=headers, json={"prompt": "x", "n": 99})).json()["error"]
    assert "call again" not in error["hint"].lower() and "n" in error["message"]


async def test_401_and_broken_json_say_what_to_do(api: httpx2.AsyncClient, alice: Auth) -> None:
    error = (await api.get("/api/images")).json()["error"]
    assert error["code"] == "unauthorized" and "limner tokens create" in error["hint"]
    _, headers = alice
    broken = await api.post(
        "/api/tools/image_gen_oai", headers={**headers, "Content-Type": "application/json"}, content=b'{"prompt": '
    )
    error = broken.json()["error"]
    assert broken.status_code == 422 and error["message"].startswith("The request body is not valid JSON at character")
    assert "decode error" not in error["message"] and error["hint"]


def test_an_unknown_tool_on_the_cli_lists_the_tools_not_an_http_route() -> None:
    result = CliRunner().invoke(app, ["generate", "x", "--tool", "midjourney"])
    assert result.exit_code == 65
    assert "GET /api" not in result.output and "image_gen_oai" in result.output


def test_a_provider_message_starts_with_a_capital() -> None:
    error = ProviderUnavailableError("limner's sandbox A1111 emulator did not answer.", provider="a1111")
    assert error.message == "Limner's sandbox A1111 emulator did not answer."
