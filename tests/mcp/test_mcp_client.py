"""The MCP client adapter against the emulated image server, over stdio, Streamable HTTP and legacy SSE.

One emulator app is served on loopback and one stdio server process is shared by the module (a fresh
process per test would cost most of the time budget); tests that kill servers use their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from mcp.client.client import Client
from mcp.shared.exceptions import MCPError
from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from limner.backends.base import Progress
from limner.errors import ConfigurationError, ProviderResponseError, ProviderUnavailableError, ToolNotFoundError
from limner.imaging import sniff_media_type
from limner.mcp_client import (
    MCPConnections,
    MCPServerConfig,
    fill_image_placeholders,
    load_mcp_config,
    normalise_result,
    parse_mcp_servers,
    qualified_name,
)
from limner.net import FetchPolicy
from limner.sandbox.mcp_servers import ImagesServerState
from limner.sandbox.mcp_servers_http import MCPImagesEmulator
from limner.sandbox.renderer import read_stamp
from limner.sandbox.server import RunningSandbox, Sandbox, serve_sandbox

module_loop = pytest.mark.asyncio(loop_scope="module")  # the async tests share the served emulator
pytestmark = pytest.mark.shared_processes  # the module's env opens stdio servers on first use

TRANSPORTS = ("stdio", "http", "sse")
POLICY = FetchPolicy(max_bytes=10 * 1024 * 1024, allow_loopback=True, timeout=10.0)
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{200,}")


class _MCPSandbox(Sandbox):
    """The sandbox with the MCP image emulator mounted next to the others."""

    def __init__(self, mcp: MCPImagesEmulator) -> None:
        super().__init__()
        self.mcp = mcp

    def emulators(self) -> dict[str, Any]:
        return {**super().emulators(), "mcp": self.mcp}


class Env:
    def __init__(self, running: RunningSandbox, emulator: MCPImagesEmulator, conns: MCPConnections, out: Path):
        self.running = running
        self.emulator = emulator
        self.conns = conns
        self.output_dir = out


def _stdio_config(name: str, *extra: str, **kwargs: Any) -> MCPServerConfig:
    return MCPServerConfig(
        name=name,
        transport="stdio",
        command=sys.executable,
        args=("-m", "limner.sandbox.mcp_servers", "images", *extra),
        init_timeout=20.0,
        **kwargs,
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    out = tmp_path_factory.mktemp("mcp-images")
    emulator = MCPImagesEmulator(state=ImagesServerState(output_dir=out))  # serves what the stdio twin writes
    async with serve_sandbox(_MCPSandbox(emulator)) as running:
        public = running.urls["mcp_images"].removesuffix("/mcp")
        servers = {
            "stdio": _stdio_config("stdio", "--public-url", public, "--output-dir", str(out)),
            "http": MCPServerConfig(name="http", transport="streamable-http", url=running.urls["mcp_images"]),
            "sse": MCPServerConfig(name="sse", transport="sse", url=running.urls["mcp_images_sse"]),
        }
        async with MCPConnections(servers) as conns:
            yield Env(running, emulator, conns, out)


def _stamp_prompt(data: bytes) -> str | None:
    stamp = read_stamp(data)
    return None if stamp is None else stamp.get("prompt")


def _assert_no_base64(text: str) -> None:
    assert BASE64_RUN.search(text) is None, text[:300]
    assert "base64," not in text


# --- discovery -----------------------------------------------------------------------------------


@module_loop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_lists_tools_with_schemas_and_safe_names(env: Env, transport: str) -> None:
    tools = {tool.name: tool for tool in await env.conns.list_tools(transport)}
    assert {"generate_image", "generate_image_link", "hang", "fail"} <= tools.keys()
    generate = tools["generate_image"]
    assert generate.description.startswith("Generate an image")
    assert generate.input_schema["type"] == "object"
    assert "prompt" in generate.input_schema["properties"]
    assert generate.qualified_name == f"mcp__{transport}__generate_image"
    assert ("crash" in tools) == (transport == "stdio")  # never offered by a server living in our process


# --- every image form ----------------------------------------------------------------------------


@module_loop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_image_content_block(env: Env, transport: str) -> None:
    seen: list[Progress] = []

    async def progress(update: Progress) -> None:
        seen.append(update)

    out = await env.conns.run_tool(
        transport, "generate_image", {"prompt": "a red fox"}, fetch_policy=POLICY, progress=progress
    )
    assert not out.is_error
    assert len(out.images) == 1
    image = out.images[0]
    assert image.media_type == "image/png" and image.data is not None
    assert _stamp_prompt(image.data) == "a red fox"
    assert image.provider_details == {"mcp_server": transport, "mcp_tool": "generate_image", "source": "image_content"}
    assert out.text == "Here's the image you requested:\n\n{{image:0}}\n\nThe image above shows: a red fox"
    assert [p.fraction for p in seen] == [0.0, 0.5]
    assert seen[0].message == "rendering"


@module_loop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_embedded_resource_blob(env: Env, transport: str) -> None:
    out = await env.conns.run_tool(transport, "generate_image_resource", {"prompt": "blob owl"}, fetch_policy=POLICY)
    assert len(out.images) == 1 and out.images[0].data is not None
    assert _stamp_prompt(out.images[0].data) == "blob owl"
    assert out.images[0].provider_details["source"] == "embedded_resource"
    assert out.images[0].provider_details["origin"].startswith("sandbox://images/")
    assert out.text == "Rendered 'blob owl'.\n\n{{image:0}}"


@module_loop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_resource_link_is_read_from_the_server(env: Env, transport: str) -> None:
    out = await env.conns.run_tool(transport, "generate_image_link", {"prompt": "linked lynx"}, fetch_policy=POLICY)
    assert len(out.images) == 1 and out.images[0].data is not None
    assert _stamp_prompt(out.images[0].data) == "linked lynx"
    assert out.images[0].provider_details["source"] == "resource_link"
    assert out.text.endswith("\n\n{{image:0}}")


@module_loop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_url_in_text_is_fetched_and_replaced(env: Env, transport: str) -> None:
    out = await env.conns.run_tool(transport, "generate_image_url", {"prompt": "url heron"}, fetch_policy=POLICY)
    assert len(out.images) == 1 and out.images[0].data is not None
    assert _stamp_prompt(out.images[0].data) == "url heron"
    assert out.text.startswith("Generated image URL: {{image:0}}\n")
    assert "http" not in out.text
    assert out.images[0].provider_details["origin"].startswith(env.running.base_url)


@module_loop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_url_in_structured_content(env: Env, transport: str) -> None:
    out = await env.conns.run_tool(
        transport, "generate_image_structured", {"prompt": "structured stork"}, fetch_policy=POLICY
    )
    # The same URL is in the text block and in structuredContent: one image, one placeholder.
    assert len(out.images) == 1 and out.images[0].data is not None
    assert _stamp_prompt(out.images[0].data) == "structured stork"
    assert json.loads(out.text)["result"]["images"][0]["url"] == "{{image:0}}"


@module_loop
async def test_url_only_in_structured_content_is_appended() -> None:
    async with serve_sandbox(_MCPSandbox(MCPImagesEmulator())) as running:
        public = running.urls["mcp_images"].removesuffix("/mcp")
        async with Client(running.urls["mcp_images"]) as client:
            made = await client.call_tool("generate_image_url", {"prompt": "only structured"})
        url = made.content[0].text.split()[3]  # type: ignore[union-attr]
        assert url.startswith(public)
        result = CallToolResult(
            content=[TextContent(text="Done.")], structured_content={"output": {"image_url": url, "seed": 3}}
        )
        out = await normalise_result(result, server="s", tool="t", fetch_policy=POLICY)
    assert out.text == "Done.\n\n{{image:0}}"
    assert out.images[0].data is not None and _stamp_prompt(out.images[0].data) == "only structured"


@module_loop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_data_uri_in_text(env: Env, transport: str) -> None:
    out = await env.conns.run_tool(transport, "generate_image_data_uri", {"prompt": "inline ibis"}, fetch_policy=POLICY)
    assert len(out.images) == 1 and out.images[0].data is not None
    assert _stamp_prompt(out.images[0].data) == "inline ibis"
    assert out.text == "Screenshot of 'inline ibis' taken at 64x64\n{{image:0}}"
    _assert_no_base64(out.text)


@module_loop
async def test_local_files_only_inside_allowed_paths(env: Env, tmp_path: Path) -> None:
    args = {"prompt": "local loon"}
    refused = await env.conns.run_tool("stdio", "generate_image_file", args, fetch_policy=POLICY)
    assert refused.images == []
    assert str(env.output_dir) in refused.text  # left as it was: the operator allowed no directory
    assert any("local files are not allowed" in w for w in refused.warnings)

    allowed = [env.output_dir]
    out = await env.conns.run_tool("stdio", "generate_image_file", args, fetch_policy=POLICY, allowed_paths=allowed)
    assert out.images[0].data is not None and _stamp_prompt(out.images[0].data) == "local loon"
    assert out.text == "Success. Image saved to: {{image:0}}"
    as_uri = {**args, "as_uri": True}
    out = await env.conns.run_tool("stdio", "generate_image_file", as_uri, fetch_policy=POLICY, allowed_paths=allowed)
    assert len(out.images) == 1 and out.text == "Success. Image saved to: {{image:0}}"

    # Symlinks are resolved before the check, and '..' never passes.
    outside = tmp_path / "secret.png"
    outside.write_bytes(out.images[0].data or b"")
    (env.output_dir / "escape.png").symlink_to(outside)
    for path in (env.output_dir / "escape.png", f"{env.output_dir}/../{env.output_dir.name}/x.png"):
        out = await env.conns.run_tool(
            "stdio", "echo_text", {"text": f"Image saved to: {path}"}, fetch_policy=POLICY, allowed_paths=allowed
        )
        assert out.images == []
        assert "not used: Refused to read" in out.text


# --- safety: fetching, caps, base64 --------------------------------------------------------------


@module_loop
async def test_urls_go_through_the_safe_fetcher(env: Env) -> None:
    private = await env.conns.run_tool(
        "http", "echo_text", {"text": "Image URL: http://10.1.2.3/out-0.png"}, fetch_policy=POLICY
    )
    assert private.images == []
    assert "not used: Refused to fetch http://10.1.2.3/..." in private.text
    assert "private" in private.text
    assert "out-0.png" not in private.text

    # The emulator's own URL is loopback: refused unless the policy allows loopback.
    strict = FetchPolicy(max_bytes=POLICY.max_bytes)
    out = await env.conns.run_tool("http", "generate_image_url", {"prompt": "strict"}, fetch_policy=strict)
    assert out.images == []
    assert "loopback" in out.text
    assert out.warnings and "loopback" in out.warnings[0]


@module_loop
async def test_byte_cap_refuses_with_a_clear_text(env: Env) -> None:
    out = await env.conns.run_tool(
        "http", "generate_image", {"prompt": "too big"}, fetch_policy=POLICY, max_image_bytes=1000
    )
    assert not out.is_error and out.images == []
    assert "not used: An image content block is larger than the limit of 1,000 bytes" in out.text
    _assert_no_base64(out.text)
    small = FetchPolicy(max_bytes=1000, allow_loopback=True)
    out = await env.conns.run_tool("http", "generate_image_url", {"prompt": "too big"}, fetch_policy=small)
    assert out.images == [] and "larger than the limit of 1,000 bytes" in out.text


@module_loop
async def test_large_image_over_streamable_http(env: Env) -> None:
    """~2 MB in one SSE event: past the SDK's default 1 MiB limit, which this client raises."""
    url = env.running.urls["mcp_images"]
    updates: list[Progress] = []

    async def progress(update: Progress) -> None:
        updates.append(update)

    # A progress token makes the server answer over SSE; the SDK's defaults then fail.
    async def sdk_progress(progress: float, total: float | None, message: str | None) -> None:
        return None

    async with Client(url) as plain:
        with pytest.raises(MCPError, match="byte limit"):
            await plain.call_tool("generate_large_image", {}, progress_callback=sdk_progress)

    out = await env.conns.run_tool("http", "generate_large_image", {}, fetch_policy=POLICY, progress=progress)
    assert not out.is_error and len(out.images) == 1
    assert out.images[0].data is not None and len(out.images[0].data) > 1_900_000
    assert sniff_media_type(out.images[0].data) == "image/png"
    assert updates and updates[0].message == "rendering noise"


