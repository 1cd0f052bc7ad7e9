"""MCP tools through the HTTP API: listed, run as the caller, their images stored with IDs."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx2
import yaml

from limner.api import create_app
from limner.runtime import Runtime
from tests.conftest import create_user, make_settings


async def test_mcp_tools_are_listed_and_their_images_stored(tmp_path: Path) -> None:
    servers = {
        "mcpServers": {"images": {"command": sys.executable, "args": ["-m", "limner.sandbox.mcp_servers", "images"]}}
    }
    config = tmp_path / "mcp.yaml"
    config.write_text(yaml.safe_dump(servers))
    settings = make_settings(tmp_path, mcp_config=config)
    async with Runtime.open(settings) as runtime:
        _, token = await create_user(runtime, "ann")
        _, other = await create_user(runtime, "ben")
        transport = httpx2.ASGITransport(app=create_app(settings, runtime=runtime))
        async with httpx2.AsyncClient(transport=transport, base_url="http://limner.test") as api:
            headers = {"Authorization": f"Bearer {token}"}
            families = {f["id"]: f for f in (await api.get("/api/tools", headers=headers)).json()["families"]}
            tools = {t["name"] for t in families["mcp:images"]["tools"]}
            assert {"mcp__images__generate_image", "mcp__images__generate_image_resource"} <= tools
            for tool in (
                "mcp__images__generate_image",
                "mcp__images__generate_image_resource",
                "mcp__images__generate_image_data_uri",
            ):
                made = await api.post(f"/api/tools/{tool}", headers=headers, json={"prompt": "a red kite"})
                assert made.status_code == 200, (tool, made.text)
                (image,) = made.json()["images"]
                assert image["source"] == "mcp" and image["id"] in made.json()["text"]
                assert "base64" not in made.json()["text"]
            failed = await api.post("/api/tools/mcp__images__fail", headers=headers, json={})
            assert failed.status_code == 502 and "images" in failed.json()["error"]["message"]
            foreign = await api.get(f"/api/images/{image['id']}", headers={"Authorization": f"Bearer {other}"})
            assert foreign.status_code == 404
