"""Who may call, how much they may send, and how many may wait: the service's guards, each a small piece.

- :class:`WebGuard`: an ASGI middleware refusing what a web page can make a browser send: a ``Host`` that is
  not a name of this service (421, DNS rebinding) and cross-origin requests that write or run a model (403);
- :class:`Auth`: bearer-token check, and signed image links (``exp`` + ``sig``) so ``<img>`` tags and Markdown
  in other chat front ends can show result images without the token;
- :class:`BodyLimit`: an ASGI middleware refusing bodies over the limit (declared or streamed) with 413;
- :class:`Gate`: model work on a bounded thread pool; past the queue depth, 503 with ``Retry-After``.

The binding rule (no token: loopback only) and the token and Host checks are :mod:`retllm.access`'s, shared
with the MCP server.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
from fastapi import HTTPException, Request
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retllm.access import BEARER_REFUSED, bearer_ok, host_allowed, host_refused, refuse
from retllm.errors import Cancelled

T = TypeVar("T")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # read only: a cross-site page cannot read the answer
_EXP = re.compile(r"[0-9]{1,12}")  # ASCII digits only ('²'.isdigit() is true), and no 5000-digit int()


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of ``url``, lower case (how browsers write an ``Origin`` header)."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


class WebGuard:
    """Refuses, before any route runs, what a web page can make a browser send:

    - a ``Host`` that is not a name of this service (:func:`retllm.access.host_allowed`): 421;
    - a cross-origin request that is not a read (``Origin`` other than this service's, or ``Sec-Fetch-Site``
      ``cross-site``/``same-site``): 403, whether a token is set or not. Clients that are no browser send
      neither header and pass; this service's own page is same-origin.
    """

    def __init__(self, app: ASGIApp, names: frozenset[str], public_url: str | None) -> None:
        self.app = app
        self.names = names
        self.public_origin = origin_of(public_url) if public_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            host = headers.get("host")
            if not host_allowed(host, self.names):
                await refuse(send, 421, host_refused(host))
                return
            if scope["method"] not in SAFE_METHODS and (why := self.cross_origin(headers, host or "")):
                await refuse(send, 403, why)
                return
        await self.app(scope, receive, send)

    def cross_origin(self, headers: Headers, host: str) -> str | None:
        """Why a browser's request comes from another origin, or None (same origin, or no browser)."""
        site = headers.get("sec-fetch-site", "").lower()
        origin = headers.get("origin")
        if site in ("cross-site", "same-site"):
            shown = f"Sec-Fetch-Site: {site}"
        elif origin is None:
            return None
        elif urlsplit(origin).netloc.lower() == host.lower() or origin_of(origin) == self.public_origin:
            return None
        else:
            shown = f"Origin {json.dumps(origin[:100])}"
        return (
            f"cross-origin request refused ({shown}): a web page may not write or run models here; "
            "behind a proxy set RETLLM_PUBLIC_URL to the address browsers use"
        )


class Auth:
    """Bearer-token authentication (a no-op without a token) and signed image links."""

    def __init__(self, token: str | None, ttl: int) -> None:
        self.token = token
        self.ttl = ttl
        self._key = hmac.new(token.encode(), b"retllm image links", hashlib.sha256).digest() if token else b""

    def bearer_ok(self, request: Request) -> bool:
        return bearer_ok(request.headers.get("authorization"), self.token)

    def require(self, request: Request) -> None:
        """FastAPI dependency: 401 unless the request carries the token."""
        if not self.bearer_ok(request):
            raise HTTPException(401, BEARER_REFUSED, headers={"WWW-Authenticate": "Bearer"})

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
        if not _EXP.fullmatch(exp) or int(exp) < time.time() or not sig:
            return False
        return hmac.compare_digest(sig.encode(), self._sig(collection, item_id, size, int(exp)).encode())


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
        if declared is not None and (not declared.isdigit() or len(declared) > 15 or int(declared) > self.limit):
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
        await refuse(send, 413, f"request body over the {self.limit / 2**20:g} MiB limit (RETLLM_MAX_BODY_MB)")


class ClientGone(Exception):
    """The client hung up while its request waited for a worker: the work is skipped."""


async def watch_disconnect(request: Request, cancel: threading.Event, every: float = 0.1) -> None:
    """Set ``cancel`` once ``request``'s client has disconnected (polled every ``every`` s; cancel the task to stop)."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(every)


class Gate:
    """Model work on at most ``workers`` threads; at most ``queue`` more requests wait, the rest get 503.

    A request whose client hung up while it waited is dropped when its turn comes, so timed-out clients that
    retry do not pile work onto the queue; one whose client hangs up while it runs has its ``cancel`` event set,
    and the work drops what is left of it."""

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

    async def run(
        self, fn: Callable[..., T], *args: Any, request: Request | None = None, cancel: threading.Event | None = None
    ) -> T:
        """``fn(*args)`` on a worker thread (the event loop never waits on a model); ``request``: skip the work
        if its client has gone by the time a worker is free; ``cancel`` (the event ``fn`` was handed): set when
        the client goes while the work runs, so the work stops (its :class:`Cancelled` ends as :class:`ClientGone`)."""
        self.admit()
        try:
            async with self.limiter:
                if request is not None and await request.is_disconnected():
                    raise ClientGone
                watch = None
                if request is not None and cancel is not None:
                    watch = asyncio.ensure_future(watch_disconnect(request, cancel))
                try:
                    return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._threads)
                except Cancelled as e:
                    raise ClientGone from e
                finally:
                    if watch is not None:
                        watch.cancel()
        finally:
            self.release()
