"""Where Flux result links may point: BFL's delivery hosts, the base URL's host (a gateway serves its own
links) and ``LIMNER_FLUX_RESULT_HOSTS``. The fetches themselves are in tests/contract/test_bfl_backend.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx2
import pytest

from limner.backends.bfl import BFL_DELIVERY_HOSTS, BFLBackend, allowed_result_hosts
from limner.config import Settings, load_settings
from limner.errors import ConfigurationError
from limner.net import FetchPolicy, create_http_client, refused_host

DELIVERY_ONLY = FetchPolicy(max_bytes=1, allowed_hosts=BFL_DELIVERY_HOSTS)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with await asyncio.to_thread(create_http_client) as client:
        yield client


def test_the_base_urls_host_and_the_settings_hosts_are_added() -> None:
    assert allowed_result_hosts("https://GW.example.com./bfl") == {"gw.example.com"}
    extra = ("*.cdn.example.net", "files.example.org")
    assert allowed_result_hosts("http://127.0.0.1:8080", extra) == {"127.0.0.1", *extra}


@pytest.mark.parametrize(
    ("link", "refused"),
    [
        ("https://delivery-us1.bfl.ai/results/x.jpeg?sig=s", None),
        ("https://gw.example.com/results/x.jpeg", None),
        ("https://a.cdn.example.net/x.jpeg", None),
        ("https://cdn.example.net/x.jpeg", "cdn.example.net"),  # *.domain covers subdomains, not the domain
        ("https://elsewhere.example.com/x.jpeg", "elsewhere.example.com"),
        ("https://example.com/x.jpeg", "example.com"),
    ],
)
async def test_the_backends_policy_decides_each_link(http: httpx2.AsyncClient, link: str, refused: str | None) -> None:
    backend = BFLBackend(
        base_url="https://gw.example.com/bfl",
        http_client=http,
        fetch_policy=DELIVERY_ONLY,
        result_hosts=("*.cdn.example.net",),
    )
    assert refused_host(link, backend.fetch_policy) == refused


async def test_a_policy_without_an_allow_list_stays_without_one(http: httpx2.AsyncClient) -> None:
    """The sandbox's policy: its emulators live on loopback, whatever host name they use."""
    policy = FetchPolicy(max_bytes=1, allow_loopback=True)
    backend = BFLBackend(base_url="http://127.0.0.1:9/bfl", http_client=http, fetch_policy=policy, result_hosts=("x",))
    assert backend.fetch_policy == policy


def test_the_setting_is_read_as_host_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMNER_FLUX_RESULT_HOSTS", " gw.example.com, *.CDN.example.net.,, ")
    assert load_settings(None).flux_result_hosts == ("gw.example.com", "*.cdn.example.net")
    assert Settings(_env_file=None).flux_result_hosts == ("gw.example.com", "*.cdn.example.net")
    monkeypatch.delenv("LIMNER_FLUX_RESULT_HOSTS")
    assert load_settings(None).flux_result_hosts == ()


@pytest.mark.parametrize("value", ["https://gw.example.com", "gw.example.com:8443", "*", "*.", "a..b", "gw/x"])
def test_a_value_that_is_not_a_host_pattern_names_the_setting(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LIMNER_FLUX_RESULT_HOSTS", f"ok.example.com,{value}")
    with pytest.raises(ConfigurationError, match="LIMNER_FLUX_RESULT_HOSTS") as caught:
        load_settings(None)
    assert "*.domain" in caught.value.message
