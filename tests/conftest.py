"""Guards on for every test (DESIGN §8) and the shared fixtures.

- No connection to any non-loopback address: ``socket.connect`` refuses it (CI has no internet, and a
  test that needs one is wrong).
- Provider, proxy and limner variables are removed from the environment, and no ``.env`` is read.
- Blocking calls made from limner's code on a running event loop fail the test (blockbuster).
- Warnings are errors (pyproject), so an unclosed client or file (ResourceWarning) fails too.
- A child process that a test started and left running fails that test (and is ended: SIGTERM, then
  SIGKILL); orphaned grandchildren count too, because the test process is their subreaper.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from limner.api import create_app
from limner.config import Settings
from limner.db.repositories import UserRepository
from limner.ids import new_api_token
from limner.runtime import Runtime
from tests.processes import become_subreaper, end_pid, live_children

_ENV_PREFIXES = (
    "IMAGE_GEN_OAI",
    "IMAGE_EDIT_OAI",
    "DALLE",
    "SD_WEBUI",
    "FLUX_",
    "OPENAI_",
    "AZURE_OPENAI",
    "LIMNER_",
    "CREDS_",
    "MCP_",
)
_ENV_NAMES = ("PROXY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(_ENV_PREFIXES) or name in _ENV_NAMES:
            monkeypatch.delenv(name, raising=False)


def _is_loopback(address: Any) -> bool:
    if isinstance(address, str | bytes):  # AF_UNIX paths
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if not _is_loopback(address):
        raise ConnectionRefusedError(f"tests may only connect to loopback, not {address!r}")
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if not _is_loopback(address):
        raise ConnectionRefusedError(f"tests may only connect to loopback, not {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)


@pytest.fixture(autouse=True)
def _no_blocking_in_event_loop() -> Iterator[BlockBuster]:
    with blockbuster_ctx(["limner"]) as bb:
        yield bb


@pytest.fixture(scope="session", autouse=True)
def _subreaper() -> None:
    become_subreaper()


def _end_leavers(before: set[int]) -> dict[int, str]:
    """Children alive now that were not in ``before``, each given a short grace to finish exiting (a
    client's close need not wait for the exit) and then ended: the ones that had to be ended."""
    left = {pid: name for pid, name in live_children().items() if pid not in before}
    deadline = time.monotonic() + 5
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {pid: name for pid, name in live_children().items() if pid in left}
    for pid in left:
        end_pid(pid)
    return left


@pytest.fixture(scope="module", autouse=True)
def _no_process_left_behind_by_the_module(_subreaper: None) -> Iterator[None]:
    """The same rule for a module's shared fixtures, checked once they are torn down."""
    before = set(live_children())
    yield
    left = _end_leavers(before)
    assert not left, f"the module's tests or fixtures left child processes running: {left}"


@pytest.fixture(autouse=True)
def _no_process_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """Children alive after the test that were not there before it: the test leaked them.

    Requested first among function fixtures, so it is torn down after them: a fixture that ends its
    process in teardown is not blamed. A module whose shared fixture starts processes lazily, during its
    first test, marks itself ``shared_processes``; its processes are checked when the module ends.
    """
    before = set(live_children())
    yield
    if request.node.get_closest_marker("shared_processes") is None:
        left = _end_leavers(before)
        assert not left, f"the test left child processes running: {left}"


# --- shared fixtures --------------------------------------------------------------------------


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test: its own data dir, no .env, sandbox by default."""
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "sandbox": "on"}
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with Runtime.open(settings) as rt:
        yield rt


async def create_user(runtime: Runtime, name: str) -> tuple[str, str]:
    """A user and a fresh API token for them: (user ID, token)."""
    token = new_api_token()
    async with runtime.db.unit_of_work() as session:
        repo = UserRepository(session)
        user = await repo.get_or_create(name)
        await repo.add_token(user, token)
    return user.id, token


@pytest.fixture
async def api(runtime: Runtime, settings: Settings) -> AsyncIterator[httpx2.AsyncClient]:
    """The app over an ASGI transport, sharing the test's runtime."""
    app = create_app(settings, runtime=runtime)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://limner.test") as client:
        yield client


@pytest.fixture
async def alice(runtime: Runtime) -> tuple[str, dict[str, str]]:
    user_id, token = await create_user(runtime, "alice")
    return user_id, {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def bob(runtime: Runtime) -> tuple[str, dict[str, str]]:
    user_id, token = await create_user(runtime, "bob")
    return user_id, {"Authorization": f"Bearer {token}"}
