"""Fetching image URLs that remote callers hand us, without letting them reach what the server can reach.

Only http(s). The host is resolved once and every address it resolves to is checked (loopback, private,
link-local, CGNAT, unspecified, multicast, reserved, the cloud metadata addresses, and IPv4 hidden in IPv6
forms); the connection goes to the vetted address itself, so DNS cannot switch it between check and
connect, while the Host header, TLS SNI and certificate check still use the URL's host name. Redirects are
followed here, each hop checked the same way. The body is capped (Content-Length and the bytes actually
read), and one deadline covers the whole fetch: DNS, connects, TLS, every redirect and every read.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import threading
import time
import typing
import zlib
from collections.abc import Iterable, Sequence

import httpcore
import httpx

from retllm.errors import BadItemError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
MAX_URL_BYTES = 50 * 2**20
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPAT = ipaddress.ip_network("::/96")

# Kinds that RETLLM_ALLOW_PRIVATE_URLS lets through; the others need an explicit allowed network.
_PRIVATE_KINDS = frozenset(
    {"a loopback address", "a private address", "a link-local address", "a shared (CGNAT) address"}
)
_CODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}  # zlib wbits; we ask for identity, some servers compress anyway


def parse_networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR networks or single addresses (``"10.1.2.0/24"``, ``"127.0.0.1"``); ``ValueError`` names a bad one."""
    out = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v.strip(), strict=False))
        except ValueError as e:
            raise ValueError(f"{v!r} is not an IP network (a CIDR like 10.1.2.0/24, or one address)") from e
    return tuple(out)


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64), which is where it leads."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in n for n in _NAT64) or (ip in _IPV4_COMPAT and int(ip) > 1):  # ::/96 less :: and ::1
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address ("a loopback address", ...), or None for a public one."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified or ip in _THIS_NETWORK:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip in _CGNAT:
        return "a shared (CGNAT) address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local):
        return "a private address"
    if not ip.is_global:
        return "a non-public address"
    return None


def address_problem(
    ip: IPAddress, *, allow_private: bool = False, allowed_networks: Sequence[IPNetwork] = (), host: str | None = None
) -> str | None:
    """Why a fetch may not connect to ``ip`` (with the setting that would allow it), or None when it may.

    ``host``: the name that resolved to ``ip``, for the message (None when the URL gave the address itself).
    """
    inner = embedded_ipv4(ip)
    target = inner or ip
    shown = f"{ip} (IPv4 {inner})" if inner else str(ip)
    shown = f"{host} resolves to {shown}, which" if host else shown
    kind = address_kind(target)
    if kind is None:
        return None
    if kind == "a cloud metadata address":  # only an allowed network that is this one address lets it through
        if any(n.num_addresses == 1 and n.network_address == target for n in allowed_networks):
            return None
        return (
            f"{shown} is {kind} (refused even with RETLLM_ALLOW_PRIVATE_URLS; "
            "list this exact address in RETLLM_ALLOWED_URL_NETWORKS to allow)"
        )
    if any(target in n or ip in n for n in allowed_networks):
        return None
    if kind in _PRIVATE_KINDS:
        if allow_private:
            return None
        how = "set RETLLM_ALLOW_PRIVATE_URLS=true or add it to RETLLM_ALLOWED_URL_NETWORKS to allow"
    else:
        how = "add it to RETLLM_ALLOWED_URL_NETWORKS to allow"
    return f"{shown} is {kind} ({how})"


class _Failure(Exception):
    """A fetch failed for a reason the caller reports with the URL (internal; becomes BadItemError)."""


