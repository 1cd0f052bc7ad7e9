"""limner's MCP server through the SDK's own client: in memory, over streamable HTTP (real uvicorn on
loopback, two users' tokens) and over stdio (a subprocess serving ``serve_stdio``)."""

from __future__ import annotations

import asyncio
import base64
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest
import uvicorn
from mcp import Client, MCPError, StdioServerParameters, types
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette

from limner.library import ImageRecord
from limner.mcp_server import (
    IMAGE_URI_PREFIX,
    OUTPUT_SCHEMA,
    MCPHTTPApp,
    build_mcp_server,
    create_mcp_http_app,
    stdio_user_id,
)
from limner.runtime import Runtime
from tests.conftest import create_user, make_settings

MISSING = "img_01JD0000000000000000000000"


def _fixed(user_id: str) -> Callable[[Any], Awaitable[str]]:
    async def resolve(_ctx: Any) -> str:
        return user_id

    return resolve


@pytest.fixture
async def alice_id(runtime: Runtime) -> str:
    user_id, _ = await create_user(runtime, "alice")
    return user_id


@asynccontextmanager
async def _in_memory(runtime: Runtime, user_id: str, **options: Any) -> AsyncIterator[Client]:
    """A client connected in process (not a fixture: the SDK's task group must start and end in one task)."""
    async with Client(build_mcp_server(runtime, _fixed(user_id), **options)) as connected:
        yield connected


def _images(result: types.CallToolResult) -> list[types.ImageContent]:
    return [block for block in result.content if isinstance(block, types.ImageContent)]


def _text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


async def _stored(runtime: Runtime, user_id: str, image_id: str) -> tuple[ImageRecord, bytes]:
    ((record, data),) = await runtime.library.read_many(user_id, [image_id])
    return record, data


async def _generate(client: Client, prompt: str = "a red fox in snow") -> str:
    result = await client.call_tool("image_gen_oai", {"prompt": prompt})
    assert not result.is_error, _text(result)
    (image_id,) = result.structured_content["image_ids"]
    return str(image_id)


# --- in memory --------------------------------------------------------------------------------


async def test_every_available_tool_is_listed_with_schemas_and_annotations(runtime: Runtime, alice_id: str) -> None:
    async with _in_memory(runtime, alice_id) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    specs = runtime.tools()
    assert set(listed) == set(specs)
    expected = {"image_gen_oai", "image_edit_oai", "dalle", "stable-diffusion", "flux", "image_list", "image_view"}
    assert expected <= set(listed)
    for name, tool in listed.items():
        assert tool.input_schema == specs[name].json_schema()
        assert tool.input_schema["type"] == "object"
        assert tool.output_schema == OUTPUT_SCHEMA
        assert tool.description == specs[name].description
        assert tool.title == (specs[name].title or name)
        assert tool.annotations is not None
    for name in ("image_list", "image_view"):
        annotations = listed[name].annotations
        assert annotations is not None
        assert annotations.read_only_hint is True
        assert annotations.open_world_hint is False
    for name in ("image_gen_oai", "image_edit_oai", "stable-diffusion", "flux"):
        annotations = listed[name].annotations
        assert annotations is not None
        assert (annotations.read_only_hint, annotations.destructive_hint) == (False, False)
        assert (annotations.open_world_hint, annotations.idempotent_hint) == (True, False)


async def test_generation_returns_the_stored_image_its_id_and_structured_content(
    runtime: Runtime, alice_id: str
) -> None:
    async with _in_memory(runtime, alice_id) as client:
        result = await client.call_tool("image_gen_oai", {"prompt": "a lighthouse at dusk"})

    assert result.is_error is not True
    structured = result.structured_content
    jsonschema.validate(structured, OUTPUT_SCHEMA)
    (image_id,) = structured["image_ids"]
    record, data = await _stored(runtime, alice_id, image_id)
    assert image_id in _text(result)
    assert structured["text"] == _text(result)
    (block,) = _images(result)
    assert base64.b64decode(block.data) == data
    assert block.mime_type == record.media_type
    assert structured["images"] == [
        {
            "id": image_id,
            "width": record.width,
            "height": record.height,
            "media_type": record.media_type,
            "byte_size": record.byte_size,
            "uri": IMAGE_URI_PREFIX + image_id,
            "shown": "original",
        }
    ]
    assert record.tool == "image_gen_oai"
    assert record.owner_id == alice_id


