"""Identifiers: image and user IDs, API tokens.

Image IDs are what the LLM copies between turns, so they are short, unambiguous and recognisable
("img_" + a ULID, which also sorts by creation time). Their shape is checked before any lookup so a
malformed ID never reaches the database; an ID of the right shape that is unknown or foreign is an
``ImageNotFoundError`` further down, exactly like a missing one.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from ulid import ULID

IMAGE_PREFIX = "img_"
USER_PREFIX = "usr_"
TOKEN_PREFIX = "lmn_"  # noqa: S105 - a prefix, not a secret

_ULID_BODY = r"[0-9A-HJKMNP-TV-Z]{26}"
_IMAGE_RE = re.compile(rf"^{IMAGE_PREFIX}{_ULID_BODY}$")


def new_image_id() -> str:
    """A fresh image ID; time-ordered so the newest-first listing is an index scan."""
    return f"{IMAGE_PREFIX}{ULID()}"


def new_user_id() -> str:
    """A fresh user ID."""
    return f"{USER_PREFIX}{ULID()}"


def new_row_id(prefix: str) -> str:
    """An ID for other rows (tokens, credentials), prefixed so logs say what they are."""
    return f"{prefix}_{ULID()}"


def is_image_id(value: str) -> bool:
    """Whether ``value`` has the shape of an image ID (not whether it exists)."""
    return bool(_IMAGE_RE.match(value))


def normalise_image_id(value: str) -> str:
    """Accept what an LLM tends to send: surrounding quotes, spaces, lower case."""
    cleaned = value.strip().strip("\"'`").strip()
    if cleaned[:4].lower() == IMAGE_PREFIX:
        cleaned = IMAGE_PREFIX + cleaned[4:].upper()
    return cleaned


def new_api_token() -> str:
    """A bearer token; only its hash is stored, so it is shown once."""
    return f"{TOKEN_PREFIX}{secrets.token_urlsafe(32)}"


def hash_token(token: str) -> str:
    """Tokens are high-entropy, so a plain SHA-256 is enough (no password hashing needed)."""
    return hashlib.sha256(token.encode()).hexdigest()
