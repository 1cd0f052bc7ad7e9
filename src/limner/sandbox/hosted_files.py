"""Images the emulators hand out as URLs instead of bytes, with the expiry real providers impose.

DALL·E answers with links to blob storage that stop working after a while (60 minutes on OpenAI,
24 hours on Azure); clients that store the link instead of the bytes break later. The store keeps
each image for ``ttl`` seconds and answers an expired link the way Azure Blob Storage does: 403
``AuthenticationFailed`` in XML. It is capped, oldest first, so it cannot grow without bound.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

DEFAULT_CAPACITY = 512
_MEDIA_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
_EXPIRED_XML = (
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code><Message>Server failed '
    "to authenticate the request. Make sure the value of Authorization header is formed correctly "
    "including the signature.\nSigned expiry time [{expiry}] must be after signed start time "
    "[{start}]</Message></Error>"
)
_MISSING_XML = (
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobNotFound</Code><Message>The specified blob '
    "does not exist.</Message></Error>"
)


class Lookup(Enum):
    """Outcome of fetching a hosted file."""

    FOUND = "found"
    EXPIRED = "expired"
    MISSING = "missing"


@dataclass(frozen=True)
class HostedFile:
    """One image behind a URL."""

    data: bytes
    media_type: str
    expires_at: float


class HostedFiles:
    """Name → bytes with expiry; names are random, like the signed blob links of the real service."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, clock: Callable[[], float] = time.time) -> None:
        self._files: OrderedDict[str, HostedFile] = OrderedDict()
        self._capacity = capacity
        self.clock = clock  # Unix seconds; a test passes its own to expire links without waiting

    def put(self, data: bytes, media_type: str, ttl: float) -> str:
        """Store ``data`` for ``ttl`` seconds and return the file name to put in a URL."""
        extension = _MEDIA_EXTENSIONS.get(media_type, "bin")
        name = f"img-{uuid.uuid4().hex}.{extension}"
        self._files[name] = HostedFile(data, media_type, self.clock() + ttl)
        while len(self._files) > self._capacity:
            self._files.popitem(last=False)
        return name

    def get(self, name: str) -> tuple[Lookup, HostedFile | None]:
        """The file, or why it cannot be served."""
        found = self._files.get(name)
        if found is None:
            return Lookup.MISSING, None
        if self.clock() >= found.expires_at:
            return Lookup.EXPIRED, found
        return Lookup.FOUND, found

    def expiry(self, name: str) -> float | None:
        """When a stored file's link stops working (Unix seconds)."""
        found = self._files.get(name)
        return None if found is None else found.expires_at

    def clear(self) -> None:
        """Forget every hosted file."""
        self._files.clear()


def expired_body(expiry: str, start: str) -> str:
    """Azure Blob Storage's XML for a SAS link past its expiry."""
    return _EXPIRED_XML.format(expiry=expiry, start=start)


def missing_body() -> str:
    """Azure Blob Storage's XML for an unknown blob."""
    return _MISSING_XML
