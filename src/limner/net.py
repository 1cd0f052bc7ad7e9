"""Outbound HTTP: the one client factory for upstreams, and the one safe fetcher for outside URLs.

Boundary: this adapter knows nothing of images, owners or backends. It builds clients
(:func:`create_http_client`) and fetches URLs that came from outside limner (provider result links, MCP
results, user input) with :func:`safe_fetch`, refusing anything that could reach inside the host's
network (SSRF). Refusals are :class:`~limner.errors.UnsafeURLError`; an upstream that fails is a
:class:`~limner.errors.ProviderUnavailableError`; a body over the cap is an
:class:`~limner.errors.ImageTooLargeError`. Messages name the scheme and host only: paths and query strings
of signed links carry secrets.

How a fetch stays on the address that was checked: the host name is resolved once (off the event loop),
every address is checked, and the request is sent to the checked IP with the original ``Host`` header;
for https the ``sni_hostname`` request extension makes httpcore2 send SNI for, and verify the certificate
against, the host name rather than the IP. No second DNS lookup happens, so DNS rebinding between the
check and the connection cannot redirect us. Every redirect is a new URL and goes through the same checks.

Trade-off with a proxy (``FetchPolicy.proxy``, LibreChat's ``PROXY``): the name is still resolved and
checked locally, but the request goes to the proxy by name and the proxy resolves it again. A name that
changes its answer between the two lookups could reach what the proxy can reach, so the proxy must
refuse internal destinations itself. We do not send the IP to the proxy because proxies commonly filter
by host name, and the operator's egress policy belongs there. This applies only to the client
``safe_fetch`` builds from the policy; a client passed in is always sent the checked IP (if it has a
proxy, the proxy receives the IP), because we cannot see whether it has one.

Residual limits, known and accepted: a client passed in by the caller must speak HTTP/1.1 (the factory's
default) because every request carries ``Connection: close`` so that a TLS connection verified for one
name is never reused for another name on the same IP; the passed client's cookie jar may collect cookies
keyed by IP, which are never sent back because requests here are built without the client's defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeAlias

import httpx2
import idna

from limner.errors import ImageTooLargeError, ProviderUnavailableError, UnsafeURLError, redact

__all__ = [
    "CheckedURL",
    "FetchPolicy",
    "FetchedContent",
    "IPAddress",
    "Resolver",
    "address_refusal",
    "check_url",
    "create_http_client",
    "host_matches",
    "is_public_address",
    "refused_host",
    "resolve_host",
    "safe_fetch",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver: TypeAlias = Callable[[str, int], Awaitable[Sequence[IPAddress]]]


def create_http_client(
    *,
    timeout: float = 120.0,
    connect_timeout: float = 10.0,
    proxy: str | None = None,
    max_connections: int = 100,
    headers: Mapping[str, str] | None = None,
) -> httpx2.AsyncClient:
    """Build the client every upstream call goes through: explicit timeouts, limits and proxy.

    ``trust_env=False`` because settings are explicit: ``HTTP(S)_PROXY``/``NO_PROXY``, ``SSL_CERT_*`` and
    ``.netrc`` in the process environment would otherwise silently change where requests go, which
    certificates are trusted and which credentials are sent to which host. The operator's proxy arrives
    as ``proxy`` (LibreChat's ``PROXY``). Redirects are never followed automatically: ``safe_fetch``
    re-checks every hop, and API calls have no business being redirected.

    Careful: building a client loads the CA bundle from disk (tens of milliseconds). Call this at
    startup, or through ``asyncio.to_thread`` when on the event loop.
    """
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(timeout, connect=connect_timeout),
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=min(20, max_connections)),
        proxy=proxy,
        headers=dict(headers) if headers else None,
        follow_redirects=False,
        trust_env=False,
    )


@dataclass(frozen=True)
class FetchPolicy:
    """What one kind of outside URL may be fetched from, and how much of it.

    ``allow_loopback`` permits loopback addresses only (the sandbox and tests); private, link-local and
    metadata addresses stay refused whatever it says. ``allowed_hosts`` narrows further: exact host names
    or ``*.suffix`` patterns (which match any depth of subdomain, not the bare suffix). ``timeout`` covers
    the whole fetch, DNS and redirects included.
    """

    max_bytes: int
    allowed_schemes: frozenset[str] = frozenset({"https", "http"})
    allow_loopback: bool = False
    allowed_hosts: frozenset[str] | None = None
    max_redirects: int = 3
    timeout: float = 30.0
    proxy: str | None = None

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_redirects < 0 or self.timeout <= 0:
            raise ValueError("FetchPolicy needs max_bytes > 0, max_redirects >= 0 and timeout > 0.")


@dataclass(frozen=True)
class FetchedContent:
    """The body of a successful fetch; ``final_url`` is the URL after redirects (by name, not IP)."""

    data: bytes
    content_type: str | None
    final_url: str


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed every check, with the addresses it may be connected to."""

    url: httpx2.URL
    host: str
    addresses: tuple[IPAddress, ...]


# --- address classification ----------------------------------------------------------------------

_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
        "169.254.170.2",  # AWS ECS task credentials
        "168.63.129.16",  # Azure WireServer: a public address, so only this entry refuses it
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud Classic
        "fd00:ec2::254",  # AWS IPv6
        "fd20:ce::254",  # GCP IPv6
    )
)