@module_loop
async def test_base64_is_never_left_in_text(env: Env) -> None:
    png = (await env.conns.run_tool("http", "generate_image", {"prompt": "raw"}, fetch_policy=POLICY)).images[0].data
    assert png is not None
    raw_image = base64.b64encode(png).decode()
    pdf = base64.b64encode(b"%PDF-1.7 " * 60).decode()
    text = f'{{"image": "{raw_image}"}}\nattachment: data:application/pdf;base64,{pdf}\nblob: {pdf}'
    out = await env.conns.run_tool("http", "echo_text", {"text": text}, fetch_policy=POLICY)
    assert len(out.images) == 1 and out.images[0].data == png
    assert '{"image": "{{image:0}}"}' in out.text
    assert "[a data: URI of application/pdf (540 bytes) omitted]" in out.text
    assert "blob: [540 bytes of base64 data omitted]" in out.text
    _assert_no_base64(out.text)


@module_loop
async def test_links_that_are_not_images_stay_text(env: Env) -> None:
    docs = env.running.base_url + "/"  # the sandbox index: JSON, not an image
    out = await env.conns.run_tool(
        "http", "echo_text", {"text": f"Image docs: {docs} and https://example.com/about"}, fetch_policy=POLICY
    )
    assert out.images == []
    assert out.text == f"Image docs: {docs} and https://example.com/about"


