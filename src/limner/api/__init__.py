"""The HTTP API and the chat UI's server."""

from limner.api.app import create_app

__all__ = ["create_app"]