def _networks(
    *pairs: tuple[str, str],
) -> tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in pairs)


_REFUSED_NETWORKS = _networks(
    ("0.0.0.0/8", "unspecified ('this network', 0.0.0.0/8)"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "in the shared CGNAT range 100.64.0.0/10"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved for IETF protocol assignments"),
    ("192.0.2.0/24", "reserved for documentation"),
    ("192.88.99.0/24", "a 6to4 relay anycast address"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved for benchmarking"),
    ("198.51.100.0/24", "reserved for documentation"),
    ("203.0.113.0/24", "reserved for documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::/96", "a deprecated IPv4-compatible IPv6 address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001::/32", "a Teredo tunnel address"),
    ("2001::/23", "reserved for IETF protocol assignments"),
    ("2001:db8::/32", "reserved for documentation"),
    ("3fff::/20", "reserved for documentation"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_ISATAP_INTERFACE_IDS = (b"\x00\x00\x5e\xfe", b"\x02\x00\x5e\xfe")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 transition form delivers to, so that it is judged by that address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64_WELL_KNOWN or address.packed[8:12] in _ISATAP_INTERFACE_IDS:
        return ipaddress.IPv4Address(address.packed[12:])
    return None


def address_refusal(ip: str | IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why ``ip`` may not be fetched from (a phrase completing "the address ... is"), or None if it may.

    IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64, ISATAP) are judged by that IPv4 address.
    The standard library's own flags are consulted last, as a second net for ranges not listed here.
    """
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (interface-specific) IPv6 address"
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = address_refusal(embedded, allow_loopback=allow_loopback)
            return None if inner is None else f"an IPv6 form of {embedded}, which is {inner}"
    if address.is_loopback:
        return None if allow_loopback else "loopback"
    for network, reason in _REFUSED_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    if not address.is_global or address.is_reserved or address.is_multicast:
        return "not a public internet address"
    return None


def is_public_address(ip: str | IPAddress) -> bool:
    """True when ``ip`` is an ordinary public internet address (loopback is never public here)."""
    return address_refusal(ip) is None


# --- URL checks ----------------------------------------------------------------------------------

_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_MAX_PORT = 65535
_ADDRESS_HINT = "Only public internet addresses can be fetched; upload the image instead, or use a public link."


def _display(url: httpx2.URL) -> str:
    """The URL as messages may show it: scheme and host only, since paths and queries carry secrets."""
    if not url.netloc:
        return f"{url.scheme}:..."
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}/..."


def _refused(where: str, why: str, hint: str, via: str | None = None) -> UnsafeURLError:
    origin = f" (redirected from {via})" if via else ""
    return UnsafeURLError(f"Refused to fetch {where}{origin}: {why}.", hint=hint)


def _malformed(reason: str) -> UnsafeURLError:
    return UnsafeURLError(f"Refused to fetch a malformed URL ({redact(reason, limit=120)}).", hint="Check the link.")


def _parse(url: str | httpx2.URL) -> httpx2.URL:
    """Parse ``url`` completely, so that nothing malformed reaches the resolver or the connector.

    httpx2's parser leaves some things to the socket layer: a port above 65535 (which then fails inside
    anyio's happy-eyeballs task group as a bare ``ExceptionGroup``), port 0, and ASCII ``xn--`` labels
    that are not valid punycode. They are refused here, as :class:`UnsafeURLError`, like any other
    malformed URL; so is any other exception the parser raises (``ValueError``, ``UnicodeError``).
    """
    try:
        parsed = url if isinstance(url, httpx2.URL) else httpx2.URL(url)
        port = parsed.port
        host = parsed.raw_host.decode("ascii")
    except httpx2.InvalidURL as exc:
        raise _malformed(str(exc)) from exc
    except (ValueError, TypeError) as exc:  # UnicodeError is a ValueError
        raise _malformed(type(exc).__name__) from exc
    if port is not None and not 0 < port <= _MAX_PORT:
        raise _malformed(f"the port {port} is outside 1-{_MAX_PORT}")
    for label in host.lower().rstrip(".").split("."):
        if label.startswith("xn--"):
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError) as exc:
                raise _malformed(f"the host label {label[:63]!r} is not valid IDNA") from exc
    return parsed.copy_with(fragment=None)


def host_matches(host: str, patterns: frozenset[str]) -> bool:
    """Whether ``host`` is one of ``patterns``: exact names, or ``*.suffix`` for any subdomain of suffix."""
    host = host.lower().rstrip(".")
    for pattern in (p.lower().rstrip(".") for p in patterns):
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def _host_of(url: httpx2.URL) -> str:
    """The host as the allow-list sees it: IDNA (punycode) form, lower case, no trailing dot."""
    host = url.raw_host.decode("ascii", "replace").lower()
    return host[:-1] if host.endswith(".") else host


def _is_allowed(host: str, policy: FetchPolicy) -> bool:
    return policy.allowed_hosts is None or host_matches(host, policy.allowed_hosts)


def refused_host(url: str, policy: FetchPolicy) -> str | None:
    """The host of ``url`` when ``policy``'s allow-list would refuse it, else None.

    For callers that explain that one refusal in their own terms (which setting admits the host) before
    :func:`safe_fetch` enforces it; a URL too malformed to have a host is left to :func:`safe_fetch`.
    """
    try:
        host = _host_of(_parse(url))
    except UnsafeURLError:
        return None
    return host if host and not _is_allowed(host, policy) else None


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _checked_host(url: httpx2.URL, policy: FetchPolicy, where: str, via: str | None) -> str:
    """The host name to resolve (IDNA form, no trailing dot), after the syntax and allow-list checks."""
    scheme = url.scheme.lower()
    if scheme not in policy.allowed_schemes:
        allowed = ", ".join(sorted(policy.allowed_schemes))
        raise _refused(where, f"the scheme '{scheme}' is not allowed (allowed: {allowed})", "Use an http(s) link.", via)
    if url.userinfo:
        raise _refused(where, "the URL carries a user name or password", "Remove the credentials.", via)
    host = _host_of(url)
    if not host:
        raise _refused(where, "the URL has no host", "Check the link.", via)
    if _ip_literal(host) is None:
        if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
            raise _refused(
                where,
                f"the host '{host}' is a non-standard numeric address form",
                "Write an IPv4 address as four decimal numbers, or use a host name.",
                via,
            )
        if not _HOSTNAME.fullmatch(host) or len(host) > 253:
            raise _refused(where, f"'{host}' is not a valid host name", "Check the link.", via)
    if not _is_allowed(host, policy):
        allowed = ", ".join(sorted(policy.allowed_hosts or ()))
        raise _refused(
            where,
            f"the host '{host}' is not one of the allowed hosts ({allowed})",
            "Only links from the expected service can be fetched.",
            via,
        )
    return host


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Resolve ``host`` without blocking the event loop (getaddrinfo runs in the loop's executor).

    Raises :class:`socket.gaierror` when the name does not resolve; duplicates are dropped, order kept.
    """
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0])) for info in infos))


