"""The texts tools give the LLM. IDs are always spelled out, because they are how it edits later."""

from __future__ import annotations

import json
from collections.abc import Sequence

from limner.library import ImageRecord

__all__ = ["describe_image_line", "describe_new_images"]

_SHOWN = (
    "{they} already displayed to the user: do not describe {them} in detail, do not list links or mention downloading."
)


def describe_new_images(
    records: Sequence[ImageRecord], *, action: str, model: str, referenced: Sequence[str], edit_tool: str
) -> str:
    """The success text of an image tool: what happened, the new IDs, the referenced IDs, what next."""
    count = len(records)
    noun = "image" if count == 1 else "images"
    sizes = sorted({f"{r.width}x{r.height}" for r in records})
    lines = [
        f"{action} {count} {noun} with {model} ({', '.join(sizes)}). "
        + _SHOWN.format(they="It is" if count == 1 else "They are", them="it" if count == 1 else "them"),
        f"image_ids: {json.dumps([r.id for r in records])}",
    ]
    if referenced:
        lines.append(f"referenced_image_ids: {json.dumps(list(referenced))}")
    revised = [r.revised_prompt for r in records if r.revised_prompt]
    if revised:
        lines.append(f"revised_prompt: {revised[0]}")
    if any(r.is_sandbox for r in records):
        lines.append("Note: made by limner's offline sandbox emulator, not a real image model.")
    lines.append(f"To change {'it' if count == 1 else 'one'} later, call {edit_tool} with its ID in image_ids.")
    return "\n".join(lines)


def describe_image_line(record: ImageRecord, *, prompt_chars: int = 160) -> str:
    """One line of a listing: ID, when, where from, size, prompt."""
    prompt = (record.prompt or record.original_name or "").replace("\n", " ")
    if len(prompt) > prompt_chars:
        prompt = prompt[: prompt_chars - 1] + "…"
    when = record.created_at.strftime("%Y-%m-%d %H:%M UTC")
    origin = record.source + (f" by {record.tool}" if record.tool else "")
    return f"- {record.id} · {when} · {origin} · {record.width}x{record.height} · {json.dumps(prompt)}"