async def test_edit_by_id_makes_a_new_image_from_the_named_one(runtime: Runtime, alice_id: str) -> None:
    async with _in_memory(runtime, alice_id) as client:
        source = await _generate(client)
        result = await client.call_tool("image_edit_oai", {"image_ids": [source], "prompt": "make it winter at night"})

    assert result.is_error is not True, _text(result)
    jsonschema.validate(result.structured_content, OUTPUT_SCHEMA)
    (edited,) = result.structured_content["image_ids"]
    assert edited != source
    assert source in _text(result)
    assert edited in _text(result)
    record, data = await _stored(runtime, alice_id, edited)
    assert record.source == "edited"
    assert base64.b64decode(_images(result)[0].data) == data
    lineage = await runtime.library.parents(alice_id, edited)
    assert [link.id for link in lineage] == [source]


async def test_image_view_shows_the_stored_bytes(runtime: Runtime, alice_id: str) -> None:
    async with _in_memory(runtime, alice_id) as client:
        image_id = await _generate(client)
        result = await client.call_tool("image_view", {"image_id": image_id})

    assert result.is_error is not True
    jsonschema.validate(result.structured_content, OUTPUT_SCHEMA)
    assert result.structured_content["image_ids"] == [image_id]
    _, data = await _stored(runtime, alice_id, image_id)
    assert [base64.b64decode(b.data) for b in _images(result)] == [data]


async def test_image_list_names_the_users_images(runtime: Runtime, alice_id: str) -> None:
    async with _in_memory(runtime, alice_id) as client:
        first, second = await _generate(client, "a cat"), await _generate(client, "a dog")
        result = await client.call_tool("image_list", {})

    jsonschema.validate(result.structured_content, OUTPUT_SCHEMA)
    assert result.structured_content["image_ids"] == [second, first]
    assert result.structured_content["images"] == []
    assert _images(result) == []


async def test_a_missing_id_is_a_tool_error_with_message_and_hint(runtime: Runtime, alice_id: str) -> None:
    async with _in_memory(runtime, alice_id) as client:
        result = await client.call_tool("image_edit_oai", {"image_ids": [MISSING], "prompt": "blue"})

    assert result.is_error is True
    assert "image_not_found" in _text(result)
    assert MISSING in _text(result)
    assert "What to do:" in _text(result)
    assert result.meta is not None
    assert result.meta["limner/error"]["code"] == "image_not_found"
    assert result.structured_content is None


async def test_invalid_arguments_are_a_tool_error(runtime: Runtime, alice_id: str) -> None:
    async with _in_memory(runtime, alice_id) as client:
        result = await client.call_tool("image_gen_oai", {"prompt": "x", "bogus": 1})

    assert result.is_error is True
    assert "bogus" in _text(result)


async def test_an_unknown_tool_is_a_protocol_error(runtime: Runtime, alice_id: str) -> None:
    async with _in_memory(runtime, alice_id) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("no_such_tool", {})
    assert caught.value.code == types.INVALID_PARAMS
    assert "no_such_tool" in caught.value.message


async def test_stable_diffusion_reports_rising_progress(runtime: Runtime, alice_id: str) -> None:
    assert runtime.families["stable-diffusion"].status.is_sandbox
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with _in_memory(runtime, alice_id) as client:
        arguments = {"prompt": "a castle, oil painting"}
        result = await client.call_tool("stable-diffusion", arguments, progress_callback=on_progress)

    assert result.is_error is not True, _text(result)
    assert seen, "no progress notification arrived"
    values = [value for value, _, _ in seen]
    assert values == sorted(set(values))
    assert all(0 <= v <= 100 and total == 100 for v, total, _ in seen)


