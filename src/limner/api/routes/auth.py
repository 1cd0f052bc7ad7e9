"""``/api/auth``: sign up, sign in, sign out and who am I, for the web UI's session cookie.

The cookie is HttpOnly and SameSite=Lax (Secure over https); every change made with it must carry the
session's CSRF token in ``X-CSRF-Token`` (``GET /api/auth/me`` and the sign-in answers give it).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from limner.accounts import SignedIn
from limner.api.deps import SESSION_COOKIE, CurrentUser, RuntimeDep
from limner.api.errors import ERROR_RESPONSES

__all__ = ["router"]

router = APIRouter(prefix="/api/auth", tags=["auth"], responses=ERROR_RESPONSES)


class Credentials(BaseModel):
    """A name and a password."""

    name: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1024)


class NewAccount(Credentials):
    """A new account's name and password. The schema states the rules that ``accounts`` checks; the check
    itself stays there, so a person gets its words ("A password needs at least 8 characters") rather
    than a validator's.
    """

    name: str = Field(
        min_length=1,
        max_length=100,
        description="Letters, digits or . _ - @ (case-insensitive).",
        json_schema_extra={"pattern": r"^[A-Za-z0-9_.@-]+$"},
    )
    password: str = Field(
        min_length=1, max_length=1024, description="At least 8 characters.", json_schema_extra={"minLength": 8}
    )


class UserOut(BaseModel):
    """The signed-in user."""

    id: str
    name: str
    is_admin: bool


class SessionOut(BaseModel):
    """Who is signed in, and the CSRF token to send with changes."""

    user: UserOut
    csrf_token: str | None = Field(description="Send as X-CSRF-Token with every change made with the cookie.")
    registration_open: bool


def _answer(signed: SignedIn, request: Request, response: Response, registration_open: bool) -> SessionOut:
    days = request.app.state.runtime.settings.session_days
    response.set_cookie(
        SESSION_COOKIE,
        signed.token,
        max_age=days * 86400,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    user = UserOut(id=signed.user.id, name=signed.user.name, is_admin=signed.user.is_admin)
    return SessionOut(user=user, csrf_token=signed.csrf_token, registration_open=registration_open)


@router.post(
    "/signup", status_code=201, summary="Create an account and sign in (the first one with a password is the admin)."
)
async def sign_up(runtime: RuntimeDep, body: NewAccount, request: Request, response: Response) -> SessionOut:
    """403 registration_closed when the operator closed sign-up."""
    signed = await runtime.accounts.sign_up(body.name, body.password)
    return _answer(signed, request, response, runtime.accounts.allow_registration)


@router.post("/signin", summary="Sign in with a name and a password.")
async def sign_in(runtime: RuntimeDep, body: Credentials, request: Request, response: Response) -> SessionOut:
    """401 sign_in_failed for a wrong name or password (the same answer for both); 429 too_many_attempts with
    Retry-After after too many failures for the name or from the client's address. Names are case-insensitive.
    """
    address = request.client.host if request.client else None
    signed = await runtime.accounts.sign_in(body.name, body.password, address=address)
    return _answer(signed, request, response, runtime.accounts.allow_registration)


@router.post("/signout", status_code=204, summary="End the browser session.")
async def sign_out(runtime: RuntimeDep, user: CurrentUser, request: Request) -> Response:
    """Needs the CSRF token like any change; clears the cookie."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await runtime.accounts.sign_out(token)
    # The next person at this browser must not see this user's images from its cache.
    response = Response(status_code=204, headers={"Clear-Site-Data": '"cache"'})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/me", summary="The signed-in user and the session's CSRF token.")
async def me(runtime: RuntimeDep, user: CurrentUser, request: Request) -> SessionOut:
    """For the page to start with; a bearer caller gets no CSRF token (it needs none)."""
    token = request.cookies.get(SESSION_COOKIE)
    found = await runtime.accounts.session(token) if token else None
    out = UserOut(id=user.id, name=user.name, is_admin=user.is_admin)
    return SessionOut(
        user=out, csrf_token=found[1] if found else None, registration_open=runtime.accounts.allow_registration
    )