async def _addresses(host: str, port: int, resolver: Resolver, where: str, provider: str) -> list[IPAddress]:
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    unresolved = ProviderUnavailableError(
        f"Could not fetch {where}: the host name '{host}' does not resolve.",
        provider=provider,
        endpoint=where,
        hint="Check the link; the host may be gone or DNS may be down.",
    )
    try:
        addresses = list(await resolver(host, port))
    except (OSError, ValueError) as exc:  # gaierror, or a name the resolver's IDNA codec refuses
        raise unresolved from exc
    if not addresses:
        raise unresolved
    return addresses


async def _check(
    url: str | httpx2.URL, policy: FetchPolicy, resolver: Resolver, provider: str, via: str | None
) -> CheckedURL:
    parsed = _parse(url)
    where = _display(parsed)
    host = _checked_host(parsed, policy, where, via)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await _addresses(host, port, resolver, where, provider)
    named = _ip_literal(host) is None
    for address in addresses:
        refusal = address_refusal(address, allow_loopback=policy.allow_loopback)
        if refusal is not None:
            subject = f"'{host}' resolves to {address}, which" if named else f"the address {host}"
            raise _refused(where, f"{subject} is {refusal}", _ADDRESS_HINT, via)
    return CheckedURL(url=parsed, host=host, addresses=tuple(addresses))