async def test_large_images_are_downscaled_and_the_original_stays_readable(runtime: Runtime, alice_id: str) -> None:
    async with _in_memory(runtime, alice_id, inline_budget=20_000) as small:
        result = await small.call_tool("image_gen_oai", {"prompt": "a busy market street, many colours"})
        jsonschema.validate(result.structured_content, OUTPUT_SCHEMA)
        (entry,) = result.structured_content["images"]
        read = await small.read_resource(entry["uri"])

    record, data = await _stored(runtime, alice_id, entry["id"])
    assert record.byte_size > 20_000, "the sandbox image is expected to exceed the test budget"
    assert entry["shown"] == "downscaled"
    assert f"{entry['id']} is shown as a smaller copy" in _text(result)
    assert entry["uri"] in _text(result)
    (block,) = _images(result)
    assert len(base64.b64decode(block.data)) <= 20_000
    assert block.mime_type == "image/jpeg"
    (contents,) = read.contents
    assert isinstance(contents, types.BlobResourceContents)
    assert base64.b64decode(contents.blob) == data
    assert contents.mime_type == record.media_type


async def test_an_image_too_large_for_any_copy_is_left_out_and_said_so(runtime: Runtime, alice_id: str) -> None:
    async with _in_memory(runtime, alice_id, inline_budget=100) as tiny:
        result = await tiny.call_tool("image_gen_oai", {"prompt": "a tiny budget"})

    assert result.is_error is not True
    (entry,) = result.structured_content["images"]
    assert entry["shown"] == "omitted"
    assert _images(result) == []
    assert f"{entry['id']} is too large to show here" in _text(result)


async def test_a_tool_of_an_unconfigured_family_is_not_listed_and_says_what_to_set(tmp_path: Path) -> None:
    async with Runtime.open(make_settings(tmp_path, sandbox="off")) as bare:
        user_id, _ = await create_user(bare, "dora")
        async with _in_memory(bare, user_id) as client:
            listed = {tool.name for tool in (await client.list_tools()).tools}
            result = await client.call_tool("image_gen_oai", {"prompt": "a fox"})

    assert listed == {"image_list", "image_view"}
    assert result.is_error is True
    assert "IMAGE_GEN_OAI_API_KEY" in _text(result)


async def test_resources_list_the_users_images(runtime: Runtime, alice_id: str) -> None:
    async with _in_memory(runtime, alice_id) as client:
        image_id = await _generate(client)
        listed = await client.list_resources()
        templates = await client.list_resource_templates()
        with pytest.raises(MCPError):
            await client.read_resource(IMAGE_URI_PREFIX + MISSING)

    assert [r.uri for r in listed.resources] == [IMAGE_URI_PREFIX + image_id]
    assert [t.uri_template for t in templates.resource_templates] == [IMAGE_URI_PREFIX + "{image_id}"]


# --- streamable HTTP ----------------------------------------------------------------------------


