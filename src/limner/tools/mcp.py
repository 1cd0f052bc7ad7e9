"""MCP servers as tool families: each configured server's tools, offered under collision-free names.

Whatever form a server's images come in (image content, embedded resources, resource links, URLs or data
URIs in text or ``structuredContent``, allowed local files), ``mcp_client`` turns them into ImageOutputs;
here they are stored in the caller's library with their provenance (server, tool, arguments) and their IDs
replace the images in the text the LLM reads, so any editing tool can take them. Base64 never reaches the
LLM as text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

import anyio.to_thread
from pydantic import BaseModel, ConfigDict

from limner.config import Settings
from limner.errors import LimnerError, ProviderRequestError
from limner.library import Provenance
from limner.mcp_client import MCPConnections, MCPToolInfo
from limner.mcp_client_config import load_mcp_config
from limner.mcp_client_results import fill_image_placeholders
from limner.net import FetchPolicy
from limner.tools.base import ToolContext, ToolResult, ToolSpec
from limner.tools.family import BuildContext, Family, FamilyStatus

__all__ = ["MCPServerFamily", "build", "configured"]

log = logging.getLogger(__name__)


class _AnyArguments(BaseModel):
    """MCP arguments are checked by the server against its own schema."""

    model_config = ConfigDict(extra="allow")


class MCPServerFamily:
    """One MCP server's tools."""

    def __init__(
        self,
        *,
        server: str,
        connections: MCPConnections,
        tools: list[MCPToolInfo],
        status: FamilyStatus,
        fetch_policy: FetchPolicy,
        max_image_bytes: int,
    ) -> None:
        self.id = f"mcp:{server}"
        self.title = f"MCP server {server}"
        self.server = server
        self.connections = connections
        self._infos = tools
        self._status = status
        self.fetch_policy = fetch_policy
        self.max_image_bytes = max_image_bytes
        self._specs = [self._spec(info) for info in tools]

    @property
    def status(self) -> FamilyStatus:
        """Availability and why."""
        return self._status

    @property
    def key_source(self) -> None:
        """MCP servers carry their own credentials in the servers file."""
        return None

    def tools(self) -> list[ToolSpec[Any]]:
        """The server's tools as listed at start."""
        return list(self._specs)

    def _spec(self, info: MCPToolInfo) -> ToolSpec[Any]:
        async def run(args: _AnyArguments, ctx: ToolContext) -> ToolResult:
            return await self._call(info, args.model_dump(), ctx)

        return ToolSpec(
            name=info.qualified_name,
            family=self.id,
            title=info.title or f"{info.name} ({self.server})",
            description=f"[MCP server {self.server}, tool {info.name}] {info.description}".strip(),
            args=_AnyArguments,
            run=run,
            schema=info.input_schema or {"type": "object", "properties": {}},
        )

    async def _call(self, info: MCPToolInfo, arguments: dict[str, Any], ctx: ToolContext) -> ToolResult:
        output = await self.connections.run_tool(
            self.server,
            info.name,
            arguments,
            fetch_policy=self.fetch_policy,
            progress=ctx.progress,
            max_image_bytes=self.max_image_bytes,
        )
        if output.is_error:
            raise ProviderRequestError(
                output.text,  # already names the server and the tool
                provider=f"mcp:{self.server}",
                hint="Change the arguments, or tell the user the tool failed.",
            )
        records = []
        if output.images:
            provenance = Provenance(
                source="mcp",
                tool=info.qualified_name,
                backend="mcp",
                endpoint=self.server,
                parameters={"server": self.server, "tool": info.name, "arguments": _jsonable(arguments)},
                conversation_id=ctx.conversation_id,
                message_id=ctx.message_id,
            )
            records = await ctx.library.save(ctx.user_id, output.images, provenance, fetch_policy=self.fetch_policy)
        text = fill_image_placeholders(output.text, [r.id for r in records])
        if records:
            text += (
                f"\nimage_ids: {json.dumps([r.id for r in records])}\nThese images are stored and shown to the user; "
                "any editing tool accepts their IDs."
            )
        metadata = {"tool_family": self.id, "image_ids": [r.id for r in records], "warnings": list(output.warnings)}
        return ToolResult(text=text, images=records, metadata=metadata)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def configured(settings: Settings) -> bool:
    """An MCP servers file is set."""
    return settings.mcp_config is not None


async def build(ctx: BuildContext) -> list[Family]:
    """One family per configured server; a server that cannot start is listed as unavailable, with why."""
    settings = ctx.settings
    if settings.mcp_config is None:
        return []
    path, env = settings.mcp_config, dict(os.environ)
    servers = await anyio.to_thread.run_sync(lambda: load_mcp_config(path, env))
    connections = MCPConnections(servers, max_response_bytes=max(settings.max_upload_bytes * 2, 32 * 1024 * 1024))
    ctx.on_close(connections.aclose)
    policy = ctx.fetch_policy(sandbox=False)
    listed = await asyncio.gather(*(_tools_of(connections, name) for name in servers))  # servers start at once
    return [
        MCPServerFamily(
            server=name,
            connections=connections,
            tools=tools,
            status=status,
            fetch_policy=policy,
            max_image_bytes=settings.max_upload_bytes,
        )
        for name, (tools, status) in zip(servers, listed, strict=True)
    ]


async def _tools_of(connections: MCPConnections, name: str) -> tuple[list[MCPToolInfo], FamilyStatus]:
    try:
        tools = await connections.list_tools(name)
    except LimnerError as exc:
        log.warning("MCP server %s is unavailable: %s", name, exc.message)
        return [], FamilyStatus(id=f"mcp:{name}", title=f"MCP server {name}", available=False, reason=exc.message)
    return tools, FamilyStatus(id=f"mcp:{name}", title=f"MCP server {name}", available=True, backend="mcp")
