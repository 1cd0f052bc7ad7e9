"""The request log every emulator keeps, so tests can assert on what actually went over the wire.

Only a summary of file parts is kept (name, type, size, sha256), never their bytes, and the log is
capped, so a long-running sandbox does not grow without bound.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_LOG_LIMIT = 200


@dataclass(frozen=True)
class RecordedFile:
    """A file part of a multipart request (or an image decoded from a JSON data URL)."""

    field: str
    filename: str | None
    content_type: str | None
    size: int
    sha256: str


@dataclass
class RecordedRequest:
    """One request as the emulator received it; ``status`` is filled in once it was answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    request_id: str
    json: Any = None
    form: dict[str, str] | None = None
    files: list[RecordedFile] = field(default_factory=list)
    status: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for ``GET /_sandbox/requests``."""
        return asdict(self)


class RequestLog:
    """The last ``limit`` requests, oldest first."""

    def __init__(self, limit: int = DEFAULT_LOG_LIMIT) -> None:
        self._entries: deque[RecordedRequest] = deque(maxlen=limit)

    def append(self, entry: RecordedRequest) -> None:
        """Record a request, dropping the oldest when full."""
        self._entries.append(entry)

    def snapshot(self) -> list[RecordedRequest]:
        """A copy, so callers can iterate while requests keep arriving."""
        return list(self._entries)

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self._entries.clear()
