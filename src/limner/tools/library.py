"""Library tools: ``image_list`` (find the user's images and their IDs) and ``image_view`` (look again).

``image_view`` is how a model sees an image after the one-time vision handoff: the result carries the
image as vision content. Both only ever read the caller's own images.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from limner.tools.base import ToolContext, ToolResult, ToolSpec
from limner.tools.texts import describe_image_line

__all__ = ["library_tools"]

FAMILY_ID = "library"


class ImageListArgs(BaseModel):
    """Arguments of image_list."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(10, ge=1, le=50, description="How many images to list, newest first.")
    source: Literal["generated", "edited", "uploaded", "mcp"] | None = Field(
        None, description="Only images of this origin."
    )
    before: str | None = Field(None, description="List images older than this image ID (for the next page).")


class ImageViewArgs(BaseModel):
    """Arguments of image_view."""

    model_config = ConfigDict(extra="forbid")

    image_id: str = Field(description="The ID (img_...) of one of the user's images to look at.")


async def _list(args: ImageListArgs, ctx: ToolContext) -> ToolResult:
    records = await ctx.library.recent(ctx.user_id, limit=args.limit, before=args.before, source=args.source)
    if not records:
        return ToolResult(text="The user has no images" + (" of that kind." if args.source else " yet."))
    lines = [f"The user's {len(records)} most recent images (newest first):"]
    lines += [describe_image_line(r) for r in records]
    if len(records) == args.limit:
        lines.append(f"For older images call image_list with before={records[-1].id!r}.")
    return ToolResult(text="\n".join(lines), metadata={"image_ids": [r.id for r in records]})


async def _view(args: ImageViewArgs, ctx: ToolContext) -> ToolResult:
    record = await ctx.library.get(ctx.user_id, args.image_id)
    text = "Here is the image:\n" + describe_image_line(record, prompt_chars=400)
    return ToolResult(text=text, images=[record], metadata={"image_ids": [record.id], "vision": True})


def library_tools() -> list[ToolSpec[Any]]:
    """The library tools; always available (they call no upstream)."""
    return [
        ToolSpec(
            name="image_list",
            family=FAMILY_ID,
            title="List my images",
            description=(
                "Lists the user's recent images (generated, edited, uploaded) with their IDs and prompts. Use it "
                "to find the ID of an image the user refers to that is not in the conversation."
            ),
            args=ImageListArgs,
            run=_list,
            read_only=True,
        ),
        ToolSpec(
            name="image_view",
            family=FAMILY_ID,
            title="Look at an image",
            description=(
                "Shows you one of the user's images by ID so you can see it again (for example before describing "
                "or editing it). It does not show anything new to the user."
            ),
            args=ImageViewArgs,
            run=_view,
            read_only=True,
        ),
    ]
