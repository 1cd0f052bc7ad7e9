"""A configured provider that does not answer is known before the first call fails (issue 24 item 6):
the probe runs in the background of ``limner serve``, and ``/api/health``, ``GET /api/tools`` and the log
say which provider is silent and which setting to check."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx2
import pytest

from limner.api import create_app
from limner.runtime import Runtime
from limner.sandbox.server import Sandbox, serve_sandbox
from tests.conftest import create_user, make_settings
from tests.processes import free_port


async def test_a_silent_provider_is_named_in_health_tools_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens here: LibreChat's host.docker.internal, say
    async with serve_sandbox(Sandbox()) as upstream:
        settings = make_settings(
            tmp_path,
            sandbox="off",
            sd_webui_url=nobody,
            image_gen_oai_baseurl=upstream.urls["openai"],
            image_gen_oai_api_key="sk-images",
        )
        async with Runtime.open(settings) as runtime:
            assert {r.state for r in runtime.probes.results.values()} == {"unknown"}  # start-up did not wait
            caplog.set_level(logging.INFO, logger="limner.probes")
            async with runtime.chores():
                async with asyncio.timeout(60):
                    while any(r.state == "unknown" for r in runtime.probes.results.values()):
                        await asyncio.sleep(0.01)
                _, token = await create_user(runtime, "ann")
                app = create_app(settings, runtime=runtime)
                async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t") as api:
                    health = (await api.get("/api/health")).json()
                    tools = (await api.get("/api/tools", headers={"Authorization": f"Bearer {token}"})).json()
    families = {f["id"]: f for f in health["families"]}
    silent = families["stable-diffusion"]["provider"]
    assert silent["state"] == "not_answering" and "SD_WEBUI_URL" in silent["hint"]
    assert "127.0.0.1" not in silent["detail"]  # /api/health is public: no addresses
    assert families["image_gen_oai"]["provider"]["state"] == "answering"  # any HTTP answer counts
    assert families["dalle"]["provider"] is None  # not configured: nothing to probe
    by_id = {f["id"]: f for f in tools["families"]}
    assert by_id["stable-diffusion"]["provider"]["state"] == "not_answering"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Stable Diffusion" in w and "SD_WEBUI_URL" in w for w in warnings)


async def test_the_sandbox_is_not_probed(runtime: Runtime) -> None:
    assert runtime.probes.results == {}
