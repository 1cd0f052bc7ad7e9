"""The chat web UI's pages: the app at ``/``, the sign-in page at ``/signin``, static files at ``/static``.

A front end (layer 4). The pages only decide who is signed in (from the session cookie, through the
runtime's accounts) and render a template; the browser does the rest through the HTTP API. Pages carry a
strict Content-Security-Policy: scripts and styles come from ``/static`` only, so no inline handler or
injected markup can run. Templates render in a worker thread (Jinja2 reads and stats files).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from limner import __version__
from limner.api.deps import SESSION_COOKIE, RuntimeDep
from limner.db.models import User
from limner.runtime import Runtime

__all__ = ["CONTENT_SECURITY_POLICY", "router", "static_files"]

_HERE = Path(__file__).parent

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",  # partial images arrive as data: URLs; local previews are blob: URLs
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",  # the app page carries the session's CSRF token
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE / "templates"),
    autoescape=True,
    auto_reload=False,
    undefined=jinja2.StrictUndefined,
)

router = APIRouter(include_in_schema=False)


async def _signed_in(request: Request, runtime: Runtime) -> tuple[User, str] | None:
    token = request.cookies.get(SESSION_COOKIE)
    return await runtime.accounts.session(token) if token else None


def _render(name: str, context: dict[str, Any]) -> str:
    return _templates.get_template(name).render(version=__version__, **context)


async def _page(name: str, context: dict[str, Any]) -> HTMLResponse:
    html = await anyio.to_thread.run_sync(partial(_render, name, context))
    return HTMLResponse(html, headers=_PAGE_HEADERS)


@router.get("/", response_class=HTMLResponse)
async def app_page(request: Request, runtime: RuntimeDep) -> Response:
    """The chat; a visitor without a session goes to the sign-in page."""
    found = await _signed_in(request, runtime)
    if found is None:
        return RedirectResponse("/signin", status_code=303)
    user, csrf = found
    sandbox = runtime.sandbox
    return await _page(
        "app.html",
        {
            "user": user,
            "csrf_token": csrf,
            "sandbox_reason": sandbox.reason if sandbox is not None else None,
            "sandbox_chat": sandbox is not None and sandbox.chat,
        },
    )


@router.get("/signin", response_class=HTMLResponse)
async def signin_page(request: Request, runtime: RuntimeDep) -> Response:
    """Sign in, or create an account while registration is open; a signed-in visitor goes to the chat."""
    if await _signed_in(request, runtime) is not None:
        return RedirectResponse("/", status_code=303)
    return await _page("signin.html", {"registration_open": runtime.accounts.allow_registration})


@router.get("/docs", response_class=HTMLResponse)
async def api_docs_page(request: Request) -> Response:
    """The interactive API documentation (Swagger UI from the package, so it works without internet)."""
    return await _page("docs.html", {"openapi_url": request.app.openapi_url or "/openapi.json"})


class _RevalidatedStaticFiles(StaticFiles):
    """Static files that browsers revalidate on every use (a cheap 304 by ETag), so that an upgraded
    limner never runs a stale module next to a new one; there is no build step to fingerprint names.
    """

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        """Every answer says ``no-cache`` and ``nosniff``."""
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def static_files() -> StaticFiles:
    """The ASGI app to mount at ``/static``: the UI's modules, styles and icons."""
    # check_dir=False: the folder ships with the package, and checking it here would stat the disk inside
    # create_app, which may run on the event loop; Starlette checks it (in a thread) on the first request.
    return _RevalidatedStaticFiles(directory=_HERE / "static", check_dir=False)