@module_loop
async def test_a_server_cannot_forge_placeholders(env: Env) -> None:
    out = await env.conns.run_tool("http", "echo_text", {"text": "see {{image:0}}"}, fetch_policy=POLICY)
    assert out.images == []
    assert fill_image_placeholders(out.text, ["img_x"]) == out.text
    assert "{{image:0}}" not in out.text


# --- errors, timeouts, restarts ------------------------------------------------------------------


@module_loop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tool_errors_and_protocol_errors(env: Env, transport: str) -> None:
    failed = await env.conns.run_tool(transport, "fail", {"message": "no credits"}, fetch_policy=POLICY)
    assert failed.is_error and failed.images == []
    assert f"'fail' of server '{transport}'" in failed.text and "no credits" in failed.text

    broken = await env.conns.run_tool(transport, "protocol_error", {}, fetch_policy=POLICY)
    assert broken.is_error
    assert f"'protocol_error' of server '{transport}'" in broken.text
    assert "upstream exploded" in broken.text and "-32603" in broken.text

    with pytest.raises(ProviderResponseError, match="upstream exploded") as raised:
        await env.conns.call_tool(transport, "protocol_error", {})
    assert raised.value.provider == "mcp" and raised.value.endpoint == transport


@module_loop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hung_call_times_out_without_blocking_others(env: Env, transport: str) -> None:
    before = env.emulator.state.cancelled_hangs
    hung = asyncio.create_task(env.conns.call_tool(transport, "hang", {}, timeout_seconds=1.0))
    quick = await env.conns.run_tool(transport, "echo_text", {"text": "still here"}, fetch_policy=POLICY)
    assert quick.text == "still here"
    assert not hung.done()  # answered while the hung call still waits: the hang held up nothing
    with pytest.raises(ProviderUnavailableError) as raised:
        await hung
    assert f"MCP server '{transport}' (tool 'hang')" in raised.value.message
    assert "within 1 s" in raised.value.message
    again = await env.conns.run_tool(transport, "echo_text", {"text": "after"}, fetch_policy=POLICY)
    assert again.text == "after"
    if transport != "stdio":  # the in-process emulator shows the cancellation arrived
        for _ in range(50):
            if env.emulator.state.cancelled_hangs > before:
                break
            await asyncio.sleep(0.02)
        assert env.emulator.state.cancelled_hangs == before + 1


