"""Sign-in throttling, case-insensitive names, the administrator rule, and the caller's own API tokens."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import httpx2
import pytest
from typer.testing import CliRunner

import limner.accounts as accounts_module
from limner.api import create_app
from limner.cli import app as cli_app
from limner.runtime import Runtime
from limner.throttle import MemoryAttemptCounter
from tests.conftest import create_user, make_settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _signup(api: httpx2.AsyncClient, name: str, password: str = "correct horse") -> httpx2.Response:
    response = await api.post("/api/auth/signup", json={"name": name, "password": password})
    api.cookies.clear()
    return response


async def _signin(api: httpx2.AsyncClient, name: str, password: str) -> httpx2.Response:
    response = await api.post("/api/auth/signin", json={"name": name, "password": password})
    api.cookies.clear()
    return response


async def test_ten_wrong_passwords_refuse_the_right_one_until_the_window_passes(
    api: httpx2.AsyncClient, runtime: Runtime
) -> None:
    clock = FakeClock()
    runtime.accounts.name_attempts = MemoryAttemptCounter(limit=10, window=900, clock=clock)
    await _signup(api, "ada")
    for _ in range(10):
        assert (await _signin(api, "ada", "wrong password")).status_code == 401
    refused = await _signin(api, "ada", "correct horse")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "too_many_attempts"
    assert 1 <= int(refused.headers["Retry-After"]) <= 900
    clock.now += 899
    assert (await _signin(api, "ADA", "correct horse")).status_code == 429  # names are one account
    clock.now += 2
    assert (await _signin(api, "ada", "correct horse")).status_code == 200


async def test_one_address_is_throttled_across_names(api: httpx2.AsyncClient, runtime: Runtime) -> None:
    runtime.accounts.address_attempts = MemoryAttemptCounter(limit=5, window=900, clock=FakeClock())
    await _signup(api, "ada")
    for n in range(5):
        assert (await _signin(api, f"guess{n}", "wrong password")).status_code == 401
    refused = await _signin(api, "ada", "correct horse")
    assert refused.status_code == 429 and "address" in refused.json()["error"]["message"]
    other = httpx2.ASGITransport(app=api._transport.app, client=("10.0.0.9", 4000))  # type: ignore[attr-defined]
    async with httpx2.AsyncClient(transport=other, base_url="http://limner.test") as elsewhere:
        assert (await _signin(elsewhere, "ada", "correct horse")).status_code == 200


async def test_names_are_case_insensitive(api: httpx2.AsyncClient) -> None:
    assert (await _signup(api, "Alice")).json()["user"]["name"] == "alice"
    assert (await _signup(api, "ALICE")).status_code == 400
    assert (await _signin(api, "aLiCe", "correct horse")).status_code == 200


async def test_an_unknown_name_costs_a_hash_like_a_wrong_password(api: httpx2.AsyncClient) -> None:
    await _signup(api, "ada")
    await _signin(api, "nobody", "warm up the dummy")

    async def timed(name: str) -> float:
        start = time.perf_counter()
        assert (await _signin(api, name, "wrong password")).status_code == 401
        return time.perf_counter() - start

    pairs = [(await timed(f"nobody{n}"), await timed("ada")) for n in range(5)]  # interleaved: same load
    unknown, wrong = sorted(p[0] for p in pairs)[2], sorted(p[1] for p in pairs)[2]
    assert wrong / 3 < unknown < wrong * 3, (unknown, wrong)


async def test_concurrent_password_hashes_are_bounded(api: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    await _signup(api, "ada")
    lock, running, peak = threading.Lock(), [0], [0]
    two_inside = threading.Barrier(2)  # no verification ends before a second one runs beside it
    real = accounts_module._hasher

    class CountingHasher:
        def hash(self, password: str) -> str:
            return real.hash(password)

        def verify(self, password: str, hashed: str) -> bool:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            two_inside.wait(timeout=60)  # a third, were the bound missing, would enter meanwhile
            time.sleep(0.05)
            with lock:
                running[0] -= 1
            return False

    monkeypatch.setattr(accounts_module, "_hasher", CountingHasher())
    async with anyio.create_task_group() as tg:
        for n in range(8):
            tg.start_soon(_signin, api, f"x{n}", "wrong password")
    assert peak[0] == 2  # LIMNER_PASSWORD_HASH_CONCURRENCY's default


async def test_tokens_are_listed_created_and_revoked_only_by_their_owner(
    api: httpx2.AsyncClient, runtime: Runtime
) -> None:
    _, alice_token = await create_user(runtime, "alice")
    _, bob_token = await create_user(runtime, "bob")
    alice = {"Authorization": f"Bearer {alice_token}"}
    bob = {"Authorization": f"Bearer {bob_token}"}
    made = await api.post("/api/tokens", headers=alice, json={"name": "laptop", "expires_in_days": 30})
    assert made.status_code == 201, made.text
    new = made.json()
    assert new["token"].startswith(new["prefix"]) and new["expires_at"] is not None
    listed = (await api.get("/api/tokens", headers=alice)).json()["tokens"]
    assert {t["name"] for t in listed} == {"", "laptop"} and all("token" not in t for t in listed)
    assert all(t["id"] != new["id"] for t in (await api.get("/api/tokens", headers=bob)).json()["tokens"])
    foreign = await api.delete(f"/api/tokens/{new['id']}", headers=bob)
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "token_not_found"
    fresh = {"Authorization": f"Bearer {new['token']}"}
    assert (await api.get("/api/images", headers=fresh)).status_code == 200
    assert (await api.delete(f"/api/tokens/{new['id']}", headers=alice)).status_code == 204
    assert (await api.get("/api/images", headers=fresh)).status_code == 401  # at once, despite the cache


def test_cli_tokens_expire_list_revoke_and_the_admin_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    made = runner.invoke(cli_app, ["tokens", "create", "--user", "Me", "--expires-in", "30d", "--name", "ci"])
    assert made.exit_code == 0, made.output
    listed = runner.invoke(cli_app, ["tokens", "list", "--user", "me"])
    assert listed.exit_code == 0 and "ci" in listed.output and made.output.split()[-1] not in listed.output
    token_id = next(word for word in listed.output.split() if word.startswith("tok"))
    assert runner.invoke(cli_app, ["tokens", "revoke", token_id]).exit_code == 0
    assert runner.invoke(cli_app, ["tokens", "revoke", token_id]).exit_code == 65
    created = runner.invoke(cli_app, ["users", "create", "Root", "--password"], input="long password\n" * 2)
    assert created.exit_code == 0 and "administrator" in created.output, created.output  # `me` has no password
    assert runner.invoke(cli_app, ["users", "admin", "me"]).exit_code == 0
    assert runner.invoke(cli_app, ["users", "admin", "me", "--revoke"]).exit_code == 0
    assert runner.invoke(cli_app, ["users", "admin", "nobody"]).exit_code == 65


async def test_a_cli_user_made_first_does_not_take_the_administrator_role(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with Runtime.open(settings) as runtime:
        await create_user(runtime, "me")  # what `limner tokens create --user me` does
        transport = httpx2.ASGITransport(app=create_app(settings, runtime=runtime))
        async with httpx2.AsyncClient(transport=transport, base_url="http://limner.test") as api:
            assert (await _signup(api, "ada")).json()["user"]["is_admin"] is True
            assert (await _signup(api, "bob")).json()["user"]["is_admin"] is False