class _TestServer(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # signals belong to pytest


@asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[str]:
    """uvicorn on a loopback port it cannot lose to a race (we bind the socket ourselves)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws="none")
    server = _TestServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def mcp_url(runtime: Runtime) -> AsyncIterator[str]:
    async with _serving(create_mcp_http_app(runtime)) as url:
        yield url


@asynccontextmanager
async def _http_client(url: str, token: str, **options: Any) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), **options) as connected,
    ):
        yield connected


async def test_http_endpoint_answers_503_until_it_runs() -> None:
    app = Starlette(routes=MCPHTTPApp().routes())
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://limner.test") as http:
        response = await http.post("/mcp", json={}, headers={"Authorization": "Bearer lmn_x"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"


async def test_http_without_a_valid_token_is_401(mcp_url: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        missing = await http.post(mcp_url, json=body, headers=headers)
        wrong = await http.post(mcp_url, json=body, headers={**headers, "Authorization": "Bearer lmn_wrong"})
    metadata_url = mcp_url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    for response in (missing, wrong):
        assert response.status_code == 401
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith('Bearer realm="limner", ') and f'resource_metadata="{metadata_url}"' in challenge
        error = response.json()["error"]
        assert error["code"] == "unauthorized"
        assert "limner tokens create" in error["hint"] and "not OAuth" in error["hint"]
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    assert "error=" not in missing.headers["www-authenticate"].replace("error_description", "")  # RFC 6750 §3.1
    async with httpx2.AsyncClient(timeout=10) as http:
        metadata = (await http.get(metadata_url)).json()
    # RFC 9728: the resource is this endpoint, the token goes in the header, and no authorization server
    # issues it, so a client knows not to start OAuth.
    assert metadata["resource"] == mcp_url
    assert metadata["bearer_methods_supported"] == ["header"] and metadata["authorization_servers"] == []


async def test_http_each_user_sees_only_their_own_images(mcp_url: str, runtime: Runtime) -> None:
    alice_id, alice_token = await create_user(runtime, "alice")
    bob_id, bob_token = await create_user(runtime, "bob")

    async with _http_client(mcp_url, alice_token) as alice:
        secret = await _generate(alice)
        _, data = await _stored(runtime, alice_id, secret)
        viewed = await alice.call_tool("image_view", {"image_id": secret})
        assert [base64.b64decode(b.data) for b in _images(viewed)] == [data]

    async with _http_client(mcp_url, bob_token) as bob:
        answers = []
        for image_id in (secret, MISSING):
            result = await bob.call_tool("image_view", {"image_id": image_id})
            assert result.is_error is True
            answers.append(_text(result).replace(image_id, "ID"))
        assert answers[0] == answers[1]
        assert "image_not_found" in answers[0]
        edit = await bob.call_tool("image_edit_oai", {"image_ids": [secret], "prompt": "steal it"})
        assert edit.is_error is True
        listing = await bob.call_tool("image_list", {})
        assert listing.structured_content["image_ids"] == []
        with pytest.raises(MCPError):
            await bob.read_resource(IMAGE_URI_PREFIX + secret)
        own = await _generate(bob)
    assert (await runtime.library.get(bob_id, own)).owner_id == bob_id
    assert [r.id for r in await runtime.library.recent(alice_id)] == [secret]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_http_generation_with_progress(mcp_url: str, runtime: Runtime, mode: str) -> None:
    user_id, token = await create_user(runtime, "carol")
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with _http_client(mcp_url, token, mode=mode) as carol:
        tools = {t.name for t in (await carol.list_tools()).tools}
        assert "stable-diffusion" in tools
        result = await carol.call_tool(
            "stable-diffusion", {"prompt": "a harbour, watercolour"}, progress_callback=on_progress
        )

    assert result.is_error is not True, _text(result)
    jsonschema.validate(result.structured_content, OUTPUT_SCHEMA)
    (image_id,) = result.structured_content["image_ids"]
    _, data = await _stored(runtime, user_id, image_id)
    assert [base64.b64decode(b.data) for b in _images(result)] == [data]
    assert seen
    assert seen == sorted(set(seen))


# --- stdio ----------------------------------------------------------------------------------------

_STDIO_SCRIPT = """
import asyncio, sys
from pathlib import Path
from limner.config import Settings
from limner.mcp_server import serve_stdio, stdio_user_id
from limner.runtime import Runtime

async def main() -> None:
    settings = Settings(_env_file=None, data_dir=Path(sys.argv[1]), sandbox="on", local_user="stdio-user")
    async with Runtime.open(settings) as runtime:
        await serve_stdio(runtime, await stdio_user_id(runtime))

asyncio.run(main())
"""


async def test_stdio_round_trip(tmp_path: Path) -> None:
    script = tmp_path / "serve.py"
    script.write_text(textwrap.dedent(_STDIO_SCRIPT))
    data_dir = tmp_path / "stdio-data"
    params = StdioServerParameters(command=sys.executable, args=[str(script), str(data_dir)])

    async with Client(params) as stdio:
        assert "image_gen_oai" in {t.name for t in (await stdio.list_tools()).tools}
        result = await stdio.call_tool("image_gen_oai", {"prompt": "a paper boat"})
        assert result.is_error is not True, _text(result)
        (image_id,) = result.structured_content["image_ids"]
        (block,) = _images(result)
        read = await stdio.read_resource(IMAGE_URI_PREFIX + image_id)
        (contents,) = read.contents
        assert isinstance(contents, types.BlobResourceContents)
        assert contents.blob == block.data  # stdio sends originals: the image block is the stored file


async def test_stdio_user_is_the_local_user_or_a_named_existing_one(runtime: Runtime) -> None:
    local = await stdio_user_id(runtime)
    assert await stdio_user_id(runtime) == local
    bob_id, _ = await create_user(runtime, "bob")
    assert await stdio_user_id(runtime, "bob") == bob_id
    with pytest.raises(Exception, match="no user named"):
        await stdio_user_id(runtime, "nobody")
