"""Malformed URLs: whatever comes in, ``safe_fetch`` answers with a LimnerError and nothing else.

Issue 9 item 14: a port above 65535 passed the checks and then raised a bare ``ExceptionGroup`` from
anyio's happy-eyeballs connector, which lost a whole MCP result. The explicit cases pin the known
offenders; the property tests throw generated URLs (built from hostile parts, and plain random text) at
the real fetcher, with a resolver that sends every name to loopback so that whatever passes the checks
really reaches the connector (closed loopback ports: nothing leaves the machine).
"""

from __future__ import annotations

import asyncio
import ipaddress

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from limner.errors import LimnerError, ProviderUnavailableError, UnsafeURLError
from limner.net import FetchPolicy, IPAddress, safe_fetch

POLICY = FetchPolicy(max_bytes=1000, allow_loopback=True, timeout=2.0, max_redirects=0)


async def _to_loopback(host: str, port: int) -> list[IPAddress]:
    """Every name resolves to loopback, so checked URLs go on to a real (refused) connection."""
    return [ipaddress.ip_address("127.0.0.1")]


def _outcome(url: str) -> BaseException | None:
    """The exception ``safe_fetch`` raised for ``url`` (None if it fetched something)."""

    async def run() -> None:
        await safe_fetch(url, policy=POLICY, resolver=_to_loopback)

    try:
        asyncio.run(run())
    except BaseException as exc:  # the point is to see everything that comes out
        return exc
    return None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:99999/", "port 99999"),
        ("http://example.com:70000/x.png", "port 70000"),
        ("https://[::1]:65536/", "port 65536"),
        ("http://127.0.0.1:0/", "port 0"),
        ("http://xn--zz/", "not valid IDNA"),
        ("http://a.xn--a-ecp.b/", "not valid IDNA"),
    ],
)
def test_known_malformed_urls_are_refused_before_any_lookup(url: str, reason: str) -> None:
    error = _outcome(url)
    assert isinstance(error, UnsafeURLError), repr(error)
    assert reason in error.message
    assert "malformed" in error.message


def test_credentials_in_the_url_are_refused() -> None:
    error = _outcome("http://user:secret@127.0.0.1:8080/")
    assert isinstance(error, UnsafeURLError)
    assert "secret" not in error.message


def test_an_exception_group_from_the_connector_is_a_provider_error() -> None:
    """Whatever the connector raises (here anyio's task-group wrapping) becomes ProviderUnavailableError."""

    class Exploding(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            raise ExceptionGroup("unhandled errors in a TaskGroup", [OverflowError("port must be 0-65535")])

    async def run() -> None:
        async with httpx2.AsyncClient(transport=Exploding(), trust_env=False) as client:
            await safe_fetch("http://127.0.0.1:8080/x.png", policy=POLICY, client=client, resolver=_to_loopback)

    with pytest.raises(ProviderUnavailableError, match="port must be 0-65535") as caught:
        asyncio.run(run())
    assert caught.value.provider == "url"


_LABEL = st.one_of(
    st.from_regex(r"[a-z0-9-]{1,10}", fullmatch=True),
    st.from_regex(r"xn--[a-z0-9-]{0,12}", fullmatch=True),
    st.text(min_size=0, max_size=8),
    st.sampled_from(["", "-", "localhost", "0x7f", "0177", "4294967295", "%2e", "\u200b", "ß", "例え"]),
)
_HOST = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["[::1]", "[fe80::1%25eth0]", "[::ffff:127.0.0.1]", "[1:2:3]", "[", "]", "127.1", "1.2.3.4.5"]),
    st.ip_addresses().map(lambda a: f"[{a}]" if a.version == 6 else str(a)),
)
_PORT = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=10**7).map(str),
    st.sampled_from(["", "0", "65535", "65536", "99999", "８０", "80a", "+80", " 80", "0x50"]),
)
_USERINFO = st.one_of(st.none(), st.sampled_from(["user", "user:pass", ":", "@", "a%40b:c"]), st.text(max_size=6))


@st.composite
def _built_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "ftp", "file", "javascript", "", "h ttp"]))
    userinfo = draw(_USERINFO)
    port = draw(_PORT)
    path = draw(st.text(max_size=10))
    authority = (f"{userinfo}@" if userinfo is not None else "") + draw(_HOST)
    authority += f":{port}" if port is not None else ""
    return f"{scheme}://{authority}/{path}"


_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FAST
@given(_built_urls())
def test_built_urls_give_only_limner_errors(url: str) -> None:
    error = _outcome(url)
    assert isinstance(error, LimnerError), f"{url!r} raised {error!r}"


@_FAST
@given(st.text(max_size=40))
def test_random_text_gives_only_limner_errors(url: str) -> None:
    error = _outcome(url)
    assert isinstance(error, LimnerError), f"{url!r} raised {error!r}"
