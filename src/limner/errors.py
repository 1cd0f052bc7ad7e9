"""The whole error tree of limner, translated to each front end's form only at the edges.

```
LimnerError                         .message (safe to show)  .hint (what to do)  .code (stable snake_case)
├── ConfigurationError              an operator or user must change a setting
│   ├── MissingCredentialsError     names the env var AND the UI key setting
│   ├── StoredKeyUnreadableError    a user's stored key no longer decrypts (CREDS_KEY changed)
│   └── AddressInUseError           `limner serve`'s address is taken by another program
├── AccessError                     who is asking, not what: sign-in, registration, CSRF
│   ├── SignInFailedError           wrong name or password (one answer for both)
│   ├── RegistrationClosedError     the operator closed sign-up
│   ├── TooManyAttemptsError        sign-in throttled (per account name, per client address)
│   └── CSRFError                   a cookie-authenticated change without the CSRF token
├── InputError                      the request cannot be served as asked
│   ├── ImageNotFoundError          unknown or not owned: one message, one status
│   ├── ToolNotFoundError           no tool by that name
│   ├── ConversationNotFoundError   unknown or not owned, like images
│   ├── AgentNotFoundError          unknown or not owned
│   ├── TokenNotFoundError          unknown or not the caller's API token
│   ├── TurnInProgressError         a conversation answers one message at a time
│   ├── UnknownProviderError        no provider by that name takes a key
│   ├── UnsupportedImageError       content is not an accepted image
│   ├── ImageTooLargeError
│   ├── UnsafeURLError              scheme, private address, redirect, size
│   └── UnsupportedOperationError   not in the model's profile
├── ProviderError                   .provider .endpoint .status_code .retry_after .request_id
│   ├── ProviderAuthError           upstream rejected the key
│   ├── ProviderQuotaError          billing, credits
│   ├── ProviderRateLimitError
│   ├── ContentPolicyError          refused by the provider's moderation
│   ├── ProviderRequestError        the upstream refused our parameters, model or deployment (4xx)
│   ├── ProviderUnavailableError    timeouts, connection errors, 5xx
│   └── ProviderResponseError       a 2xx answer without the expected shape
└── StorageError
```

Messages are written for the person reading them (a chat user, an operator, the LLM): they say what
failed and, in ``hint``, what to do. They never contain secrets or raw upstream bodies; callers pass
upstream text through :func:`redact` first. ``code`` values are API: never rename them.
"""

from __future__ import annotations

import re
from typing import ClassVar

__all__ = [
    "AccessError",
    "AddressInUseError",
    "AgentNotFoundError",
    "CSRFError",
    "ConfigurationError",
    "ContentPolicyError",
    "ConversationNotFoundError",
    "ImageNotFoundError",
    "ImageTooLargeError",
    "InputError",
    "LimnerError",
    "MissingCredentialsError",
    "ProviderAuthError",
    "ProviderError",
    "ProviderQuotaError",
    "ProviderRateLimitError",
    "ProviderRequestError",
    "ProviderResponseError",
    "ProviderUnavailableError",
    "RegistrationClosedError",
    "SignInFailedError",
    "StorageError",
    "StoredKeyUnreadableError",
    "TokenNotFoundError",
    "TooManyAttemptsError",
    "ToolNotFoundError",
    "TurnInProgressError",
    "UnknownProviderError",
    "UnsafeURLError",
    "UnsupportedImageError",
    "UnsupportedOperationError",
    "redact",
]