async def check_url(
    url: str | httpx2.URL, policy: FetchPolicy, *, resolver: Resolver = resolve_host, provider: str = "url"
) -> CheckedURL:
    """Check scheme, credentials, host syntax, allow-list and every resolved address of ``url``.

    Raises :class:`UnsafeURLError` for a refusal and :class:`ProviderUnavailableError` (naming
    ``provider``) when the name does not resolve. Does not connect anywhere.
    """
    return await _check(url, policy, resolver, provider, None)


# --- fetching ------------------------------------------------------------------------------------

# ``Connection: close`` keeps a TLS connection verified for one name from being reused for another name
# that resolves to the same IP (the pool keys connections by the IP we connect to). ``identity`` asks for
# bytes we can count as they arrive.
_REQUEST_HEADERS = {
    "Accept": "image/*, */*;q=0.8",
    "Accept-Encoding": "identity",
    "Connection": "close",
    "User-Agent": "limner",
}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_BOUNDED_ENCODINGS = frozenset({"identity", "gzip"})


def _build_request(checked: CheckedURL, address: IPAddress | None) -> httpx2.Request:
    """A request to ``address`` that still names the host (Host header, SNI, certificate check)."""
    headers = dict(_REQUEST_HEADERS)
    if address is None:  # through the proxy, by name: see the module docstring
        return httpx2.Request("GET", checked.url, headers=headers)
    headers["Host"] = checked.url.netloc.decode("ascii")
    extensions = {"sni_hostname": checked.host} if checked.url.scheme == "https" else {}
    pinned = checked.url.copy_with(host=str(address))
    return httpx2.Request("GET", pinned, headers=headers, extensions=extensions)


