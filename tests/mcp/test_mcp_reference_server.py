"""The reference MCP server from npm (``@modelcontextprotocol/server-everything``) through limner's client.

Its ``get-tiny-image`` tool answers with a PNG whose colour profile chunk (iCCP) fails its CRC: browsers
skip that chunk and show the logo, Pillow alone refuses the file. limner stores it repaired. The server
is the published package at the version pinned in ``tests/mcp/npm``, installed by
``scripts/install-mcp-servers`` when missing, run with Node.js over stdio as a user would configure it.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import httpx2
import pytest
import yaml
from PIL import Image, UnidentifiedImageError

from limner.api import create_app
from limner.ids import is_image_id
from limner.imaging_structure import check_png
from limner.mcp_client import MCPConnections, MCPServerConfig, qualified_name
from limner.net import FetchPolicy
from limner.runtime import Runtime
from tests import images
from tests.conftest import create_user, make_settings

ROOT = Path(__file__).resolve().parents[2]
NPM_DIR = ROOT / "tests" / "mcp" / "npm"
SERVER_JS = NPM_DIR / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
TOOL = "get-tiny-image"
POLICY = FetchPolicy(max_bytes=10 * 1024 * 1024, allow_loopback=True, timeout=10.0)


@pytest.fixture(scope="module")
def everything_server() -> list[str]:
    """The command that starts the pinned reference server over stdio (installed first when missing)."""
    installed = subprocess.run(
        [str(ROOT / "scripts" / "install-mcp-servers")], capture_output=True, text=True, check=False, timeout=600
    )
    if installed.returncode != 0:
        pytest.fail(f"scripts/install-mcp-servers failed:\n{installed.stdout}\n{installed.stderr}")
    node = shutil.which("node")
    assert node is not None, "install-mcp-servers leaves Node.js installed"
    return [node, str(SERVER_JS), "stdio"]


def _as_sent(data: bytes) -> list[tuple[bytes, bool]]:
    """Every chunk type of a PNG and whether its CRC is right, read independently of limner's walker."""
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        chunks.append((kind, zlib.crc32(kind + body) == crc))
        pos += 12 + length
    return chunks


def _with_crcs_made_right(data: bytes) -> bytes:
    """The server's PNG with every CRC recomputed: what Pillow can decode, to compare pixels with."""
    return images.png_from_chunks(images.png_chunks(data))


def _decode_strictly(data: bytes) -> tuple[str, tuple[int, int], bytes]:
    """Pillow with its defaults: every chunk's CRC (verify) and every pixel (load), nothing tolerated."""
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    return images.pixels(data)


async def _tiny_image_as_sent(command: list[str]) -> bytes:
    """The tool's image as the server sends it, through limner's MCP client alone (nothing stored)."""
    config = MCPServerConfig(name="everything", transport="stdio", command=command[0], args=tuple(command[1:]))
    async with MCPConnections({"everything": config}) as conns:
        assert TOOL in {t.name for t in await conns.list_tools("everything")}
        out = await conns.run_tool("everything", TOOL, {}, fetch_policy=POLICY)
    assert not out.is_error, out.text
    (image,) = out.images
    assert image.data is not None and image.media_type == "image/png"
    return image.data


async def test_the_reference_server_really_sends_a_damaged_ancillary_chunk(everything_server: list[str]) -> None:
    """The case the repair is for, seen on the wire: only the iCCP chunk is damaged, and Pillow refuses it."""
    sent = await _tiny_image_as_sent(everything_server)
    chunks = _as_sent(sent)
    assert [kind for kind, ok in chunks if not ok] == [b"iCCP"]
    assert all(ok for kind, ok in chunks if kind[0] & 0x20 == 0)  # every critical chunk intact
    with pytest.raises(UnidentifiedImageError):
        images.pixels(sent)


async def test_tiny_image_is_stored_repaired_with_an_id(tmp_path: Path, everything_server: list[str]) -> None:
    servers = {"mcpServers": {"everything": {"command": everything_server[0], "args": everything_server[1:]}}}
    config = tmp_path / "mcp.yaml"
    config.write_text(yaml.safe_dump(servers))
    settings = make_settings(tmp_path, mcp_config=config)
    async with Runtime.open(settings) as runtime:
        status = runtime.families["mcp:everything"].status
        assert status.available, status.reason
        _, token = await create_user(runtime, "ann")
        transport = httpx2.ASGITransport(app=create_app(settings, runtime=runtime))
        async with httpx2.AsyncClient(transport=transport, base_url="http://limner.test") as api:
            headers = {"Authorization": f"Bearer {token}"}
            made = await api.post(f"/api/tools/{qualified_name('everything', TOOL)}", headers=headers, json={})
            assert made.status_code == 200, made.text
            (image,) = made.json()["images"]
            assert is_image_id(image["id"]) and image["id"] in made.json()["text"]
            assert (image["source"], image["media_type"], image["width"], image["height"]) == (
                "mcp",
                "image/png",
                20,
                20,
            )
            stored = (await api.get(image["content_url"], headers=headers)).content
    sent = await _tiny_image_as_sent(everything_server)
    assert _decode_strictly(stored) == images.pixels(_with_crcs_made_right(sent))  # the logo's pixels, exactly
    assert [kind for kind, _ in _as_sent(stored)] == [kind for kind, _ in _as_sent(sent) if kind != b"iCCP"]
    assert all(ok for _, ok in _as_sent(stored))
    assert check_png(stored).dropped == ()  # nothing left to repair