@module_loop
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_concurrent_calls_share_one_connection(env: Env, transport: str) -> None:
    prompts = [f"parallel {i}" for i in range(6)]
    outputs = await asyncio.gather(
        *(env.conns.run_tool(transport, "generate_image", {"prompt": p}, fetch_policy=POLICY) for p in prompts)
    )
    assert [_stamp_prompt(out.images[0].data or b"") for out in outputs] == prompts


async def _pid(conns: MCPConnections, server: str) -> int:
    result = await conns.call_tool(server, "whoami")
    return int(json.loads(result.content[0].text)["pid"])  # type: ignore[union-attr]


@module_loop
async def test_dead_stdio_server_is_restarted_on_next_use() -> None:
    async with MCPConnections({"solo": _stdio_config("solo")}) as conns:
        # Callers racing to open the server start it once.
        pids = await asyncio.gather(*(_pid(conns, "solo") for _ in range(4)))
        assert len(set(pids)) == 1
        first = pids[0]
        with pytest.raises(ProviderUnavailableError, match="lost the connection"):
            await conns.call_tool("solo", "crash")
        second = await _pid(conns, "solo")
        assert second != first

        # Killed while idle: noticed from its closed output, so the next call simply works.
        os.kill(second, signal.SIGKILL)
        connection = conns._states["solo"].connection
        assert connection is not None
        async with asyncio.timeout(60):  # the moment it noticed, whatever the machine's speed
            while connection.usable:
                await asyncio.sleep(0.01)
        third = await _pid(conns, "solo")
        assert third not in (first, second)
        assert (await conns.list_tools("solo"))[0].server == "solo"
    with pytest.raises(ProcessLookupError):
        os.kill(third, 0)  # aclose() stopped the server


