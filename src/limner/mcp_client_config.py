"""The MCP servers file (LibreChat's ``mcpServers`` block) and the tool names MCP tools get.

Part of the :mod:`limner.mcp_client` adapter; import from there. A LibreChat ``librechat.yaml`` works
as it is: only its ``mcpServers`` block is read. Keys limner cannot honour (OAuth, per-user variables,
websockets) are refused by name rather than ignored, because a server that silently runs without its
credentials fails later in a way nobody can trace back to the file. Keys that only shape LibreChat's
UI are accepted and ignored. The environment is an explicit parameter: nothing here reads
``os.environ``.

``timeout`` and ``initTimeout`` are milliseconds, as in LibreChat, so a ``librechat.yaml`` works unchanged;
values under a second are refused with a hint (they almost always are seconds written for milliseconds),
and so are values over an hour. Differences from LibreChat, on purpose: a missing
``${VAR}`` is an error rather than an empty string, and a ``type``-less ``url`` is Streamable HTTP
unless its path ends in ``/sse``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

import yaml

from limner.errors import ConfigurationError

__all__ = [
    "DEFAULT_INIT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MCPServerConfig",
    "MCPTransport",
    "load_mcp_config",
    "parse_mcp_servers",
    "qualified_name",
]

MCPTransport: TypeAlias = Literal["stdio", "streamable-http", "sse"]

DEFAULT_TIMEOUT = 60.0
DEFAULT_INIT_TIMEOUT = 30.0
_MAX_TIMEOUT = 3600.0
_TYPE_ALIASES: dict[str, MCPTransport] = {
    "stdio": "stdio",
    "streamable-http": "streamable-http",
    "streamable_http": "streamable-http",
    "http": "streamable-http",
    "sse": "sse",
}
_KNOWN_KEYS = frozenset(
    {"type", "command", "args", "env", "cwd", "url", "headers", "proxy", "timeout", "initTimeout", "stderr"}
    | {"allowedPaths"}
)
# LibreChat keys that only shape its UI or its own reconnect loop; limner restarts on next use instead.
_IGNORED_KEYS = frozenset(
    {"iconPath", "chatMenu", "serverInstructions", "title", "description", "startup"}
    | {"maxReconnectAttempts", "maxBackoffMs", "reconnectBackoffMs"}
)
_UNSUPPORTED_KEYS = {
    "oauth": "OAuth for MCP servers is not supported yet; use a server that takes a header or environment key",
    "requiresOAuth": "OAuth for MCP servers is not supported yet",
    "customUserVars": "per-user MCP variables are not supported yet; set the value in the environment instead",
    "apiKey": "per-user MCP keys are not supported yet; put the key in headers or env with ${VAR}",
}
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z0-9_]+\s*\}\}")


@dataclass(frozen=True)
class MCPServerConfig:
    """One configured MCP server. ``env`` and ``headers`` hold secrets: their values never show in repr."""

    name: str
    transport: MCPTransport
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    cwd: str | None = None
    url: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    proxy: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    """Seconds one tool call may take before it is cancelled."""
    init_timeout: float = DEFAULT_INIT_TIMEOUT
    """Seconds starting the server and the protocol handshake may take."""
    stderr: Literal["inherit", "ignore"] = "inherit"
    allowed_paths: tuple[PurePath, ...] = ()
    """Directories whose image files this server's results may name (limner's ``allowedPaths``)."""


def load_mcp_config(path: str | Path, env: Mapping[str, str]) -> dict[str, MCPServerConfig]:
    """Read the ``mcpServers`` block of a YAML (or JSON) file, substituting ``${VAR}`` from ``env``.

    Synchronous file reading: call it at startup, or through ``asyncio.to_thread`` on an event loop.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot read the MCP servers file {source}: {exc.strerror or exc}.",
            hint="Check the path in the MCP servers setting.",
        ) from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(
            f"The MCP servers file {source} is not valid YAML: {exc}.", hint="Fix the syntax at the position shown."
        ) from exc
    if not isinstance(document, Mapping) or "mcpServers" not in document:
        raise ConfigurationError(
            f"The MCP servers file {source} has no mcpServers block.",
            hint="Put the servers under a top-level 'mcpServers:' key, as in librechat.yaml.",
        )
    block = document["mcpServers"]
    if block is None:
        return {}
    if not isinstance(block, Mapping):
        raise ConfigurationError(
            f"mcpServers in {source} must map server names to settings.", hint="See librechat.yaml's mcpServers."
        )
    return parse_mcp_servers(block, env, source=source)


