"""Conversation history as stored: pydantic-ai messages with every image replaced by its ID.

Images are never stored as base64 in the database. A handed-off image (``BinaryContent`` whose
``identifier`` is the image ID) becomes a short text naming the ID; when a conversation continues, the
LLM sees that text, not the image again (the handoff happens once; ``image_view`` brings an image back).
"""

from __future__ import annotations

from typing import Any

from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter

__all__ = ["dump_messages", "load_messages"]


def _stub(part: dict[str, Any]) -> str:
    identifier = part.get("identifier") or "an image"
    return f"[{identifier} was shown to you here]"


def _strip_images(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("kind") == "binary" and str(value.get("media_type", "")).startswith("image/"):
            return _stub(value)
        return {key: _strip_images(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strip_images(item) for item in value]
    return value


def dump_messages(messages: list[ModelMessage]) -> list[Any]:
    """JSON-ready messages without image bytes."""
    return list(_strip_images(ModelMessagesTypeAdapter.dump_python(messages, mode="json")))


def load_messages(payload: list[Any]) -> list[ModelMessage]:
    """Stored messages back into pydantic-ai's types."""
    return list(ModelMessagesTypeAdapter.validate_python(payload))