async def _send(checked: CheckedURL, policy: FetchPolicy, client: httpx2.AsyncClient) -> httpx2.Response:
    """Send to the checked addresses in order, moving on only when one cannot be connected to."""
    targets: list[IPAddress | None] = [None] if policy.proxy else list(checked.addresses)
    *fallbacks, last = targets
    for address in fallbacks:
        with contextlib.suppress(httpx2.ConnectError):
            return await _send_one(client, _build_request(checked, address))
    return await _send_one(client, _build_request(checked, last))


async def _send_one(client: httpx2.AsyncClient, request: httpx2.Request) -> httpx2.Response:
    # auth=None: a shared backend client's credentials must never reach an outside URL.
    return await client.send(request, stream=True, auth=None, follow_redirects=False)


@contextlib.contextmanager
def _upstream_errors(where: str, provider: str) -> Iterator[None]:
    """Translate the HTTP client's failures into the one error callers handle, naming only the host."""
    try:
        yield
    except httpx2.TimeoutException as exc:
        raise ProviderUnavailableError(
            f"Timed out fetching {where}.",
            provider=provider,
            endpoint=where,
            hint="The server is slow or unreachable; try again later.",
        ) from exc
    except httpx2.RequestError as exc:
        detail = redact(str(exc) or type(exc).__name__, limit=200)
        raise ProviderUnavailableError(
            f"Could not fetch {where}: {detail}",
            provider=provider,
            endpoint=where,
            hint="The server could not be reached or broke the connection; try again later.",
        ) from exc
    except (OSError, ValueError, ArithmeticError, ExceptionGroup) as exc:
        # What the connector can let through unmapped: anyio's happy-eyeballs task group raises an
        # ExceptionGroup when a connection attempt fails with anything but OSError, and the socket layer
        # raises OverflowError (an ArithmeticError) or ValueError for arguments it refuses. _parse refuses
        # every such URL it knows of first; this keeps the promise for the ones nobody has found yet.
        raise _connector_error(where, provider, exc) from exc


def _connector_error(where: str, provider: str, exc: BaseException) -> ProviderUnavailableError:
    causes = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
    detail = "; ".join(dict.fromkeys(redact(str(cause) or type(cause).__name__, limit=100) for cause in causes))
    return ProviderUnavailableError(
        f"Could not connect to {where}: {detail}",
        provider=provider,
        endpoint=where,
        hint="The server could not be reached; check the link, or try again later.",
    )


def _status_error(response: httpx2.Response, where: str, provider: str) -> ProviderUnavailableError:
    status = response.status_code
    hint = (
        "The server failed; try again later."
        if status >= 500
        else "Check that the link is right and still valid; signed links expire."
    )
    return ProviderUnavailableError(
        f"Could not fetch {where}: the server answered HTTP {status}.",
        provider=provider,
        endpoint=where,
        status_code=status,
        hint=hint,
    )


def _redirect_target(response: httpx2.Response, checked: CheckedURL, provider: str) -> httpx2.URL:
    where = _display(checked.url)
    location = response.headers.get("location")
    if not location:
        raise ProviderUnavailableError(
            f"Could not fetch {where}: it answered HTTP {response.status_code} without a Location.",
            provider=provider,
            endpoint=where,
            status_code=response.status_code,
        )
    try:
        return checked.url.join(location).copy_with(fragment=None)
    except httpx2.InvalidURL as exc:
        raise _refused(where, "it redirected to a malformed URL", "Check the link.") from exc


def _too_large(where: str, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"The file at {where} is larger than the limit of {limit:,} bytes.",
        hint="Use a smaller image, or ask the operator to raise the size limit.",
    )


async def _read_capped(response: httpx2.Response, limit: int, where: str) -> bytes:
    """Read the body, stopping (and so dropping the connection) as soon as it passes ``limit``."""
    encodings = {e.strip().lower() for e in response.headers.get("content-encoding", "").split(",")} - {""}
    if not encodings <= _BOUNDED_ENCODINGS:
        why = f"the body is encoded as {', '.join(sorted(encodings))}, which cannot be capped while streaming"
        raise _refused(where, why, "Use a link that serves the file as is.")
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(where, limit)
    body = bytearray()
    async for chunk in response.aiter_bytes():
        if len(body) + len(chunk) > limit:
            raise _too_large(where, limit)
        body += chunk
    return bytes(body)