class _Deadline:
    """The one deadline of a fetch: every network step gets the time left, or times out."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, exc: type[Exception] = httpcore.ReadTimeout) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise exc(f"the {self.seconds:g} s deadline has passed")
        return remaining

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.end


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int, deadline: _Deadline) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal as itself), looked up within the deadline."""
    if _is_ip(host):
        return [ipaddress.ip_address(host)]
    # getaddrinfo has no timeout of its own: it runs in a daemon thread that we stop waiting for at the deadline.
    box: list[object] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as e:
            box.append(e)
        done.set()

    threading.Thread(target=lookup, name="retllm-url-dns", daemon=True).start()
    if not done.wait(deadline.left(httpcore.ConnectTimeout)):
        raise httpcore.ConnectTimeout(f"looking up {host} took too long")
    result = box[0]
    if isinstance(result, BaseException):
        raise _Failure(f"URL unreachable (host not found: {host})") from result
    out: list[IPAddress] = []
    for *_, sockaddr in typing.cast("list[tuple[typing.Any, ...]]", result):
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in out:
            out.append(ip)
    if not out:
        raise _Failure(f"URL unreachable (host not found: {host})")
    return out


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads, writes and TLS handshake each get only the time left."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self.inner = inner
        self.deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.left(httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.left(httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = self.deadline.left(httpcore.ConnectTimeout)
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, left), self.deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self.inner.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's network layer for one fetch: resolve, check every address, connect to a checked address.

    httpcore hands us the URL's host name; TLS then runs against that name (SNI, certificate), while the
    socket goes to the address we checked: there is no second lookup that DNS rebinding could answer.
    """

    def __init__(self, deadline: _Deadline, *, allow_private: bool, allowed_networks: Sequence[IPNetwork]) -> None:
        self.deadline = deadline
        self.allow_private = allow_private
        self.allowed_networks = allowed_networks
        self.sync = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _resolve(host, port, self.deadline)
        name = None if _is_ip(host) else host
        for ip in addresses:  # all of them: a name with one private address among public ones is refused
            problem = address_problem(
                ip, allow_private=self.allow_private, allowed_networks=self.allowed_networks, host=name
            )
            if problem:
                raise _Failure(f"URL refused: {problem}")
        error: Exception | None = None
        for ip in addresses:  # the first that answers (a host may publish an address family we cannot reach)
            try:
                stream = self.sync.connect_tcp(
                    str(ip),
                    port,
                    timeout=self.deadline.left(httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as e:
                error = e
                continue
            return _DeadlineStream(stream, self.deadline)
        assert error is not None
        raise error

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[typing.Any] | None = None
    ) -> httpcore.NetworkStream:
        raise _Failure("URL refused: unix sockets are never fetched")


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()  # certifi's roots, as httpx.get used


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n:,} bytes"


def _header(resp: httpcore.Response, name: bytes) -> str | None:
    for k, v in resp.headers:
        if k.lower() == name:
            return v.decode("latin-1").strip()
    return None


def _read_body(resp: httpcore.Response, max_bytes: int) -> bytes:
    """The body, refused as soon as it passes ``max_bytes`` (never more than that plus one chunk in memory)."""
    too_large = _Failure(f"URL body over the {_size(max_bytes)} limit (RETLLM_MAX_URL_BYTES)")
    length = _header(resp, b"content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise too_large
    coding = (_header(resp, b"content-encoding") or "identity").lower()
    if coding not in _CODINGS and coding != "identity":
        raise _Failure(f"URL body has an unsupported Content-Encoding {coding!r}")
    decoder = zlib.decompressobj(_CODINGS[coding]) if coding in _CODINGS else None
    chunks: list[bytes] = []
    n = 0
    try:
        for raw in resp.iter_stream():
            # Decompressing at most one byte past the limit: a small compressed chunk cannot blow up memory.
            chunk = decoder.decompress(raw, max_bytes - n + 1) if decoder else raw
            n += len(chunk)
            if n > max_bytes:
                raise too_large
            chunks.append(chunk)
        if decoder:
            chunk = decoder.flush()
            if n + len(chunk) > max_bytes:
                raise too_large
            chunks.append(chunk)
    except zlib.error as e:
        raise _Failure(f"URL body is corrupt {coding} data") from e
    return b"".join(chunks)


def _request_url(url: httpx.URL) -> httpcore.URL:
    return httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)


def fetch_url(
    url: str,
    *,
    timeout: float = 10.0,
    max_bytes: int = MAX_URL_BYTES,
    allow_private: bool = False,
    allowed_networks: Sequence[IPNetwork] = (),
    ssl_context: ssl.SSLContext | None = None,
    where: str | None = None,
) -> bytes:
    """The body of an http(s) URL, or :class:`BadItemError` saying why not (refused address, too large, slow, ...).

    Args:
        url: An http or https URL.
        timeout: Seconds for the whole fetch: DNS, connects, TLS, redirects and the body together.
        max_bytes: Larger bodies are refused (by Content-Length, or once the bytes read pass it).
        allow_private: Allow loopback, private, link-local and CGNAT addresses (never the metadata ones).
        allowed_networks: Networks allowed even though not public (a single metadata address must be
            listed as itself to be allowed).
        ssl_context: Certificates to trust (default: certifi's, as httpx uses).
        where: The URL as error messages show it (default: ``url``).
    """
    hops = [url]
    deadline = _Deadline(timeout)
    backend = _GuardedBackend(deadline, allow_private=allow_private, allowed_networks=tuple(allowed_networks))
    pool = httpcore.ConnectionPool(ssl_context=ssl_context or _default_ssl_context(), network_backend=backend)

    def at() -> str:
        shown = where or url
        return shown if len(hops) == 1 else f"{hops[-1][:200]} (redirected from {shown})"

    try:
        with pool:
            while True:
                current = httpx.URL(hops[-1])
                if current.scheme not in ("http", "https"):
                    raise _Failure("only http(s) URLs are fetched")
                if not current.host:
                    raise _Failure("URL has no host")
                headers = [(b"Host", current.netloc), (b"Accept-Encoding", b"identity"), (b"User-Agent", b"retllm")]
                with pool.stream("GET", _request_url(current), headers=headers) as resp:
                    location = _header(resp, b"location")
                    if resp.status in REDIRECT_STATUSES and location:
                        if len(hops) > MAX_REDIRECTS:
                            raise _Failure(f"URL redirected more than {MAX_REDIRECTS} times")
                        hops.append(str(current.join(location)))
                        continue
                    if not 200 <= resp.status < 300:
                        raise _Failure(f"URL returned HTTP {resp.status}")
                    return _read_body(resp, max_bytes)
    except _Failure as e:
        raise BadItemError(f"{e}: {at()}") from e
    except httpx.InvalidURL as e:
        raise BadItemError(f"invalid URL ({e}): {at()}") from e
    except httpcore.TimeoutException as e:
        if deadline.passed:
            raise BadItemError(f"URL took longer than {timeout:g} s (RETLLM_URL_TIMEOUT): {at()}") from e
        raise BadItemError(f"URL unreachable ({type(e).__name__}): {at()}") from e
    except (httpcore.ConnectError, httpcore.UnsupportedProtocol) as e:  # refused, no route, a bad certificate
        raise BadItemError(f"URL unreachable ({type(e).__name__}: {e}): {at()}") from e
    except (httpcore.NetworkError, httpcore.ProtocolError) as e:
        raise BadItemError(f"URL fetch failed ({type(e).__name__}: {e}): {at()}") from e
