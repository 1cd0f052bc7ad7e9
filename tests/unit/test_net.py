"""limner.net: the SSRF decisions, the pinned connection, and the client factory.

Everything runs over loopback: a raw asyncio HTTP server (and a TLS one) on 127.0.0.1:0, a fake
resolver for names, and httpx2.MockTransport for wire details that a real server makes awkward.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import ipaddress
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from limner.errors import ImageTooLargeError, ProviderUnavailableError, UnsafeURLError
from limner.net import (
    FetchPolicy,
    address_refusal,
    check_url,
    create_http_client,
    host_matches,
    is_public_address,
    refused_host,
    resolve_host,
    safe_fetch,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
LOOPBACK = FetchPolicy(max_bytes=1_000_000, allow_loopback=True, timeout=5.0)
STRICT = FetchPolicy(max_bytes=1_000_000)
PUBLIC_IP = "93.184.216.34"


# --- fakes -------------------------------------------------------------------------------------------


class FakeResolver:
    """A DNS seam that records every lookup; unknown names fail like a real NXDOMAIN."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        self.calls.append((host, port))
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return [ipaddress.ip_address(a) for a in self.table[host]]


class RecordingTransport(httpx2.AsyncHTTPTransport):
    """The real transport, remembering every URL it was asked to connect to."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.urls: list[httpx2.URL] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        self.urls.append(request.url)
        return await super().handle_async_request(request)


@dataclass
class SeenRequest:
    target: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return urlsplit(self.target).path or "/"


def _response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = {"Content-Length": str(len(body)), "Connection": "close", **(headers or {})}
    lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in head.items()), "", ""]
    return "\r\n".join(lines).encode() + body


@dataclass
class LoopbackServer:
    """A tiny HTTP/1.1 server with routes for every case; it records requests and SNI names."""

    requests: list[SeenRequest] = field(default_factory=list)
    sni_names: list[str | None] = field(default_factory=list)
    streamed: int = 0
    stream_stopped: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        if tls is not None:
            tls.sni_callback = self._record_sni
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]

    def _record_sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.sni_names.append(name)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            target = head[0].split(" ")[1]
            headers = dict(line.split(": ", 1) for line in head[1:] if ": " in line)
            seen = SeenRequest(target, {k.lower(): v for k, v in headers.items()})
            self.requests.append(seen)
            await self._route(seen, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, seen: SeenRequest, writer: asyncio.StreamWriter) -> None:
        path = seen.path
        if path.startswith("/chain/"):
            hops = int(path.rsplit("/", 1)[1])
            location = f"/chain/{hops - 1}" if hops else "/image.png"
            writer.write(_response(302, headers={"Location": location}))
        elif path in _SPECIAL:
            await _SPECIAL[path](self, seen, writer)
            return
        else:
            writer.write(_ROUTES.get(path, _response(404, b"not here")))
        await writer.drain()

    async def stream_forever(self, _seen: SeenRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
        chunk = b"\0" * 65536
        try:
            while self.streamed < 256 * 2**20:
                writer.write(chunk)
                await writer.drain()
                self.streamed += len(chunk)
        finally:
            self.stream_stopped.set()

    async def declare_huge(self, _seen: SeenRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n")
        writer.write(b"\0" * 1024)
        await writer.drain()
        await asyncio.sleep(30)

    async def slow(self, _seen: SeenRequest, _writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async def drip(self, _seen: SeenRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
        for _ in range(600):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    async def echo_host(self, seen: SeenRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(_response(200, seen.headers.get("host", "").encode(), {"Content-Type": "text/plain"}))
        await writer.drain()


Special = Callable[[LoopbackServer, SeenRequest, asyncio.StreamWriter], Awaitable[None]]
_SPECIAL: dict[str, Special] = {
    "/huge-stream": LoopbackServer.stream_forever,
    "/huge-declared": LoopbackServer.declare_huge,
    "/slow": LoopbackServer.slow,
    "/drip": LoopbackServer.drip,
    "/echo-host": LoopbackServer.echo_host,
}
_ROUTES = {
    "/image.png": _response(200, PNG, {"Content-Type": "image/png"}),
    "/redirect": _response(302, headers={"Location": "/image.png"}),
    "/redirect-private": _response(302, headers={"Location": "http://10.1.2.3/secret?token=hunter2"}),
    "/redirect-name": _response(302, headers={"Location": "http://internal.test/x"}),
    "/loop": _response(302, headers={"Location": "/loop"}),
    "/broken": _response(500, b"boom"),
    "/brotli": _response(200, b"....", {"Content-Encoding": "br"}),
}


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    srv = LoopbackServer()
    await srv.start()
    yield srv
    await srv.close()


# --- certificates for the TLS cases ------------------------------------------------------------------


@dataclass
class PKIFiles:
    ca_pem: bytes
    chain_file: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("limner test CA"))
        .issuer_name(_name("limner test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("images.test"))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.test")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = tmp_path_factory.mktemp("pki") / "leaf.pem"
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain.write_bytes(key_pem + leaf.public_bytes(serialization.Encoding.PEM))
    return PKIFiles(ca.public_bytes(serialization.Encoding.PEM), chain)


@pytest.fixture
def tls_contexts(pki: PKIFiles) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.chain_file)
    client_ctx = ssl.create_default_context(cadata=pki.ca_pem.decode())
    return server_ctx, client_ctx


# --- address classification --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason_part"),
    [
        ("10.0.0.5", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("169.254.169.254", "metadata"),
        ("169.254.170.2", "metadata"),
        ("168.63.129.16", "metadata"),
        ("100.100.100.200", "metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.255", "CGNAT"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.7", "documentation"),
        ("203.0.113.9", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("192.0.0.8", "IETF"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "scoped"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("fd00:ec2::254", "metadata"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("::ffff:10.0.0.5", "IPv6 form of 10.0.0.5, which is private"),
        ("::ffff:127.0.0.1", "which is loopback"),
        ("::ffff:169.254.169.254", "which is a cloud metadata address"),
        ("::ffff:100.64.1.1", "CGNAT"),
        ("::10.0.0.5", "IPv4-compatible"),
        ("::8.8.8.8", "IPv4-compatible"),
        ("2002:a00:5::", "IPv6 form of 10.0.0.5"),
        ("2002:7f00:1::1", "which is loopback"),
        ("64:ff9b::10.0.0.5", "IPv6 form of 10.0.0.5"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("64:ff9b:1::808:808", "local-use NAT64"),
        ("2001:db8::1", "documentation"),
        ("2001::1", "Teredo"),
        ("100::1", "discard"),
        ("2001:4860::5efe:a00:5", "IPv6 form of 10.0.0.5"),  # ISATAP
    ],
)
def test_non_public_addresses_are_refused_with_a_reason(address: str, reason_part: str) -> None:
    reason = address_refusal(address)
    assert reason is not None
    assert reason_part in reason
    assert not is_public_address(address)
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        PUBLIC_IP,
        "172.32.0.1",
        "100.128.0.1",
        "11.0.0.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::8.8.8.8",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(address) is None
    assert is_public_address(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_allow_loopback_permits_loopback(address: str) -> None:
    assert address_refusal(address, allow_loopback=True) is None
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["10.0.0.5", "0.0.0.0", "::", "169.254.169.254", "fd00:ec2::254", "192.168.0.1"])
def test_allow_loopback_permits_nothing_else(address: str) -> None:
    assert address_refusal(address, allow_loopback=True) is not None


# --- URL checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason_part"),
    [
        ("ftp://example.com/a.png", "scheme 'ftp' is not allowed"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("gopher://example.com/", "scheme 'gopher'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        (
            "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk",
            "scheme 'data'",
        ),
        ("http://user:pw@example.com/a.png", "user name or password"),
        ("http://user@example.com/a.png", "user name or password"),
        ("http:///a.png", "no host"),
        ("http://:80/a.png", "no host"),
        ("http://2130706433/", "non-standard numeric"),
        ("http://0x7f000001/", "non-standard numeric"),
        ("http://017700000001/", "non-standard numeric"),
        ("http://127.1/", "non-standard numeric"),
        ("http://0177.0.0.1/", "Invalid IPv4 address"),  # httpx2's parser refuses these itself
        ("http://127.000.000.001/", "Invalid IPv4 address"),
        ("http://1.2.3.4.5/", "non-standard numeric"),
        ("http://a%20b.example/", "not a valid host name"),
        ("http://-bad.example/", "not a valid host name"),
        ("http://127.0.0.1/a.png", "the address 127.0.0.1 is loopback"),
        ("http://127.0.0.1./a.png", "is loopback"),
        ("http://[::1]:8080/a.png", "the address ::1 is loopback"),
        ("http://[::ffff:10.0.0.5]/", "which is private"),
        ("http://[fe80::1%25eth0]/", "scoped"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://100.100.100.200/", "cloud metadata"),
        ("http://0.0.0.0:8000/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://100.64.3.4/", "CGNAT"),
    ],
)
async def test_check_url_refuses(url: str, reason_part: str) -> None:
    resolver = FakeResolver({})
    with pytest.raises(UnsafeURLError) as caught:
        await check_url(url, STRICT, resolver=resolver)
    assert reason_part in caught.value.message
    assert caught.value.message.startswith("Refused to fetch ")
    assert caught.value.hint
    assert resolver.calls == []  # refused before any DNS lookup


async def test_refusal_message_names_address_and_never_the_query() -> None:
    with pytest.raises(UnsafeURLError) as caught:
        await check_url("http://10.0.0.5/img.png?X-Amz-Signature=s3cr3t", STRICT, resolver=FakeResolver({}))
    assert caught.value.message == "Refused to fetch http://10.0.0.5/...: the address 10.0.0.5 is private."
    assert "s3cr3t" not in str(caught.value)
    assert "img.png" not in str(caught.value)


async def test_a_data_uri_is_refused_without_echoing_its_payload() -> None:
    with pytest.raises(UnsafeURLError) as caught:
        await check_url("data:image/png;base64,QUFBQUFBQUFBQUFB", STRICT)
    assert "QUFB" not in str(caught.value)


async def test_scheme_allow_list_is_the_policy_s() -> None:
    https_only = FetchPolicy(max_bytes=10, allowed_schemes=frozenset({"https"}))
    resolver = FakeResolver({"images.example": [PUBLIC_IP]})
    with pytest.raises(UnsafeURLError, match="scheme 'http' is not allowed"):
        await check_url("http://images.example/a.png", https_only, resolver=resolver)
    checked = await check_url("https://images.example/a.png", https_only, resolver=resolver)
    assert checked.addresses == (ipaddress.ip_address(PUBLIC_IP),)


async def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    resolver = FakeResolver({"internal.example": ["10.0.0.7"]})
    with pytest.raises(UnsafeURLError) as caught:
        await check_url("https://internal.example/a.png", STRICT, resolver=resolver)
    assert caught.value.message == (
        "Refused to fetch https://internal.example/...: 'internal.example' resolves to 10.0.0.7, which is private."
    )
    assert resolver.calls == [("internal.example", 443)]


@pytest.mark.parametrize("bad", ["10.0.0.7", "::1", "::ffff:169.254.169.254", "fd00:ec2::254"])
async def test_every_resolved_address_is_checked(bad: str) -> None:
    resolver = FakeResolver({"mixed.example": [PUBLIC_IP, "2606:4700:4700::1111", bad]})
    with pytest.raises(UnsafeURLError, match=re.escape(f"resolves to {ipaddress.ip_address(bad)}, which")):
        await check_url("http://mixed.example:8080/", STRICT, resolver=resolver)
    assert resolver.calls == [("mixed.example", 8080)]


async def test_loopback_names_are_refused_by_default_and_allowed_by_the_setting() -> None:
    resolver = FakeResolver({"localhost": ["127.0.0.1", "::1"]})
    with pytest.raises(UnsafeURLError, match=re.escape("resolves to 127.0.0.1, which is loopback")):
        await check_url("http://localhost/", STRICT, resolver=resolver)
    checked = await check_url("http://localhost/", LOOPBACK, resolver=resolver)
    assert [str(a) for a in checked.addresses] == ["127.0.0.1", "::1"]


async def test_an_unresolvable_name_is_unavailable_not_unsafe() -> None:
    with pytest.raises(ProviderUnavailableError) as caught:
        await check_url("https://gone.example/x", STRICT, resolver=FakeResolver({}), provider="flux")
    assert caught.value.provider == "flux"
    assert "gone.example" in caught.value.message


async def test_real_resolver_does_not_need_the_network_for_ip_literals_and_localhost() -> None:
    assert await resolve_host("127.0.0.1", 80) == [ipaddress.ip_address("127.0.0.1")]
    assert ipaddress.ip_address("127.0.0.1") in await resolve_host("localhost", 80) or (
        ipaddress.ip_address("::1") in await resolve_host("localhost", 80)
    )


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("delivery-eu1.bfl.ai", True),
        ("a.b.bfl.ai", True),
        ("DELIVERY.BFL.AI.", True),
        ("bfl.ai", False),
        ("evilbfl.ai", False),
        ("bfl.ai.evil.com", False),
        ("cdn.example.com", True),
        ("x.cdn.example.com", False),
        ("example.com", False),
    ],
)
def test_host_matches(host: str, allowed: bool) -> None:
    assert host_matches(host, frozenset({"*.bfl.ai", "cdn.example.com"})) is allowed


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://delivery-eu1.bfl.ai/results/a.png?sig=x", None),
        ("https://CDN.Example.com./a.png", None),  # judged as safe_fetch judges it: lower case, no trailing dot
        ("http://cdn.example.com:8443/a.png", None),  # the port is not part of the decision
        ("https://bfl.ai/a.png", "bfl.ai"),  # *.bfl.ai is subdomains only
        ("https://gateway.example.org/a.png", "gateway.example.org"),
        ("https://bücher.example/a.png", "xn--bcher-kva.example"),  # named as the allow-list compares it
        ("https://cdn.example.com:99999/a.png", None),  # malformed: left to safe_fetch to refuse
    ],
)
def test_refused_host_is_the_allow_list_decision(url: str, refused: str | None) -> None:
    policy = FetchPolicy(max_bytes=1, allowed_hosts=frozenset({"*.bfl.ai", "cdn.example.com"}))
    assert refused_host(url, policy) == refused
    assert refused_host(url, FetchPolicy(max_bytes=1)) is None  # no allow-list: no host is refused by name


async def test_refused_host_agrees_with_safe_fetch() -> None:
    policy = FetchPolicy(max_bytes=1, allowed_hosts=frozenset({"*.bfl.ai"}))
    with pytest.raises(UnsafeURLError, match="the host 'gateway.example.org' is not one of the allowed hosts"):
        await check_url("https://gateway.example.org/a.png", policy, resolver=FakeResolver({}))
    assert refused_host("https://gateway.example.org/a.png", policy) == "gateway.example.org"


async def test_allowed_hosts_are_enforced_before_dns() -> None:
    policy = FetchPolicy(max_bytes=10, allowed_hosts=frozenset({"*.bfl.ai"}))
    resolver = FakeResolver({"delivery-eu1.bfl.ai": [PUBLIC_IP]})
    await check_url("https://delivery-eu1.bfl.ai/r/1.png?sig=x", policy, resolver=resolver)
    with pytest.raises(UnsafeURLError, match=r"'evil.example' is not one of the allowed hosts \(\*\.bfl\.ai\)"):
        await check_url("https://evil.example/r/1.png", policy, resolver=resolver)
    assert resolver.calls == [("delivery-eu1.bfl.ai", 443)]


def test_policy_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        FetchPolicy(max_bytes=0)
    with pytest.raises(ValueError, match="max_bytes"):
        FetchPolicy(max_bytes=1, timeout=0)


# --- safe_fetch against a real loopback server ------------------------------------------------------


async def test_fetches_an_image(server: LoopbackServer) -> None:
    fetched = await safe_fetch(server.url("/image.png"), policy=LOOPBACK)
    assert fetched.data == PNG
    assert fetched.content_type == "image/png"
    assert fetched.final_url == server.url("/image.png")
    assert server.requests[0].headers["connection"] == "close"
    assert server.requests[0].headers["accept-encoding"] == "identity"


async def test_loopback_server_is_refused_without_the_setting(server: LoopbackServer) -> None:
    with pytest.raises(UnsafeURLError, match="is loopback"):
        await safe_fetch(server.url("/image.png"), policy=STRICT)
    assert server.requests == []


async def test_connects_to_the_checked_address_and_keeps_the_host_name(server: LoopbackServer) -> None:
    resolver = FakeResolver({"images.test": ["127.0.0.1"]})
    fetched = await safe_fetch(server.url("/echo-host", host="images.test"), policy=LOOPBACK, resolver=resolver)
    assert fetched.data == f"images.test:{server.port}".encode()
    assert fetched.final_url == server.url("/echo-host", host="images.test")
    assert resolver.calls == [("images.test", server.port)]  # one lookup, no second one by the client


async def test_real_dns_for_localhost(server: LoopbackServer) -> None:
    fetched = await safe_fetch(server.url("/echo-host", host="localhost"), policy=LOOPBACK)
    assert fetched.data == f"localhost:{server.port}".encode()


async def test_follows_a_redirect_to_another_loopback_path(server: LoopbackServer) -> None:
    fetched = await safe_fetch(server.url("/redirect?sig=1"), policy=LOOPBACK)
    assert fetched.data == PNG
    assert fetched.final_url == server.url("/image.png")
    assert [r.path for r in server.requests] == ["/redirect", "/image.png"]


async def test_a_redirect_to_a_private_address_is_refused_and_never_connected(server: LoopbackServer) -> None:
    transport = await asyncio.to_thread(RecordingTransport)  # loads the CA bundle: off the loop
    resolver = FakeResolver({})
    async with httpx2.AsyncClient(transport=transport, trust_env=False) as client:
        with pytest.raises(UnsafeURLError) as caught:
            await safe_fetch(server.url("/redirect-private"), policy=LOOPBACK, client=client, resolver=resolver)
    assert caught.value.message == (
        f"Refused to fetch http://10.1.2.3/... (redirected from http://127.0.0.1:{server.port}/...): "
        "the address 10.1.2.3 is private."
    )
    assert "hunter2" not in str(caught.value)
    assert [u.host for u in transport.urls] == ["127.0.0.1"]
    assert resolver.calls == []


async def test_a_redirect_to_a_name_resolving_privately_is_refused(server: LoopbackServer) -> None:
    transport = await asyncio.to_thread(RecordingTransport)  # loads the CA bundle: off the loop
    resolver = FakeResolver({"internal.test": ["10.0.0.7"]})
    async with httpx2.AsyncClient(transport=transport, trust_env=False) as client:
        with pytest.raises(UnsafeURLError, match=re.escape("'internal.test' resolves to 10.0.0.7, which is private")):
            await safe_fetch(server.url("/redirect-name"), policy=LOOPBACK, client=client, resolver=resolver)
    assert resolver.calls == [("internal.test", 80)]
    assert [u.host for u in transport.urls] == ["127.0.0.1"]
    assert len(server.requests) == 1


async def test_a_redirect_loop_stops_after_max_redirects(server: LoopbackServer) -> None:
    with pytest.raises(UnsafeURLError, match="redirected more than 3 times"):
        await safe_fetch(server.url("/loop"), policy=LOOPBACK)
    assert [r.path for r in server.requests] == ["/loop"] * 4


async def test_exactly_max_redirects_is_fine_and_one_more_is_not(server: LoopbackServer) -> None:
    fetched = await safe_fetch(server.url("/chain/2"), policy=LOOPBACK)  # 3 redirects, then the image
    assert fetched.data == PNG
    with pytest.raises(UnsafeURLError, match="more than 3"):
        await safe_fetch(server.url("/chain/3"), policy=LOOPBACK)
    no_redirects = FetchPolicy(max_bytes=10_000, allow_loopback=True, max_redirects=0)
    with pytest.raises(UnsafeURLError, match="more than 0"):
        await safe_fetch(server.url("/redirect"), policy=no_redirects)


async def test_an_endless_body_is_cut_off_early(server: LoopbackServer) -> None:
    small = FetchPolicy(max_bytes=1000, allow_loopback=True, timeout=10)
    with pytest.raises(ImageTooLargeError) as caught:
        await safe_fetch(server.url("/huge-stream"), policy=small)
    assert "1,000 bytes" in caught.value.message
    await asyncio.wait_for(server.stream_stopped.wait(), 5)
    assert server.streamed < 64 * 2**20  # the connection was dropped, not drained to the 256 MiB end


async def test_a_declared_oversize_body_is_refused_before_reading(server: LoopbackServer) -> None:
    small = FetchPolicy(max_bytes=1000, allow_loopback=True, timeout=10)
    started = time.monotonic()
    with pytest.raises(ImageTooLargeError):
        await safe_fetch(server.url("/huge-declared"), policy=small)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("path", "status"), [("/missing?token=abc", 404), ("/broken", 500)])
async def test_error_statuses_are_provider_unavailable(server: LoopbackServer, path: str, status: int) -> None:
    with pytest.raises(ProviderUnavailableError) as caught:
        await safe_fetch(server.url(path), policy=LOOPBACK, provider="flux")
    error = caught.value
    assert error.status_code == status
    assert error.provider == "flux"
    assert error.message == f"Could not fetch http://127.0.0.1:{server.port}/...: the server answered HTTP {status}."
    assert "abc" not in str(error)


async def test_a_slow_server_times_out(server: LoopbackServer) -> None:
    quick = FetchPolicy(max_bytes=1000, allow_loopback=True, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailableError, match="Timed out"):
        await safe_fetch(server.url("/slow"), policy=quick)
    assert time.monotonic() - started < 3


async def test_one_deadline_covers_a_body_that_keeps_dripping(server: LoopbackServer) -> None:
    quick = FetchPolicy(max_bytes=100_000, allow_loopback=True, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(ProviderUnavailableError, match=r"Timed out after 0.5 s fetching http://127.0.0.1"):
        await safe_fetch(server.url("/drip"), policy=quick)
    assert time.monotonic() - started < 3


async def test_a_refused_connection_is_provider_unavailable() -> None:
    srv = LoopbackServer()
    await srv.start()
    await srv.close()  # the port is now closed
    with pytest.raises(ProviderUnavailableError, match=f"Could not fetch http://127.0.0.1:{srv.port}/..."):
        await safe_fetch(srv.url("/image.png"), policy=LOOPBACK)


async def test_an_unboundable_encoding_is_refused(server: LoopbackServer) -> None:
    with pytest.raises(UnsafeURLError, match="encoded as br"):
        await safe_fetch(server.url("/brotli"), policy=LOOPBACK)


async def test_safe_fetch_through_a_proxy_sends_the_name_after_checking_it(server: LoopbackServer) -> None:
    resolver = FakeResolver({"images.test": [PUBLIC_IP], "internal.test": ["10.9.9.9"]})
    proxied = FetchPolicy(max_bytes=10_000, proxy=server.url(""))
    fetched = await safe_fetch("http://images.test/image.png", policy=proxied, resolver=resolver)
    assert fetched.data == PNG
    assert server.requests[0].target == "http://images.test/image.png"  # absolute form: the proxy resolves
    with pytest.raises(UnsafeURLError, match=re.escape("10.9.9.9")):
        await safe_fetch("http://internal.test/image.png", policy=proxied, resolver=resolver)
    assert len(server.requests) == 1
    assert [c[0] for c in resolver.calls] == ["images.test", "internal.test"]


# --- TLS: the pinned connection still verifies the host name ----------------------------------------


async def test_https_to_the_pinned_ip_verifies_the_host_name(
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls_contexts
    srv = LoopbackServer()
    await srv.start(tls=server_ctx)
    resolver = FakeResolver({"images.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    try:
        async with httpx2.AsyncClient(verify=client_ctx, trust_env=False) as client:
            url = srv.url("/echo-host", host="images.test", scheme="https")
            fetched = await safe_fetch(url, policy=LOOPBACK, client=client, resolver=resolver)
            assert fetched.data == f"images.test:{srv.port}".encode()
            assert srv.sni_names == ["images.test"]
            url = srv.url("/echo-host", host="other.test", scheme="https")
            with pytest.raises(ProviderUnavailableError, match="certificate"):
                await safe_fetch(url, policy=LOOPBACK, client=client, resolver=resolver)
    finally:
        await srv.close()
    assert srv.sni_names == ["images.test", "other.test"]  # verified against the name, not 127.0.0.1


# --- wire details with MockTransport ---------------------------------------------------------------


def _mock_client(handler: Callable[[httpx2.Request], httpx2.Response], **kwargs: object) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler), trust_env=False, **kwargs)  # type: ignore[arg-type]


async def test_the_request_goes_to_the_ip_with_host_sni_and_no_client_credentials() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, content=PNG, headers={"Content-Type": "image/png"})

    resolver = FakeResolver({"images.example": [PUBLIC_IP]})
    secrets = {
        "headers": {"Authorization": "Bearer sk-secret"},
        "auth": ("user", "pass"),
        "cookies": {"s": "1"},
    }
    async with _mock_client(handler, **secrets) as client:
        fetched = await safe_fetch(
            "https://images.example/r/1.png?sig=abc", policy=STRICT, client=client, resolver=resolver
        )
    assert fetched.final_url == "https://images.example/r/1.png?sig=abc"
    (request,) = seen
    assert str(request.url) == f"https://{PUBLIC_IP}/r/1.png?sig=abc"
    assert request.headers["host"] == "images.example"
    assert request.extensions["sni_hostname"] == "images.example"
    assert "authorization" not in request.headers
    assert "cookie" not in request.headers


async def test_ipv6_pinning_keeps_port_and_brackets() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, content=b"ok")

    resolver = FakeResolver({"images.example": ["2606:4700:4700::1111"]})
    async with _mock_client(handler) as client:
        await safe_fetch("http://images.example:8080/a", policy=STRICT, client=client, resolver=resolver)
    assert str(seen[0].url) == "http://[2606:4700:4700::1111]:8080/a"
    assert seen[0].headers["host"] == "images.example:8080"
    assert "sni_hostname" not in seen[0].extensions


async def test_a_given_client_is_always_pinned_even_when_the_policy_names_a_proxy() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, content=b"ok")

    resolver = FakeResolver({"images.example": [PUBLIC_IP]})
    proxied = FetchPolicy(max_bytes=100, proxy="http://proxy.invalid:3128")
    async with _mock_client(handler) as client:
        await safe_fetch("http://images.example/a", policy=proxied, client=client, resolver=resolver)
    assert seen[0].url.host == PUBLIC_IP
    assert seen[0].headers["host"] == "images.example"


async def test_falls_back_to_the_next_checked_address_when_one_does_not_connect() -> None:
    hosts: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        hosts.append(request.url.host)
        if request.url.host == PUBLIC_IP:
            raise httpx2.ConnectError("unreachable", request=request)
        return httpx2.Response(200, content=b"ok")

    resolver = FakeResolver({"images.example": [PUBLIC_IP, "93.184.216.35"]})
    async with _mock_client(handler) as client:
        fetched = await safe_fetch("http://images.example/a", policy=STRICT, client=client, resolver=resolver)
    assert fetched.data == b"ok"
    assert hosts == [PUBLIC_IP, "93.184.216.35"]


async def test_connection_failure_on_every_address_names_provider_and_host() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("Connection refused", request=request)

    resolver = FakeResolver({"images.example": [PUBLIC_IP]})
    async with _mock_client(handler) as client:
        with pytest.raises(ProviderUnavailableError) as caught:
            await safe_fetch(
                "http://images.example/a?k=v", policy=STRICT, client=client, resolver=resolver, provider="mcp"
            )
    assert caught.value.message == "Could not fetch http://images.example/...: Connection refused"
    assert caught.value.provider == "mcp"
    assert isinstance(caught.value.__cause__, httpx2.ConnectError)


async def test_a_redirect_without_location_is_unavailable() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(302)

    resolver = FakeResolver({"images.example": [PUBLIC_IP]})
    async with _mock_client(handler) as client:
        with pytest.raises(ProviderUnavailableError, match="HTTP 302 without a Location"):
            await safe_fetch("http://images.example/a", policy=STRICT, client=client, resolver=resolver)


async def test_a_declared_oversize_body_from_a_mock() -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"Content-Length": "5000"}, content=b"x" * 5000)

    resolver = FakeResolver({"images.example": [PUBLIC_IP]})
    async with _mock_client(handler) as client:
        with pytest.raises(ImageTooLargeError, match=re.escape("http://images.example/...")):
            await safe_fetch(
                "http://images.example/a",
                policy=FetchPolicy(max_bytes=4999),
                client=client,
                resolver=resolver,
            )
        fetched = await safe_fetch(
            "http://images.example/a", policy=FetchPolicy(max_bytes=5000), client=client, resolver=resolver
        )
    assert len(fetched.data) == 5000


async def test_a_client_that_trusts_the_environment_or_follows_redirects_is_rejected() -> None:
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: httpx2.Response(200))) as client:
        with pytest.raises(ValueError, match="trust_env=False"):
            await safe_fetch("http://images.example/a", policy=STRICT, client=client)
    async with _mock_client(lambda r: httpx2.Response(200), follow_redirects=True) as client:
        with pytest.raises(ValueError, match="follow_redirects=False"):
            await safe_fetch("http://images.example/a", policy=STRICT, client=client)


# --- create_http_client ------------------------------------------------------------------------------


async def test_client_factory_applies_timeouts_limits_and_headers() -> None:
    # Building a client reads the CA bundle from disk, so tests (like the lifespan) do it off the loop.
    async with await asyncio.to_thread(create_http_client) as client:
        assert client.timeout == httpx2.Timeout(120.0, connect=10.0)
        assert client.trust_env is False
        assert client.follow_redirects is False
    client = await asyncio.to_thread(
        functools.partial(create_http_client, timeout=7, connect_timeout=2, max_connections=5, headers={"X-Test": "1"})
    )
    async with client:
        assert client.timeout == httpx2.Timeout(7, connect=2)
        assert client.headers["x-test"] == "1"
        assert client._transport._pool._max_connections == 5  # type: ignore[attr-defined]  # no public view
    assert client.is_closed


async def test_client_factory_routes_through_the_proxy(server: LoopbackServer) -> None:
    async with await asyncio.to_thread(functools.partial(create_http_client, proxy=server.url(""))) as client:
        response = await client.get("http://upstream.invalid/echo-host")
    assert response.text == "upstream.invalid"
    assert server.requests[0].target == "http://upstream.invalid/echo-host"
    assert client.is_closed


async def test_client_factory_ignores_proxy_environment(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with await asyncio.to_thread(create_http_client) as client:
        response = await client.get(server.url("/image.png"))
    assert response.content == PNG
    assert server.requests[0].target == "/image.png"
