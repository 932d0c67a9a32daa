"""Who may call, how much they may send, and how many may wait: the service's guards, each a small piece.

- :func:`check_bind`: no unauthenticated service on a non-loopback address unless asked for (``--insecure``);
- :class:`Auth`: bearer-token check, and signed image links (``exp`` + ``sig``) so ``<img>`` tags and Markdown
  in other chat front ends can show result images without the token;
- :class:`BodyLimit`: an ASGI middleware refusing bodies over the limit (declared or streamed) with 413;
- :class:`Gate`: model work on a bounded thread pool; past the queue depth, 503 with ``Retry-After``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retllm.errors import ConfigError

T = TypeVar("T")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, token: bool, insecure: bool) -> None:
    """Refuse to serve without a token on an address other machines reach, unless ``insecure``."""
    if token or insecure or is_loopback(host):
        return
    raise ConfigError(
        f"--host {host}: refusing to serve on a non-loopback address without authentication; set RETLLM_API_TOKEN "
        "(clients then send Authorization: Bearer <token>), serve on 127.0.0.1, or pass --insecure"
    )


class Auth:
    """Bearer-token authentication (a no-op without a token) and signed image links."""

    def __init__(self, token: str | None, ttl: int) -> None:
        self.token = token
        self.ttl = ttl
        self._key = hmac.new(token.encode(), b"retllm image links", hashlib.sha256).digest() if token else b""

    def bearer_ok(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def require(self, request: Request) -> None:
        """FastAPI dependency: 401 unless the request carries the token."""
        if not self.bearer_ok(request):
            raise HTTPException(
                401,
                "missing or wrong bearer token: send Authorization: Bearer <RETLLM_API_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def _sig(self, collection: str, item_id: str, size: int | None, exp: int) -> str:
        msg = json.dumps([collection, item_id, size, exp]).encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:32]

    def sign(self, collection: str, item_id: str, size: int | None) -> dict[str, str]:
        """Query parameters that let anyone holding the link read this one image (empty without a token)."""
        if self.token is None:
            return {}
        exp = int(time.time()) + self.ttl
        return {"exp": str(exp), "sig": self._sig(collection, item_id, size, exp)}

    def image_ok(self, request: Request, collection: str, item_id: str, size: int | None) -> bool:
        if self.bearer_ok(request):
            return True
        exp, sig = request.query_params.get("exp", ""), request.query_params.get("sig", "")
        if not exp.isdigit() or int(exp) < time.time() or not sig:
            return False
        return hmac.compare_digest(sig, self._sig(collection, item_id, size, int(exp)))


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, before reading them when Content-Length says so,
    and as soon as a streamed (chunked) body passes the limit otherwise."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            msg = await receive()
            if msg["type"] == "http.request" and not refused:
                seen += len(msg.get("body", b""))
                if seen > self.limit:  # answer 413 now; the app sees the client leave and stops reading
                    refused = True
                    if not started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return msg

        async def tracked(msg: Message) -> None:
            nonlocal started
            if refused:
                return  # the app's own answer to a body it never got whole
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send) -> None:
        mib = self.limit / 2**20
        body = json.dumps({"detail": f"request body over the {mib:g} MiB limit (RETLLM_MAX_BODY_MB)"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


class ClientGone(Exception):
    """The client hung up while its request waited for a worker: the work is skipped."""


class Gate:
    """Model work on at most ``workers`` threads; at most ``queue`` more requests wait, the rest get 503.

    A request whose client hung up while it waited is dropped when its turn comes, so timed-out clients that
    retry do not pile work onto the queue."""

    def __init__(self, workers: int, queue: int, retry_after: int) -> None:
        self.limiter = anyio.CapacityLimiter(workers)
        self._threads = anyio.CapacityLimiter(workers)  # one thread per held slot (anyio's default pool is 40)
        self.capacity = workers + queue
        self.retry_after = retry_after
        self.depth = 0  # admitted and not finished (the event loop is one thread: no lock needed)

    def admit(self) -> None:
        if self.depth >= self.capacity:
            raise HTTPException(
                503,
                f"busy: {self.depth} requests are already running or queued; retry in {self.retry_after} s",
                headers={"Retry-After": str(self.retry_after)},
            )
        self.depth += 1

    def release(self) -> None:
        self.depth -= 1

    async def run(self, fn: Callable[..., T], *args: Any, request: Request | None = None) -> T:
        """``fn(*args)`` on a worker thread (the event loop never waits on a model); ``request``: skip the work
        if its client has gone by the time a worker is free."""
        self.admit()
        try:
            async with self.limiter:
                if request is not None and await request.is_disconnected():
                    raise ClientGone
                return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._threads)
        finally:
            self.release()
