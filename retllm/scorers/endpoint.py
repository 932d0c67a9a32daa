"""Talking to a chat endpoint: the process-wide request limit and what an error response means.

Nothing here builds prompts or reads answers (see :mod:`retllm.scorers.chat`).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from retllm.images import is_url

log = logging.getLogger(__name__)


class Unsupported(Exception):
    """The endpoint rejected a request feature (tools, logprobs, a top_logprobs value, ...)."""

    def __init__(self, feature: str, detail: str, value: int | None = None) -> None:
        super().__init__(detail)
        self.feature = feature
        self.value = value


class Stopped(Exception):
    """The query this request belongs to has already failed; no more requests for it."""


class RequestLimit:
    """At most ``capacity`` requests in flight. A waiter whose query has failed leaves the queue."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = 0
        self._cond = threading.Condition()

    def acquire(self, stop: threading.Event | None = None) -> None:
        """Wait for a slot; raise :class:`Stopped` when ``stop`` is set first (checked every 50 ms)."""
        with self._cond:
            while self.active >= self.capacity:
                if stop is not None and stop.is_set():
                    raise Stopped("the query already failed")
                self._cond.wait(0.05 if stop is not None else None)
            if stop is not None and stop.is_set():
                raise Stopped("the query already failed")
            self.active += 1

    def release(self) -> None:
        with self._cond:
            self.active -= 1
            self._cond.notify()


_LIMITS: dict[tuple[str, int], RequestLimit] = {}
_LIMITS_LOCK = threading.Lock()


def request_slots(endpoint: str, concurrency: int) -> RequestLimit:
    """The process-wide bound on requests in flight to ``endpoint``: every scorer built with the same
    ``concurrency`` (RETLLM_OPENAI_CONCURRENCY, read once per process) shares it; a scorer built with
    another value (a one-off script) gets its own instead of throttling the others."""
    with _LIMITS_LOCK:
        return _LIMITS.setdefault((endpoint, concurrency), RequestLimit(concurrency))


# An error about this pair's own input (the other pairs can still be scored).
PAIR_PROBLEM = re.compile(
    r"context (?:length|window|size)|too long|too many (?:tokens|images)|exceeds? .{0,40}tokens|"
    r"inputs?.{0,30}tokens? .{0,60}must be <=|less than \d+ tokens|"
    r"(?:corrupt|decode|process(?:ing)?) .{0,20}image|image .{0,40}too (?:large|big|small)",
    re.IGNORECASE,
)
# ... unless it says the server takes no images (or not this kind of content) at all: configuration.
NOT_SUPPORTED = re.compile(
    r"only supported by|not supported|does not support|unsupported content|content type|no vision|"
    r"image input is not|multimodal is not",
    re.IGNORECASE,
)


# A 500 whose text shows the request itself was refused (llama-cpp-python answers validation errors,
# "logprobs is not supported" and template failures with 500): retrying cannot help.
CLIENT_ERROR_IN_500 = re.compile(
    r"logprob|validation error|input should be|not supported|unsupported|can only concatenate|"
    r"unexpected keyword|field required|missing required|invalid (?:request|value|type|parameter|argument)",
    re.IGNORECASE,
)
TRANSIENT_STATUS = frozenset({408, 409, 425})  # request timeout, conflict, too early: the SDK retries them too


def one_line(e: Any) -> str:
    """The server's own message from an API error (OpenAI, vLLM and TGI shape their bodies differently)."""
    msg = getattr(e, "message", None) or str(e)
    body = getattr(e, "body", None)
    if isinstance(body, str) and body.strip():
        msg = body
    elif isinstance(body, dict):
        for key in ("message", "error", "detail"):
            if isinstance(body.get(key), str) and body[key].strip():
                msg = body[key]
                break
    return " ".join(str(msg).split())[:300]


def retry_after(exc: Any) -> float | None:
    resp = getattr(exc, "response", None)
    value = resp.headers.get("retry-after") if resp is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def has_http_image(kwargs: dict[str, Any]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") == "image_url" and is_url(part["image_url"]["url"])
        for m in kwargs.get("messages", [])
        if isinstance(m.get("content"), list)
        for part in m["content"]
    )
