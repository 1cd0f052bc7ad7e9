"""Accounts for the web UI: sign-up, sign-in, the session cookie and its CSRF token."""

from __future__ import annotations

from pathlib import Path

import httpx2

from limner.api import create_app
from limner.runtime import Runtime
from tests.conftest import make_settings


async def signup(api: httpx2.AsyncClient, name: str, password: str = "correct horse") -> httpx2.Response:
    return await api.post("/api/auth/signup", json={"name": name, "password": password})


async def test_first_user_is_admin_and_the_cookie_session_works_with_csrf(api: httpx2.AsyncClient) -> None:
    first = await signup(api, "ada")
    assert first.status_code == 201, first.text
    assert first.json()["user"]["is_admin"] is True
    cookie = first.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    csrf = first.json()["csrf_token"]

    assert (await api.get("/api/images")).status_code == 200  # the cookie signs the request in
    me = (await api.get("/api/auth/me")).json()
    assert me["user"]["name"] == "ada" and me["csrf_token"] == csrf

    refused = await api.put("/api/keys/image_gen_oai", json={"key": "sk-1"})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    wrong = await api.put("/api/keys/image_gen_oai", json={"key": "sk-1"}, headers={"X-CSRF-Token": "nope"})
    assert wrong.status_code == 403
    accepted = await api.put("/api/keys/image_gen_oai", json={"key": "sk-1"}, headers={"X-CSRF-Token": csrf})
    assert accepted.status_code == 204

    api.cookies.clear()
    second = await signup(api, "bob")
    assert second.json()["user"]["is_admin"] is False


async def test_sign_in_failures_look_alike_and_sign_out_ends_the_session(api: httpx2.AsyncClient) -> None:
    await signup(api, "ada")
    api.cookies.clear()
    unknown = await api.post("/api/auth/signin", json={"name": "nobody", "password": "whatever123"})
    wrong = await api.post("/api/auth/signin", json={"name": "ada", "password": "wrong password"})
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json()
    signed = await api.post("/api/auth/signin", json={"name": "ada", "password": "correct horse"})
    assert signed.status_code == 200
    csrf = signed.json()["csrf_token"]
    out = await api.post("/api/auth/signout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 204
    assert out.headers["clear-site-data"] == '"cache"'  # the next user of this browser sees nothing cached
    api.cookies.clear()
    assert (await api.get("/api/images")).status_code == 401


async def test_credentials_are_checked(api: httpx2.AsyncClient) -> None:
    short = await signup(api, "ada", "short")
    assert short.status_code == 400 and "8 characters" in short.json()["error"]["message"]
    spaces = await signup(api, "a name", "long enough")
    assert spaces.status_code == 400
    await signup(api, "ada")
    api.cookies.clear()
    taken = await signup(api, "ada")
    assert taken.status_code == 400 and "taken" in taken.json()["error"]["message"]


async def test_closed_registration(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, allow_registration=False)
    async with Runtime.open(settings) as runtime:
        transport = httpx2.ASGITransport(app=create_app(settings, runtime=runtime))
        async with httpx2.AsyncClient(transport=transport, base_url="http://limner.test") as api:
            closed = await signup(api, "ada")
            assert closed.status_code == 403 and closed.json()["error"]["code"] == "registration_closed"


async def test_a_session_reaches_only_its_own_images(
    api: httpx2.AsyncClient, alice: tuple[str, dict[str, str]]
) -> None:
    from tests import images

    _, headers = alice
    secret = (
        await api.post("/api/images", headers=headers, files={"file": ("a.png", images.png(), "image/png")})
    ).json()
    await signup(api, "mallory")
    assert (await api.get(f"/api/images/{secret['id']}")).status_code == 404
    assert (await api.get("/api/images")).json()["images"] == []
