"""Chat model failures as limner errors: the one place pydantic-ai's exceptions are translated.

The provider is ``chat`` and the hints name the chat settings, so a person can tell a failing chat model
from a failing image service.
"""

from __future__ import annotations

from pydantic_ai import exceptions as ai

from limner.errors import (
    ContentPolicyError,
    LimnerError,
    ProviderAuthError,
    ProviderError,
    ProviderQuotaError,
    ProviderRateLimitError,
    ProviderRequestError,
    ProviderResponseError,
    ProviderUnavailableError,
    redact,
)

__all__ = ["map_model_error"]

_CHECK = (
    "Check LIMNER_CHAT_MODEL, LIMNER_CHAT_BASE_URL and the chat model's key (LIMNER_CHAT_API_KEY or the provider's)."
)


def map_model_error(exc: Exception, model: str) -> LimnerError | None:
    """A LimnerError for a chat model failure, or None when ``exc`` is not one (a bug)."""
    if not isinstance(exc, ai.ModelAPIError | ai.UnexpectedModelBehavior):
        return None
    detail = redact(str(exc), limit=300)
    common = {"provider": "chat", "endpoint": None}
    table: tuple[tuple[type[Exception], type[ProviderError], str, str], ...] = (
        (ai.ModelAuthenticationError, ProviderAuthError, "rejected the key", _CHECK),
        (ai.ContentFilterError, ContentPolicyError, "refused the request on content grounds", "Rephrase the message."),
        (ai.ModelQuotaExceededError, ProviderQuotaError, "is out of quota", "Add credits at the chat provider."),
        (ai.ModelRateLimitError, ProviderRateLimitError, "is rate limiting requests", "Wait a little and try again."),
        (ai.ModelNotFoundError, ProviderRequestError, "does not know this model", _CHECK),
        (ai.ModelContextWindowExceededError, ProviderRequestError, "ran out of context", "Start a new conversation."),
        (ai.ModelConnectionError, ProviderUnavailableError, "could not be reached", _CHECK),
        (ai.ModelTimeoutError, ProviderUnavailableError, "did not answer in time", "Try again in a moment."),
        (ai.ModelServerError, ProviderUnavailableError, "failed", "Try again in a moment."),
        (ai.UnexpectedModelBehavior, ProviderResponseError, "answered in a way limner cannot use", _CHECK),
    )
    for source, target, what, hint in table:
        if isinstance(exc, source):
            return target(f"The chat model {model} {what}: {detail}", hint=hint, **common)  # type: ignore[arg-type]
    status = getattr(exc, "status_code", None)
    return ProviderRequestError(
        f"The chat model {model} failed{f' (HTTP {status})' if status else ''}: {detail}",
        hint=_CHECK,
        status_code=status,
        **common,  # type: ignore[arg-type]
    )