def parse_mcp_servers(
    block: Mapping[Any, Any], env: Mapping[str, str], *, source: str = "the MCP servers file"
) -> dict[str, MCPServerConfig]:
    """Validate an ``mcpServers`` mapping (already loaded) into configs, failing on the first problem."""
    servers: dict[str, MCPServerConfig] = {}
    for name, entry in block.items():
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(
                f"MCP server names in {source} must be non-empty strings; got {name!r}.", hint="Rename it."
            )
        servers[name] = _ServerParser(name, env, source).parse(entry)
    return servers


class _ServerParser:
    """Reads one server's settings; every error names the server, the field and the fix."""

    def __init__(self, name: str, env: Mapping[str, str], source: str) -> None:
        self.name = name
        self.env = env
        self.source = source

    def error(self, key: str, problem: str, hint: str | None = None) -> ConfigurationError:
        return ConfigurationError(
            f"MCP server {self.name!r}: field {key!r} {problem}.", hint=hint or f"Fix it in {self.source}."
        )

    def parse(self, entry: Any) -> MCPServerConfig:
        if not isinstance(entry, Mapping):
            raise ConfigurationError(
                f"MCP server {self.name!r} must be a mapping of settings (command/args or url).",
                hint=f"Fix it in {self.source}.",
            )
        self._check_keys(entry)
        transport = self._transport(entry)
        common: dict[str, Any] = {
            "timeout": self._milliseconds_as_seconds(entry, "timeout", DEFAULT_TIMEOUT),
            "init_timeout": self._milliseconds_as_seconds(entry, "initTimeout", DEFAULT_INIT_TIMEOUT),
            "allowed_paths": self._paths(entry),
        }
        if transport == "stdio":
            return self._stdio(entry, common)
        return self._http(entry, transport, common)

    def _check_keys(self, entry: Mapping[Any, Any]) -> None:
        for key in entry:
            if key in _UNSUPPORTED_KEYS and entry[key] not in (None, False):
                raise self.error(str(key), "cannot be honoured", _UNSUPPORTED_KEYS[str(key)] + ".")
            if key not in _KNOWN_KEYS | _IGNORED_KEYS | _UNSUPPORTED_KEYS.keys():
                known = ", ".join(sorted(_KNOWN_KEYS))
                raise self.error(str(key), "is not a setting limner knows", f"Known settings: {known}.")

    def _transport(self, entry: Mapping[Any, Any]) -> MCPTransport:
        raw = entry.get("type")
        if raw is None:
            if "command" in entry and "url" in entry:
                raise self.error("type", "is missing while both command and url are set", "Set type: stdio or http.")
            if "command" in entry:
                return "stdio"
            if "url" in entry:
                url = self._string(entry, "url")
                return "sse" if url.split("?", 1)[0].rstrip("/").endswith("/sse") else "streamable-http"
            raise self.error("command", "is missing (and so is url)", "Give command and args, or a url.")
        if raw == "websocket":
            raise self.error("type", "is websocket, which limner does not support", "Use streamable-http or sse.")
        if not isinstance(raw, str) or raw not in _TYPE_ALIASES:
            raise self.error("type", f"is {raw!r}", "Use one of: stdio, streamable-http (or http), sse.")
        return _TYPE_ALIASES[raw]

    def _stdio(self, entry: Mapping[Any, Any], common: dict[str, Any]) -> MCPServerConfig:
        for key in ("url", "headers", "proxy"):
            if key in entry:
                raise self.error(key, "applies to HTTP servers, not stdio ones", f"Remove {key} or set a url type.")
        if "command" not in entry:
            raise self.error("command", "is missing", "A stdio server needs the command that starts it.")
        stderr = entry.get("stderr", "inherit")
        if stderr not in ("inherit", "ignore"):
            raise self.error("stderr", f"is {stderr!r}", "Use inherit or ignore.")
        return MCPServerConfig(
            name=self.name,
            transport="stdio",
            command=self._string(entry, "command"),
            args=tuple(self._scalar(item, f"args[{i}]") for i, item in enumerate(self._list(entry, "args"))),
            env=MappingProxyType(self._mapping(entry, "env")),
            cwd=self._string(entry, "cwd") if "cwd" in entry else None,
            stderr=stderr,
            **common,
        )

    def _http(self, entry: Mapping[Any, Any], transport: MCPTransport, common: dict[str, Any]) -> MCPServerConfig:
        for key in ("command", "args", "env", "cwd", "stderr"):
            if key in entry:
                raise self.error(key, "applies to stdio servers, not HTTP ones", f"Remove {key} or set type: stdio.")
        if "url" not in entry:
            raise self.error("url", "is missing", f"A {transport} server needs the URL of its endpoint.")
        url = self._string(entry, "url")
        if not url.startswith(("http://", "https://")):
            raise self.error("url", "must start with http:// or https://", "Use the server's HTTP endpoint.")
        return MCPServerConfig(
            name=self.name,
            transport=transport,
            url=url,
            headers=MappingProxyType(self._mapping(entry, "headers")),
            proxy=self._string(entry, "proxy") if entry.get("proxy") else None,
            **common,
        )

    def _substitute(self, value: str, key: str) -> str:
        if _USER_PLACEHOLDER.search(value):
            raise self.error(
                key, "uses a per-user {{...}} placeholder, which limner does not fill", "Use ${VAR} instead."
            )

        def replace(match: re.Match[str]) -> str:
            variable = match.group(1)
            if not _VARIABLE_NAME.fullmatch(variable):
                raise self.error(key, f"has an invalid variable reference ${{{variable}}}", "Use ${NAME}.")
            if variable not in self.env:
                raise self.error(
                    key, f"needs the environment variable {variable}, which is not set", f"Set {variable}."
                )
            return self.env[variable]

        return _VARIABLE.sub(replace, value)

    def _scalar(self, value: Any, key: str) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(key, f"must be a string or a number, not {type(value).__name__}")
        return self._substitute(str(value), key)

    def _string(self, entry: Mapping[Any, Any], key: str) -> str:
        value = entry.get(key)
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string")
        return self._substitute(value, key)

    def _list(self, entry: Mapping[Any, Any], key: str) -> list[Any]:
        value = entry.get(key, [])
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, "must be a list")
        return value

    def _mapping(self, entry: Mapping[Any, Any], key: str) -> dict[str, str]:
        value = entry.get(key) or {}
        if not isinstance(value, Mapping):
            raise self.error(key, "must be a mapping of names to values")
        result: dict[str, str] = {}
        for name, item in value.items():
            if not isinstance(name, str) or not name:
                raise self.error(key, f"has an invalid name {name!r}")
            result[name] = self._scalar(item, f"{key}.{name}")
        return result

    def _milliseconds_as_seconds(self, entry: Mapping[Any, Any], key: str, default: float) -> float:
        """LibreChat's unit for its own keys: milliseconds in the file, seconds inside limner."""
        if key not in entry:
            return default
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.error(key, f"must be a positive number of milliseconds, not {value!r}")
        if value < 1000:
            raise self.error(
                key,
                f"is {value:g} milliseconds, less than a second",
                f"It is in milliseconds, as in LibreChat: for {value:g} seconds write {value * 1000:g}.",
            )
        if value > _MAX_TIMEOUT * 1000:
            raise self.error(key, f"is {value:g} milliseconds, more than an hour", "Use at most 3600000 (an hour).")
        return float(value) / 1000

    def _paths(self, entry: Mapping[Any, Any]) -> tuple[PurePath, ...]:
        paths = []
        for i, item in enumerate(self._list(entry, "allowedPaths")):
            text = self._scalar(item, f"allowedPaths[{i}]")
            path = PurePath(text)
            if not path.is_absolute() or ".." in path.parts:
                raise self.error(f"allowedPaths[{i}]", "must be an absolute path without '..'", "Give a full path.")
            paths.append(path)
        return tuple(paths)


