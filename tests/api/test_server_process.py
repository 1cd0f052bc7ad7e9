"""``limner serve`` as a real process: the quick start's defaults, and crash safety under SIGKILL."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from PIL import Image

from limner.config import Settings
from limner.db.repositories import StorageKeyRepository
from limner.runtime import Runtime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIMNER_", "IMAGE_GEN_OAI", "PROXY"))}
    env.update({"LIMNER_DATA_DIR": str(data_dir), **extra})
    return env


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


class Server:
    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / "server.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "limner", "serve", "--port", str(self.port)],
            env=env,
            cwd=data_dir.parent,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(self.log.read_text())
            try:
                return dict(httpx2.get(f"{self.url}/api/health", timeout=1).json())
            except httpx2.TransportError:
                time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.log.read_text())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self._log_file.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server_factory(data_dir: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop(signal.SIGKILL)


def test_quick_start_defaults_serve_the_sandbox(data_dir: Path, server_factory: list[Server]) -> None:
    env = _env(data_dir)
    token = _token(data_dir, env)
    server = Server(data_dir, env)
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


def test_configured_provider_turns_the_sandbox_off(data_dir: Path, server_factory: list[Server]) -> None:
    env = _env(data_dir, IMAGE_GEN_OAI_API_KEY="user_provided")
    server = Server(data_dir, env)
    server_factory.append(server)
    health = server.wait_ready()
    assert health["sandbox"]["active"] is False  # type: ignore[index]
    families = {f["id"]: f for f in health["families"]}  # type: ignore[attr-defined]
    assert families["image_gen_oai"] == {"id": "image_gen_oai", "available": True, "is_sandbox": False}
    assert families["dalle"]["available"] is False  # never silently replaced by the sandbox


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


async def _upload_burst(url: str, token: str, count: int, first_saved: asyncio.Event) -> int:
    saved = 0
    async with httpx2.AsyncClient(timeout=30) as client:

        async def one(i: int) -> None:
            nonlocal saved
            files = {"file": (f"{i}.png", _big_png(i), "image/png")}
            try:
                response = await client.post(
                    f"{url}/api/images", headers={"Authorization": f"Bearer {token}"}, files=files
                )
            except httpx2.TransportError:
                return  # the server was killed under us: that is the point
            if response.status_code == 201:
                saved += 1
                first_saved.set()

        await asyncio.gather(*(one(i) for i in range(count)))
    return saved


@pytest.mark.parametrize("kill_after", [0.0, 0.03, 0.1])
async def test_sigkill_mid_save_leaves_no_orphans(
    data_dir: Path, server_factory: list[Server], kill_after: float
) -> None:
    env = _env(data_dir, LIMNER_SANDBOX="off")
    token = await asyncio.to_thread(_token, data_dir, env)
    server = Server(data_dir, env)
    server_factory.append(server)
    await asyncio.to_thread(server.wait_ready)

    first_saved = asyncio.Event()
    burst = asyncio.create_task(_upload_burst(server.url, token, 24, first_saved))
    await asyncio.wait_for(first_saved.wait(), timeout=60)
    await asyncio.sleep(kill_after)
    server.stop(signal.SIGKILL)
    acknowledged = await burst
    assert 1 <= acknowledged < 24  # killed in the middle of the burst

    settings = Settings(_env_file=None, data_dir=data_dir, sandbox="off")
    async with Runtime.open(settings) as runtime:  # restart: migrations and all
        report = await runtime.library.sweep(min_age=0)
        assert report.rows_missing_blobs == []  # no row without its blob
        async with runtime.db.unit_of_work() as session:
            referenced = await StorageKeyRepository(session).all_keys()
        stored = {key async for key, _ in runtime.library.store.iter_keys()}
        assert stored == referenced  # and, after the sweep, no blob without a row
        assert list((data_dir / "blobs").rglob("*.tmp")) == []
        assert len(referenced) >= acknowledged  # nothing acknowledged was lost


async def test_limner_serve_mounts_the_mcp_server_behind_the_token(
    data_dir: Path, server_factory: list[Server]
) -> None:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    env = _env(data_dir)
    token = await asyncio.to_thread(_token, data_dir, env)
    server = Server(data_dir, env)
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
