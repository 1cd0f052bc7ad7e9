"""limner's MCP client consuming limner's own MCP server: the image lands in the library with a new ID."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from limner.runtime import Runtime
from tests.conftest import create_user, make_settings


async def test_limner_client_uses_limner_server_and_stores_the_image(tmp_path: Path) -> None:
    servers = {
        "mcpServers": {
            "other": {
                "command": sys.executable,
                "args": ["-m", "limner", "mcp"],
                "env": {"LIMNER_DATA_DIR": str(tmp_path / "server-data"), "LIMNER_SANDBOX": "on"},
                "timeout": 60000,
            }
        }
    }
    config = tmp_path / "mcp.yaml"
    config.write_text(yaml.safe_dump(servers))
    async with Runtime.open(make_settings(tmp_path, mcp_config=config)) as runtime:
        status = runtime.families["mcp:other"].status
        assert status.available, status.reason
        name = "mcp__other__image_gen_oai"
        assert name in runtime.tools()
        user_id, _ = await create_user(runtime, "ann")
        from limner.tools.base import run_tool

        result = await run_tool(runtime.tool(name), {"prompt": "a lighthouse"}, runtime.tool_context(user_id))
        (record,) = result.images
        assert record.id in result.text and "base64" not in result.text
        assert record.source == "mcp" and record.tool == name and record.endpoint == "other"
        assert record.parameters["arguments"] == {"prompt": "a lighthouse"}
        # the new ID is limner's own, and an editing tool accepts it
        edited = await run_tool(
            runtime.tool("image_edit_oai"), {"image_ids": [record.id], "prompt": "snow"}, runtime.tool_context(user_id)
        )
        parents = await runtime.library.parents(user_id, edited.images[0].id)
        assert [p.id for p in parents] == [record.id]