# --- tool names ------------------------------------------------------------------------------------

_NAME_LIMIT = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX = "mcp__"
_SEPARATOR = "__"


def qualified_name(server: str, tool: str) -> str:
    """The LLM-facing name of an MCP tool: ``mcp__<server>__<tool>``, safe for every common LLM API.

    Names match ``^[a-zA-Z0-9_-]{1,64}$`` and cannot collide with limner's own tools (none start with
    ``mcp__``). When the plain form would be ambiguous or invalid (characters replaced, a server name
    with ``__`` or edge underscores, more than 64 characters), an 8-character hash of the exact pair is
    appended, so two different (server, tool) pairs never share a name.
    """
    plain = f"{_PREFIX}{server}{_SEPARATOR}{tool}"
    safe_server = _UNSAFE.sub("_", server)
    ambiguous = (
        not server
        or not tool
        or safe_server != server
        or _SEPARATOR in server
        or server.startswith("_")
        or server.endswith("_")
        or _UNSAFE.search(tool) is not None
        or len(plain) > _NAME_LIMIT
    )
    if not ambiguous:
        return plain
    digest = hashlib.sha256(f"{server}\x00{tool}".encode()).hexdigest()[:8]
    server_part = re.sub(r"_{2,}", "_", safe_server).strip("_")[:20] or "server"
    base = f"{_PREFIX}{server_part}{_SEPARATOR}{_UNSAFE.sub('_', tool)}"
    return f"{base[: _NAME_LIMIT - len(digest) - 1]}_{digest}"
