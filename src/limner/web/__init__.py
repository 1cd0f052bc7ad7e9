"""The chat web UI: Jinja2 templates and plain ES modules, served by ``limner serve`` (no build step).

A front end: the pages come from :mod:`limner.web.routes`; everything the page does after loading goes
through the HTTP API (``/api/...``) with the session cookie and its CSRF token.
"""

from __future__ import annotations

from limner.web.routes import router, static_files

__all__ = ["router", "static_files"]
