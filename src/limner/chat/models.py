"""The chat model connection: which model, through which provider, and whether it can see images.

pydantic-ai does the talking (DESIGN §7). The model is ``LIMNER_CHAT_MODEL`` in its ``provider:model``
form, or a model at an OpenAI-compatible ``LIMNER_CHAT_BASE_URL`` (Ollama, vLLM, OpenRouter), or, when
nothing is configured, the sandbox chat emulator, announced as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx2
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model, infer_model
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from limner.config import Settings, operator_key
from limner.errors import ConfigurationError

__all__ = ["SANDBOX_CHAT_MODEL", "ChatModelChoice", "model_sees_images", "resolve_chat_model"]

SANDBOX_CHAT_MODEL = "sandbox-vision"

# Substrings of model names that take image input. Unknown names are assumed blind (text stubs only);
# LIMNER_CHAT_VISION=on overrides.
_VISION_FAMILIES = (
    "gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-4o", "o1", "o3", "o4",
    "claude", "gemini", "gemma-3", "gemma3", "llava", "bakllava", "llama3.2-vision", "llama-3.2-vision",
    "llama-4", "llama4", "qwen2-vl", "qwen2.5-vl", "qwen-vl", "qwen3-vl", "pixtral", "mistral-small-3",
    "mistral-medium", "grok-2-vision", "grok-4", "minicpm-v", "moondream", "vision", "sandbox-vision",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChatModelChoice:
    """The chat model in use and what it can do."""

    model: Model
    name: str
    supports_vision: bool
    is_sandbox: bool


def model_sees_images(name: str, override: str = "auto") -> bool:
    """Whether a model takes images: the operator's override, else the known families."""
    if override != "auto":
        return override == "on"
    lowered = name.lower()
    return any(family in lowered for family in _VISION_FAMILIES) and "text" not in lowered.split("-")


def resolve_chat_model(
    settings: Settings, *, sandbox_url: str | None, http_client: httpx2.AsyncClient
) -> ChatModelChoice:
    """The configured chat model, or the sandbox's; a ConfigurationError naming the setting otherwise."""
    vision = settings.chat_vision
    if settings.chat_base_url:
        name = (settings.chat_model or "").removeprefix("openai:")  # Ollama tags (llama3.2-vision:11b) stay
        if not name:
            raise ConfigurationError(
                "LIMNER_CHAT_BASE_URL is set but LIMNER_CHAT_MODEL (the model name at that server) is not.",
                hint="Set LIMNER_CHAT_MODEL, for example llama3.2-vision for Ollama.",
            )
        key = operator_key(settings.chat_api_key) or "none"
        provider = OpenAIProvider(base_url=settings.chat_base_url, api_key=key, http_client=http_client)
        model = OpenAIChatModel(name, provider=provider)
        return ChatModelChoice(model, name, model_sees_images(name, vision), is_sandbox=False)
    if settings.chat_model:
        try:
            inferred = infer_model(settings.chat_model)
        except UserError as exc:
            raise ConfigurationError(
                f"LIMNER_CHAT_MODEL={settings.chat_model!r} cannot be used: {exc}",
                hint="Use pydantic-ai's provider:model form and set the provider's key (e.g. OPENAI_API_KEY).",
            ) from exc
        return ChatModelChoice(inferred, settings.chat_model, model_sees_images(settings.chat_model, vision), False)
    if sandbox_url is None:
        raise ConfigurationError("No chat model is configured.", hint="Set LIMNER_CHAT_MODEL.")
    provider = OpenAIProvider(base_url=sandbox_url, api_key="sk-sandbox", http_client=http_client)
    model = OpenAIChatModel(SANDBOX_CHAT_MODEL, provider=provider)
    return ChatModelChoice(model, SANDBOX_CHAT_MODEL, model_sees_images(SANDBOX_CHAT_MODEL, vision), True)
