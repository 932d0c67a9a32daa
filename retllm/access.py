"""Who may call retllm's HTTP servers (``retllm serve`` and ``retllm mcp --http``): one set of rules for both.

- :func:`is_loopback` and :func:`check_bind`: no unauthenticated server on an address other machines reach;
- :func:`bearer_ok` and :data:`BEARER_REFUSED`: the token check (constant time) and its message;
- :func:`host_allowed`: the ``Host`` header names this server, so a web page whose DNS name was re-pointed at
  it (DNS rebinding) is refused;
- :func:`refuse`: the answer to a refused request, sent from an ASGI middleware;
- :class:`AccessSettings`: the ``RETLLM_*`` settings these rules read.

Plain functions over strings (and one raw ASGI send): each server applies them in its own framework.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from retllm.errors import ConfigError

BEARER_REFUSED = "missing or wrong bearer token: send Authorization: Bearer <RETLLM_API_TOKEN>"
MIN_TOKEN = 16


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an IP literal, IPv6 with or without brackets) means this machine only:
    ``localhost`` in any case, a loopback address, or one in IPv4-mapped IPv6 form (``::ffff:127.0.0.1``)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    ip = _ip(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and ip.is_loopback


def check_bind(host: str, option: str, *, token: bool, insecure: bool) -> None:
    """Refuse to serve without a token on an address other machines reach, unless ``insecure``.

    ``option``: how the address was given (``--host``, ``--http``), for the message."""
    if token or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"{option} {host}: refusing to serve on a non-loopback address without authentication; set "
        "RETLLM_API_TOKEN (clients then send Authorization: Bearer <token>), serve on 127.0.0.1, or pass --insecure"
    )


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` (always true without a token)."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def split_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header (``name``, ``name:port``, ``[v6]:port``) as (host, port), None if malformed; the host
    in lower case, without brackets or a final dot (``example.com.`` is ``example.com``)."""
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s\[\]:/@]+)(?::([0-9]{1,5}))?", value.strip())
    if m is None or m[1] == ".":
        return None
    return m[1].lower().strip("[]").rstrip("."), int(m[2]) if m[2] else None


def host_allowed(value: str | None, names: frozenset[str]) -> bool:
    """Whether a request's ``Host`` header names this server: an IP literal or ``localhost`` (DNS rebinding
    needs a name that a page's own origin resolves to us, and browsers resolve neither through DNS), or one
    of ``names`` (``host`` for any port, ``host:port`` for that port only; ``*`` lets every name through)."""
    if "*" in names:
        return True
    parsed = split_host(value or "")
    if parsed is None:
        return False
    host, port = parsed
    if _ip(host) is not None or host == "localhost":
        return True
    return host in names or (port is not None and f"{host}:{port}" in names)


def host_refused(value: str | None) -> str:
    """The message for a ``Host`` that :func:`host_allowed` refused."""
    shown = json.dumps((value or "")[:100])
    return (
        f"Host {shown} is not a name of this server (DNS rebinding?): connect by IP or localhost, or add the name "
        "to RETLLM_ALLOWED_HOSTS (or RETLLM_PUBLIC_URL behind a proxy)"
    )


async def refuse(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, detail: str, **headers: str) -> None:
    """Answer an HTTP request from an ASGI middleware with ``{"detail": detail}`` (the service's error shape)."""
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class AccessSettings(BaseSettings):
    """The settings of who may call an HTTP server of retllm (``retllm serve``, ``retllm mcp --http``)."""

    model_config = SettingsConfigDict(env_prefix="RETLLM_", extra="ignore")

    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token every request must carry (Authorization: Bearer ...). Unset: no authentication, "
        "and the server refuses a non-loopback address unless --insecure is given.",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL clients reach the service at (behind a proxy): image links use it, and its host "
        "is accepted in Host headers. Default: the address the service is bound to.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names (host or host:port) requests may name in their Host header besides IP literals, "
        "localhost and RETLLM_PUBLIC_URL's host; comma-separated or a JSON list; '*' turns the check off.",
    )

    @field_validator("api_token", "public_url", mode="before")
    @classmethod
    def _blank_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("api_token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < MIN_TOKEN:
            raise ValueError(
                f"RETLLM_API_TOKEN must be at least {MIN_TOKEN} characters (e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        return v

    @field_validator("public_url")
    @classmethod
    def _an_http_url(cls, v: str | None) -> str | None:
        if v is not None:
            parts = urlsplit(v.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"RETLLM_PUBLIC_URL {v!r}: expected an http(s) URL such as https://search.example")
            v = v.strip()
        return v

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts_from_env(cls, v: object) -> object:
        if isinstance(v, str):
            text = v.strip()
            return json.loads(text) if text.startswith("[") else [p for p in re.split(r"[,\s]+", text) if p]
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, v: list[str]) -> list[str]:
        out = []
        for entry in v:
            parsed = split_host(entry) if entry.strip() != "*" else ("*", None)
            if parsed is None:
                raise ValueError(f"RETLLM_ALLOWED_HOSTS: {entry!r} is not a host or host:port")
            out.append(parsed[0] if parsed[1] is None else f"{parsed[0]}:{parsed[1]}")
        return out

    @model_validator(mode="after")
    def _star_needs_a_token(self) -> AccessSettings:
        if "*" in self.allowed_hosts and self.api_token is None:
            raise ValueError(
                "RETLLM_ALLOWED_HOSTS=* turns off the DNS-rebinding check, which is all that keeps web pages out "
                "without a token: set RETLLM_API_TOKEN too, or list the host names"
            )
        return self

    @property
    def token(self) -> str | None:
        return self.api_token.get_secret_value() if self.api_token else None

    @property
    def host_names(self) -> frozenset[str]:
        """The names :func:`host_allowed` accepts beyond IP literals and localhost."""
        names = set(self.allowed_hosts)
        if self.public_url:
            names.add((urlsplit(self.public_url).hostname or "").lower())
        return frozenset(names)