@module_loop
async def test_unknown_server_and_failed_start(tmp_path: Path) -> None:
    bad = MCPServerConfig(name="broken", transport="stdio", command=str(tmp_path / "no-such-server"))
    async with MCPConnections({"broken": bad}) as conns:
        with pytest.raises(ToolNotFoundError, match="No MCP server named 'nope'"):
            await conns.list_tools("nope")
        with pytest.raises(ProviderUnavailableError) as raised:
            await conns.call_tool("broken", "anything")
    assert "MCP server 'broken' could not be started" in raised.value.message
    assert "no-such-server" in (raised.value.hint or "")

    silent = MCPServerConfig(  # starts, but never answers the handshake
        name="silent",
        transport="stdio",
        command=sys.executable,
        args=("-c", "import sys; sys.stdin.read()"),
        init_timeout=0.5,
    )
    async with MCPConnections({"silent": silent}) as conns:
        with pytest.raises(ProviderUnavailableError, match="'silent' did not finish starting within 0.5 s"):
            await conns.list_tools("silent")


# --- normalising without a server ----------------------------------------------------------------


@module_loop
async def test_normalise_shapes_of_real_servers(env: Env) -> None:
    async with Client(env.running.urls["mcp_images"]) as client:
        made = await client.call_tool("generate_image_url", {"prompt": "gongrzhe"})
    url = made.content[0].text.split()[3]  # type: ignore[union-attr]
    png = (await normalise_result(made, server="s", tool="t", fetch_policy=POLICY)).images[0].data
    cases = [
        json.dumps([url]),  # gongrzhe image-gen-server: a JSON array of URLs
        json.dumps({"imageUrl": url.replace(".png", ""), "seed": 1}),  # Pollinations, no extension
        f"Success. Image URLs: [{url!r}]",  # MiniMax: a Python list repr
    ]
    for text in cases:
        result = CallToolResult(content=[TextContent(text=text)])
        out = await normalise_result(result, server="s", tool="t", fetch_policy=POLICY)
        if "imageUrl" in text:  # the extension-less URL 404s, but it was recognised and tried
            assert "not used" in out.text and "HTTP 404" in out.text
            continue
        assert [i.data for i in out.images] == [png], text
        assert url not in out.text and "{{image:0}}" in out.text


@module_loop
async def test_normalise_image_block_with_data_uri_prefix_and_lying_mime(env: Env) -> None:
    png = (await env.conns.run_tool("http", "generate_image", {"prompt": "mime"}, fetch_policy=POLICY)).images[0].data
    assert png is not None
    block = ImageContent(data="data:image/jpeg;base64," + base64.b64encode(png).decode(), mime_type="image/jpeg")
    link = ResourceLink(type="resource_link", uri="https://10.0.0.9/a.png", name="a.png", mime_type="image/png")
    result = CallToolResult(content=[block, block, link])
    out = await normalise_result(result, server="s", tool="t", fetch_policy=POLICY)
    assert len(out.images) == 1 and out.images[0].media_type == "image/png"  # trusted the bytes, merged the twin
    assert out.text.startswith("{{image:0}}\n\n{{image:0}}\n\n[image from the linked resource https://10.0.0.9/...")