async def _fetch_once(
    checked: CheckedURL, policy: FetchPolicy, client: httpx2.AsyncClient, provider: str
) -> FetchedContent | httpx2.URL:
    """One hop: the content, or the next URL to check when the answer is a redirect."""
    where = _display(checked.url)
    with _upstream_errors(where, provider):
        response = await _send(checked, policy, client)
        try:
            if response.status_code in _REDIRECT_STATUSES:
                return _redirect_target(response, checked, provider)
            if not response.is_success:
                raise _status_error(response, where, provider)
            data = await _read_capped(response, policy.max_bytes, where)
        finally:
            await response.aclose()
    content_type = response.headers.get("content-type")
    return FetchedContent(data=data, content_type=content_type, final_url=str(checked.url))


async def _follow(
    url: str, policy: FetchPolicy, client: httpx2.AsyncClient, provider: str, resolver: Resolver
) -> FetchedContent:
    """Fetch ``url``, following at most ``max_redirects`` redirects, each checked as a new URL."""
    target: str | httpx2.URL = url
    via: str | None = None
    for _hop in range(policy.max_redirects + 1):
        checked = await _check(target, policy, resolver, provider, via)
        outcome = await _fetch_once(checked, policy, client, provider)
        if isinstance(outcome, FetchedContent):
            return outcome
        target, via = outcome, _display(checked.url)
    raise _refused(
        _display(_parse(url)),
        f"it redirected more than {policy.max_redirects} times",
        "The link may be looping; use the final link directly.",
    )


async def _fetch_in_time(
    url: str, policy: FetchPolicy, client: httpx2.AsyncClient, provider: str, resolver: Resolver
) -> FetchedContent:
    """Run the whole fetch (DNS, every hop, the body) under one deadline."""
    try:
        async with asyncio.timeout(policy.timeout):
            return await _follow(url, policy, client, provider, resolver)
    except TimeoutError as exc:
        where = _display(_parse(url))
        raise ProviderUnavailableError(
            f"Timed out after {policy.timeout:g} s fetching {where}.",
            provider=provider,
            endpoint=where,
            hint="The server is slow or unreachable; try again later.",
        ) from exc


async def safe_fetch(
    url: str,
    *,
    policy: FetchPolicy,
    client: httpx2.AsyncClient | None = None,
    provider: str = "url",
    resolver: Resolver = resolve_host,
) -> FetchedContent:
    """Fetch a URL that came from outside, refusing anything that could reach inside (DESIGN §11).

    Raises :class:`UnsafeURLError` for a refused URL or redirect, :class:`ImageTooLargeError` past
    ``policy.max_bytes``, and :class:`ProviderUnavailableError` (naming ``provider``) for timeouts,
    connection failures and non-2xx answers. A given ``client`` must have ``trust_env=False`` and
    ``follow_redirects=False`` and speak HTTP/1.1 (as :func:`create_http_client` builds them); without
    one, a client is built for this call (with ``policy.proxy``) and closed after it. ``resolver`` is the
    DNS seam for tests.
    """
    if client is not None:
        if client.trust_env or client.follow_redirects:
            raise ValueError("safe_fetch needs a client with trust_env=False and follow_redirects=False.")
        # We cannot see a given client's proxy, so its requests are always pinned to the checked IP:
        # sending a name to a client without a proxy would let it resolve the name again.
        return await _fetch_in_time(url, replace(policy, proxy=None), client, provider, resolver)
    owned = await asyncio.to_thread(create_http_client, timeout=policy.timeout, proxy=policy.proxy)
    async with owned:
        return await _fetch_in_time(url, policy, owned, provider, resolver)
