"""ToolSpec, ToolContext and ToolResult: one definition of each tool for every front end.

The agent loop, the MCP server and ``POST /api/tools/{name}`` all run tools through :func:`run_tool`,
which validates the LLM's JSON arguments with the tool's pydantic model and runs it on behalf of the
caller in ``ToolContext``. A tool never sees another user's images: every image it touches comes from the
library with ``ctx.user_id`` as the owner.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from limner.backends.base import ProgressCallback
from limner.errors import InputError, LimnerError
from limner.keys import KeyRing
from limner.library import ImageLibrary, ImageRecord

__all__ = ["ToolContext", "ToolResult", "ToolSpec", "failed_result", "run_tool"]

log = logging.getLogger(__name__)

ArgsT = TypeVar("ArgsT", bound=BaseModel)

GENERIC_FAILURE = "The tool failed unexpectedly. Tell the user it did not work; do not retry the same call."


@dataclass(slots=True)
class ToolContext:
    """Who is calling and what the tool may use; built per call by the front end."""

    user_id: str
    library: ImageLibrary
    keyring: KeyRing
    conversation_id: str | None = None
    message_id: str | None = None
    progress: ProgressCallback | None = None


@dataclass(slots=True)
class ToolResult:
    """``text`` is what the LLM reads (always naming the image IDs); ``images`` are the images to show it
    as vision context; ``metadata`` is for the UI and logs and never reaches the LLM.
    """

    text: str
    images: list[ImageRecord] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    is_error: bool = False


@dataclass(slots=True)
class ToolSpec(Generic[ArgsT]):
    """A tool: its wire name, its description, its argument model and what it does."""

    name: str
    family: str
    description: str
    args: type[ArgsT]
    run: Callable[[ArgsT, ToolContext], Awaitable[ToolResult]]
    title: str = ""
    read_only: bool = False
    schema: dict[str, Any] | None = None
    """A schema given as is (an MCP server's ``inputSchema``); otherwise the one of ``args``."""

    def json_schema(self) -> dict[str, Any]:
        """The parameters' JSON schema as the LLM receives it."""
        if self.schema is not None:
            return dict(self.schema)
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        return schema


async def run_tool(spec: ToolSpec[Any], raw_args: dict[str, Any], ctx: ToolContext) -> ToolResult:
    """Validate and run; LimnerErrors propagate so each front end can translate them its way."""
    try:
        args = spec.args.model_validate(raw_args)
    except ValidationError as exc:
        raise InputError(
            _describe_validation(spec.name, exc),
            hint="Change the values named above; the tool's parameters list what each one accepts.",
            llm_hint="Fix the arguments and call again.",
        ) from exc
    return await spec.run(args, ctx)


def failed_result(exc: BaseException, tool: str) -> ToolResult:
    """A failure as the LLM should read it: message and hint for our errors, a fixed text otherwise."""
    if isinstance(exc, LimnerError):
        text = f"Error ({exc.code}): {exc.message}"
        if exc.llm_hint:  # the model acts unlike a person here (calls again, never invents an ID) ...
            text += f"\nWhat to do: {exc.llm_hint}" + (f"\nFor the user: {exc.hint}" if exc.hint else "")
        elif exc.hint:  # ... elsewhere what a person should do is what the model should tell them
            text += f"\nWhat to do: {exc.hint}"
        return ToolResult(text=text, metadata={"error": exc.to_dict()}, is_error=True)
    log.error("tool %s failed unexpectedly", tool, exc_info=exc)
    error = {"code": "internal_error", "message": GENERIC_FAILURE, "hint": None, "provider": None}
    return ToolResult(text=GENERIC_FAILURE, metadata={"error": error}, is_error=True)


def _describe_validation(tool: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return f"Invalid arguments for {tool}: " + "; ".join(parts)