@module_loop
async def test_normalise_other_block_types(env: Env, tmp_path: Path) -> None:
    png = (await env.conns.run_tool("http", "generate_image", {"prompt": "blocks"}, fetch_policy=POLICY)).images[0].data
    assert png is not None
    stored = tmp_path / "out.png"
    stored.write_bytes(png)
    result = CallToolResult(
        content=[
            AudioContent(data=base64.b64encode(b"RIFF" * 100).decode(), mime_type="audio/wav"),
            ResourceLink(
                type="resource_link", uri="https://x.test/doc.pdf", name="doc.pdf", mime_type="application/pdf"
            ),
            EmbeddedResource(
                type="resource",
                resource=BlobResourceContents(uri="mem://a.bin", mime_type="application/zip", blob="UEsDBA=="),
            ),
            EmbeddedResource(  # Stability AI: a text resource pointing at the file it wrote
                type="resource",
                resource=TextResourceContents(
                    uri=stored.as_uri(), mime_type="image/png", text=f"Image out.png created at URI {stored.as_uri()}"
                ),
            ),
            TextContent(text=f"Also at {tmp_path}/missing.png"),
        ]
    )
    out = await normalise_result(result, server="s", tool="t", fetch_policy=POLICY, allowed_paths=[tmp_path])
    assert [i.data for i in out.images] == [png]
    assert out.text.split("\n\n") == [
        "[audio content (audio/wav) omitted]",
        "[resource doc.pdf: https://x.test/... (application/pdf)]",
        "[embedded resource mem://a.bin (application/zip) omitted]",
        "Image out.png created at URI {{image:0}}",
        f"Also at [image from the local file {tmp_path}/missing.png not used: Cannot read {tmp_path}/missing.png: "
        "No such file or directory.]",
    ]


def test_fill_image_placeholders() -> None:
    text = "a {{image:0}} b {{image:1}} c {{image:7}}"
    assert fill_image_placeholders(text, ["img_A", "img_B"]) == "a [image img_A] b [image img_B] c {{image:7}}"
    assert fill_image_placeholders("{{image:0}}", ["x"], render=lambda i: f"<{i}>") == "<x>"


# --- configuration -------------------------------------------------------------------------------

_GOOD_YAML = """
version: 1.2.1
endpoints: {}
mcpServers:
  local:
    command: ${PYTHON}
    args: ["-m", "server", 3]
    env:
      API_KEY: "${SECRET_KEY}"
    timeout: 90000
    initTimeout: 15000
    iconPath: /icons/x.svg
  remote:
    type: streamable-http
    url: https://mcp.example.com/${TENANT}/mcp
    headers:
      Authorization: "Bearer ${TOKEN}"
  legacy:
    url: http://localhost:3001/sse
  modern:
    type: http
    url: http://localhost:3001/mcp
  files:
    command: npx
    allowedPaths: [/srv/images]
"""


