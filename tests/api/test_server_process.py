"""``limner serve`` as a real process: the quick start's defaults, and crash safety under SIGKILL."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from PIL import Image

from limner.config import Settings
from limner.db.repositories import StorageKeyRepository
from limner.runtime import Runtime
from tests.processes import LimnerServe, clean_env, free_port


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return clean_env(LIMNER_DATA_DIR=str(data_dir), **extra)


def _token(data_dir: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "limner", "tokens", "create", "--user", "pat"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=data_dir.parent,
    )
    return out.stdout.split()[-1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server_factory(data_dir: Path) -> Iterator[list[LimnerServe]]:
    started: list[LimnerServe] = []
    yield started
    for server in started:
        server.kill()


def test_quick_start_defaults_serve_the_sandbox(data_dir: Path, server_factory: list[LimnerServe]) -> None:
    env = _env(data_dir)
    token = _token(data_dir, env)
    server = LimnerServe(data_dir.parent, env)
    server_factory.append(server)
    health = server.wait_ready()
    assert health["sandbox"] == {"active": True, "reason": "no image provider is configured", "chat": True}
    headers = {"Authorization": f"Bearer {token}"}
    made = httpx2.post(
        f"{server.url}/api/tools/image_gen_oai", headers=headers, json={"prompt": "a lighthouse at dusk"}, timeout=30
    )
    assert made.status_code == 200, made.text
    (image,) = made.json()["images"]
    assert image["is_sandbox"] is True
    content = httpx2.get(f"{server.url}{image['content_url']}", headers=headers, timeout=10)
    assert Image.open(io.BytesIO(content.content)).size == (1024, 1024)
    server.stop()
    log = server.log.read_text()
    assert server.proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after shutting down
    assert "Application shutdown complete" in log
    assert "SANDBOX: no image provider is configured" in log


def test_configured_provider_turns_the_sandbox_off(data_dir: Path, server_factory: list[LimnerServe]) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"  # a configured provider that is not there (and offline)
    env = _env(data_dir, IMAGE_GEN_OAI_API_KEY="user_provided", IMAGE_GEN_OAI_BASEURL=closed)
    server = LimnerServe(data_dir.parent, env)
    server_factory.append(server)
    health = server.wait_ready()
    assert health["sandbox"]["active"] is False  # type: ignore[index]
    server.wait_probed()
    health = httpx2.get(f"{server.url}/api/health", timeout=10).json()
    families = {f["id"]: f for f in health["families"]}
    assert {k: v for k, v in families["image_gen_oai"].items() if k != "provider"} == {
        "id": "image_gen_oai",
        "available": True,
        "is_sandbox": False,
    }
    assert families["image_gen_oai"]["provider"]["state"] == "not_answering"  # the log says it too
    assert "IMAGE_GEN_OAI_BASEURL" in families["image_gen_oai"]["provider"]["hint"]
    assert families["dalle"]["available"] is False  # never silently replaced by the sandbox
    assert "OpenAI Image Tools: Nothing accepts connections there" in server.output()


def test_invalid_setting_stops_the_server_naming_it(data_dir: Path) -> None:
    env = _env(data_dir, LIMNER_MAX_IMAGE_PIXELS="many")
    result = subprocess.run(
        [sys.executable, "-m", "limner", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=data_dir.parent,
    )
    assert result.returncode == 78
    assert "LIMNER_MAX_IMAGE_PIXELS" in result.stderr + result.stdout


def _big_png(seed: int) -> bytes:
    image = Image.frombytes("RGB", (900, 900), os.urandom(900 * 900 * 3))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=0)
    return out.getvalue()


async def _upload(client: httpx2.AsyncClient, url: str, token: str, i: int) -> bool:
    """One upload; True when the server acknowledged it (201), False when it was killed under us."""
    files = {"file": (f"{i}.png", _big_png(i), "image/png")}
    try:
        response = await client.post(f"{url}/api/images", headers={"Authorization": f"Bearer {token}"}, files=files)
    except httpx2.TransportError:
        return False
    assert response.status_code == 201, response.text
    return True


# Each point is a moment of the save where a crash used to be able to leave a half-written file, a blob
# without a row, or a row without a blob: the server holds every save that reaches it until the SIGKILL.
CRASH_POINTS = {
    "storage.temporary_written": "the blob's temporary file is written, not yet renamed",
    "library.blobs_stored": "the blobs are stored, their rows not yet inserted",
    "library.rows_uncommitted": "the rows are inserted, not yet committed",
}


@pytest.mark.parametrize("point", sorted(CRASH_POINTS))
async def test_sigkill_mid_save_leaves_no_orphans(
    data_dir: Path, server_factory: list[LimnerServe], point: str
) -> None:
    env = _env(data_dir, LIMNER_SANDBOX="off", LIMNER_CRASH_POINT=f"{point}@3")  # the first two saves pass
    token = await asyncio.to_thread(_token, data_dir, env)
    server = LimnerServe(data_dir.parent, env)
    server_factory.append(server)
    await asyncio.to_thread(server.wait_ready)

    async with httpx2.AsyncClient(timeout=60) as client:
        acknowledged = [await _upload(client, server.url, token, i) for i in range(2)]
        burst = asyncio.gather(*(_upload(client, server.url, token, i) for i in range(2, 24)))
        await asyncio.to_thread(server.wait_for_log, f"crash point {point} reached")
        on_disk_before = {p.relative_to(data_dir) for p in (data_dir / "blobs").rglob("*") if p.is_file()}
        server.kill()
        acknowledged += await burst
    assert acknowledged[:2] == [True, True] and not all(acknowledged)  # killed in the middle of the burst
    if point == "storage.temporary_written":
        assert any(p.name.endswith(".tmp") for p in on_disk_before)  # the crash left a temporary file

    settings = Settings(_env_file=None, data_dir=data_dir, sandbox="off")
    async with Runtime.open(settings) as runtime:  # restart: migrations and all
        report = await runtime.library.sweep(min_age=0)
        assert report.rows_missing_blobs == []  # no row without its blob
        if point != "storage.temporary_written":
            assert report.orphan_blobs_removed >= 1  # the crash left a blob without a row, and it is gone
        async with runtime.db.unit_of_work() as session:
            referenced = await StorageKeyRepository(session).all_keys()
        stored = {key async for key, _ in runtime.library.store.iter_keys()}
        assert stored == referenced  # and, after the sweep, no blob without a row
        assert list((data_dir / "blobs").rglob("*.tmp")) == []
        assert len(referenced) >= sum(acknowledged)  # nothing acknowledged was lost


async def test_limner_serve_mounts_the_mcp_server_behind_the_token(
    data_dir: Path, server_factory: list[LimnerServe]
) -> None:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    env = _env(data_dir)
    token = await asyncio.to_thread(_token, data_dir, env)
    server = LimnerServe(data_dir.parent, env)
    server_factory.append(server)
    await asyncio.to_thread(server.wait_ready)
    async with httpx2.AsyncClient(timeout=30) as anonymous:
        refused = await anonymous.post(f"{server.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 401
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
        Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client,
    ):
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"image_gen_oai", "image_list", "image_view"} <= names
        result = await client.call_tool("image_gen_oai", {"prompt": "a lighthouse"})
        assert not result.is_error
        assert any(block.type == "image" for block in result.content)