class LimnerError(Exception):
    """Base of every error a user can meet; carries a safe message, a hint and a stable code.

    ``hint`` is written for a person (in the web UI, an HTTP client's log, a terminal) and names the
    setting to change where there is one; ``llm_hint``, when the model should act differently from a
    person (call again with other arguments, never invent an ID), is what the agent reads instead.
    Front ends that know their reader better (the CLI) reword by ``code``.
    """

    code: ClassVar[str] = "limner_error"

    default_hint: ClassVar[str] = "Try again; if it keeps failing, the server's log has the details."
    """What to do when the raise site has nothing more specific: every class says something (never null)."""

    def __init__(self, message: str, *, hint: str | None = None, llm_hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint: str = hint or self.default_hint
        self.llm_hint = llm_hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict[str, str | None]:
        """The one error shape every front end shows (DESIGN §5)."""
        return {"code": self.code, "message": self.message, "hint": self.hint, "provider": None}


class ConfigurationError(LimnerError):
    """An operator or a user must change a setting before this can work."""

    code = "configuration_error"
    default_hint = (
        "An operator must change the setting the message names (the README's configuration table lists them all)."
    )


class MissingCredentialsError(ConfigurationError):
    """No key anywhere: names both the operator's variable and the user's key setting."""

    code = "missing_credentials"

    def __init__(self, *, provider: str, env_var: str, tool: str) -> None:
        super().__init__(
            f"No API key is configured for {tool}.",
            hint=(
                f"An operator can set {env_var}; otherwise enter your own key for '{provider}' "
                f"in Settings (PUT /api/keys/{provider})."
            ),
        )
        self.provider = provider
        self.env_var = env_var


class StoredKeyUnreadableError(ConfigurationError):
    """The user can fix this one (by entering the key again), unlike most configuration errors."""

    code = "stored_key_unreadable"
    default_hint = "Enter your key again under Settings → Keys."


class AddressInUseError(ConfigurationError):
    """The host and port to listen on are taken: its own class (and exit code), so that a script can pick
    another port without parsing the message.
    """

    code = "address_in_use"
    default_hint = "Choose another port with --port or LIMNER_PORT, or stop the program that uses it."


class AccessError(LimnerError):
    """The caller is not (yet) allowed: a failed sign-in, closed registration, a missing CSRF token."""

    code = "access_denied"
    default_hint = "Sign in again; if this keeps happening, ask the operator."


class SignInFailedError(AccessError):
    """A wrong name or a wrong password: deliberately the same message."""

    code = "sign_in_failed"
    default_hint = "Check the name and the password; names are case-insensitive."


class RegistrationClosedError(AccessError):
    """Sign-up is closed (``LIMNER_ALLOW_REGISTRATION=false``)."""

    code = "registration_closed"
    default_hint = "Ask the operator for an account (`limner users create NAME --password`)."


class TooManyAttemptsError(AccessError):
    """Too many failed sign-ins for an account name or from one address; ``retry_after`` in seconds."""

    code = "too_many_attempts"
    default_hint = "Wait for the time in Retry-After, then try again."

    def __init__(self, message: str, *, hint: str | None = None, retry_after: float) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class CSRFError(AccessError):
    """A change requested with the session cookie but without the matching CSRF token."""

    code = "csrf_failed"
    default_hint = "Reload the page and try again."


class InputError(LimnerError):
    """The request cannot be served as asked; changing the request fixes it."""

    code = "invalid_input"
    default_hint = "Change the request as the message says."


class ImageNotFoundError(InputError):
    """Unknown or not owned: deliberately indistinguishable, so IDs leak nothing."""

    code = "image_not_found"

    def __init__(self, image_id: str) -> None:
        super().__init__(
            f"No image with ID {image_id!r} was found.",
            hint="Check the ID: the image may have been deleted, or it belongs to another account.",
            llm_hint="Use an image ID from this conversation or from image_list; do not invent IDs.",
        )
        self.image_id = image_id


class ToolNotFoundError(InputError):
    """A tool name that does not exist (an unavailable tool is a ConfigurationError instead)."""

    code = "tool_not_found"
    default_hint = "Use one of the tools this server lists."


class ConversationNotFoundError(InputError):
    """Unknown or someone else's conversation: one answer for both."""

    code = "conversation_not_found"
    default_hint = "Check the ID: the conversation may have been deleted, or it belongs to another account."


class AgentNotFoundError(InputError):
    """Unknown or someone else's agent."""

    code = "agent_not_found"
    default_hint = "Check the ID: the agent may have been deleted, or it belongs to another account."


class TokenNotFoundError(InputError):
    """An API token ID that does not exist or belongs to someone else (one answer for both)."""

    code = "token_not_found"
    default_hint = "Check the ID: the token may have been revoked, or it belongs to another account."


class TurnInProgressError(InputError):
    """A conversation takes one message at a time."""

    code = "turn_in_progress"
    default_hint = "Wait for the answer to finish, or stop it, then send the message again."


class UnknownProviderError(InputError):
    """A provider name that takes no key here."""

    code = "unknown_provider"
    default_hint = "Use one of the providers that take a key (the Keys settings list them)."


class UnsupportedImageError(InputError):
    """The bytes are not an image we accept, whatever their name or declared type says."""

    code = "unsupported_image"
    default_hint = "Send a PNG, JPEG, WebP or GIF image."


class ImageTooLargeError(InputError):
    """Over the byte cap or the pixel cap (decompression bombs)."""

    code = "image_too_large"
    default_hint = (
        "Send a smaller image (the operator sets the limits: LIMNER_MAX_UPLOAD_BYTES, LIMNER_MAX_IMAGE_PIXELS)."
    )


class UnsafeURLError(InputError):
    """A URL the safe fetcher refused: scheme, address, redirect or size."""

    code = "unsafe_url"
    default_hint = "Use an http(s) URL on a public host; local files and private addresses are refused."


class UnsupportedOperationError(InputError):
    """A value the model's profile does not allow; the message names what is allowed."""

    code = "unsupported_operation"
    default_hint = "Change that value to one the message lists (the tool's parameters list them too)."


class ProviderError(LimnerError):
    """The upstream image service failed; carries who failed and how, never the key."""

    code = "provider_error"
    default_hint = "Try again in a moment; if it keeps failing, check the provider's status."

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        hint: str | None = None,
        endpoint: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        # A message starts with who failed, and a display name may begin in lower case ("limner's sandbox
        # ...", "the Stable Diffusion web UI ..."): the sentence still starts with a capital.
        super().__init__(message[:1].upper() + message[1:], hint=hint)
        self.provider = provider
        self.endpoint = endpoint
        self.status_code = status_code
        self.retry_after = retry_after
        self.request_id = request_id

    def to_dict(self) -> dict[str, str | None]:
        """Adds the provider to the shared error shape."""
        out = super().to_dict()
        out["provider"] = self.provider
        return out


class ProviderAuthError(ProviderError):
    """The upstream rejected the key (never an HTTP 401 from limner: that would sign the user out)."""

    code = "provider_auth_failed"


class ProviderQuotaError(ProviderError):
    """Billing or credits are exhausted; retrying does not help."""

    code = "provider_quota_exceeded"


class ProviderRateLimitError(ProviderError):
    """Too many requests for now; ``retry_after`` says how long to wait when the upstream said so."""

    code = "provider_rate_limited"


class ContentPolicyError(ProviderError):
    """The provider's moderation refused the prompt, an input image or the result."""

    code = "content_policy"


class ProviderRequestError(ProviderError):
    """The upstream refused what we sent (a parameter, an unknown model, an Azure deployment or
    api-version that does not exist); the hint names the setting or argument to change.
    """

    code = "provider_rejected_request"


class ProviderUnavailableError(ProviderError):
    """Timeouts, refused connections and 5xx: the service, not the request, is at fault."""

    code = "provider_unavailable"


class ProviderResponseError(ProviderError):
    """A success status with a body we cannot use (no image data, malformed JSON)."""

    code = "provider_bad_response"


class StorageError(LimnerError):
    """The blob store or the database could not keep an image; nothing half-written is left."""

    code = "storage_error"
    default_hint = "Check free disk space and the permissions of LIMNER_DATA_DIR; the server's log has the details."


_SECRET_PATTERNS = (
    # Bearer first: the generic key=value pattern below would otherwise eat only the word "Bearer".
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/\-]{8,}=*"),
    re.compile(
        r"(?i)((?:api[-_]?key|authorization|token|secret|password|key provided)[\"']?\s*[:=]?\s*[\"']?)"
        r"(?!\[redacted\])[^\s\"',}]{6,}"
    ),
    re.compile(r"(?i)([?&](?:sig|signature|key|token|code|x-amz-signature|x-goog-signature)=)[^&\s\"']+"),
    re.compile(r"((?:sk|gsk|xai|lmn)[-_][A-Za-z0-9_\-]{2})[A-Za-z0-9_\-]{6,}"),
    re.compile(r"(AIza)[A-Za-z0-9_\-]{20,}"),
    re.compile(r"()\b[0-9a-f]{32}\b"),  # Azure keys are 32 hex characters
    re.compile(r"(data:[a-z/+.-]+;base64,)[A-Za-z0-9+/=]{32,}"),
)


def redact(text: str, *, secrets: tuple[str, ...] = (), limit: int = 500) -> str:
    """Strip keys, bearer tokens, signatures and base64 payloads from text before it is logged or shown.

    Upstream error bodies sometimes echo the key (or part of it), a signed URL or a whole image; none of
    them may reach a log, the LLM or an API response. ``secrets`` are values known to be secret (the key
    used for the call) and are replaced wherever they appear, whatever their shape. The patterns catch
    the common shapes of keys we were not told about. The result is cut to ``limit`` characters.
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1[redacted]", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