def test_load_config_with_variables(tmp_path: Path) -> None:
    path = tmp_path / "librechat.yaml"
    path.write_text(_GOOD_YAML)
    env = {"PYTHON": "/usr/bin/python3", "SECRET_KEY": "k-123456789", "TENANT": "acme", "TOKEN": "t0ps3cr3t"}
    servers = load_mcp_config(path, env)
    assert list(servers) == ["local", "remote", "legacy", "modern", "files"]
    local = servers["local"]
    assert (local.transport, local.command, local.args) == ("stdio", "/usr/bin/python3", ("-m", "server", "3"))
    assert dict(local.env) == {"API_KEY": "k-123456789"}
    assert (local.timeout, local.init_timeout) == (90.0, 15.0)
    remote = servers["remote"]
    assert remote.url == "https://mcp.example.com/acme/mcp" and remote.transport == "streamable-http"
    assert dict(remote.headers) == {"Authorization": "Bearer t0ps3cr3t"}
    assert servers["legacy"].transport == "sse" and servers["modern"].transport == "streamable-http"
    assert [str(p) for p in servers["files"].allowed_paths] == ["/srv/images"]
    assert "t0ps3cr3t" not in repr(remote) and "k-123456789" not in repr(local)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"command": "x", "env": {"K": "${MISSING}"}}, "field 'env.K' needs the environment variable MISSING"),
        ({"url": "https://x/mcp", "headers": {"X-User": "{{LIBRECHAT_USER_ID}}"}}, "field 'headers.X-User'"),
        ({"command": "x", "comand": "y"}, "field 'comand' is not a setting limner knows"),
        ({"type": "websocket", "url": "ws://x"}, "field 'type' is websocket"),
        ({"type": "stdio"}, "field 'command' is missing"),
        ({"command": "x", "timeout": 60}, "field 'timeout' is 60 milliseconds, less than a second"),
        ({"command": "x", "timeout": 7_200_000}, "field 'timeout' is 7.2e+06 milliseconds, more than an hour"),
        ({"command": "x", "timeout": "soon"}, "field 'timeout' must be a positive number"),
        ({"command": "x", "url": "https://x"}, "field 'type' is missing while both command and url are set"),
        ({"type": "sse", "url": "ftp://x/sse"}, "field 'url' must start with http"),
        ({"command": "x", "headers": {"A": "b"}}, "field 'headers' applies to HTTP servers"),
        ({"url": "https://x/mcp", "oauth": {"client_id": "c"}}, "field 'oauth' cannot be honoured"),
        ({"command": "x", "allowedPaths": ["images"]}, "field 'allowedPaths[0]' must be an absolute path"),
        ({}, "field 'command' is missing (and so is url)"),
    ],
)
def test_config_errors_name_server_and_field(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_mcp_servers({"srv": entry}, {})
    assert raised.value.message.startswith("MCP server 'srv': ")
    assert message in raised.value.message


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Cannot read the MCP servers file"):
        load_mcp_config(tmp_path / "missing.yaml", {})
    path = tmp_path / "bad.yaml"
    path.write_text("endpoints: {}\n")
    with pytest.raises(ConfigurationError, match="has no mcpServers block"):
        load_mcp_config(path, {})
    path.write_text("mcpServers: [a, b]\n")
    with pytest.raises(ConfigurationError, match="must map server names"):
        load_mcp_config(path, {})
    path.write_text("mcpServers:\n  x: {command: [\n")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_mcp_config(path, {})
    with pytest.raises(ConfigurationError) as raised:
        parse_mcp_servers({"x": {"command": "a", "timeout": 60}}, {})
    assert "write 60000" in (raised.value.hint or "")


def test_librechat_timeouts_are_milliseconds() -> None:
    """A real librechat.yaml says timeout: 60000 and initTimeout: 10000 (ms) and must load as it is."""
    servers = parse_mcp_servers({"x": {"command": "a", "timeout": 60000, "initTimeout": 10000}}, {})
    assert (servers["x"].timeout, servers["x"].init_timeout) == (60.0, 10.0)


# --- names ---------------------------------------------------------------------------------------

_LLM_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def test_qualified_names_are_safe_and_distinct() -> None:
    assert qualified_name("images", "generate_image") == "mcp__images__generate_image"
    pairs = [
        ("images", "generate_image"),
        ("my server", "gen.image"),
        ("my_server", "gen_image"),
        ("a__b", "c"),
        ("a", "b__c"),
        ("a_", "_b"),
        ("a", "__b"),
        ("x" * 80, "tool"),
        ("x" * 80, "tool2"),
        ("srv", "t" * 100),
        ("srv", "t" * 99),
        ("ünïcode", "wörk"),
        ("", "t"),
    ]
    names = [qualified_name(server, tool) for server, tool in pairs]
    assert all(_LLM_NAME.match(name) for name in names), names
    assert all(name.startswith("mcp__") for name in names)
    assert len(set(names)) == len(names)
    assert qualified_name("my server", "gen.image") == qualified_name("my server", "gen.image")  # stable
