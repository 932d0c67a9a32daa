"""The one place answers leave the service: every JSON body and every server-sent event passes through
:func:`retllm.redact.redact_data` here, so no route (or error handler, or a field added later) can send a server
path: not in results, progress events, thread history, error details or the OpenAI route's Markdown."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retllm.redact import redact, redact_data


def _json(body: bytes) -> bytes:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return redact(body.decode("utf-8", "replace")).encode()
    return json.dumps(redact_data(data), ensure_ascii=False, separators=(",", ":")).encode()


def _sse_line(line: bytes) -> bytes:
    if not line.startswith(b"data:"):
        return line  # event names, ids, comments (keep-alives), blank separators
    raw = line[5:].strip()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return b"data: " + redact(raw.decode("utf-8", "replace")).encode()
    return b"data: " + json.dumps(redact_data(data)).encode()


class HidePaths:
    """ASGI middleware: JSON answers are buffered and rewritten (``Content-Length`` updated); event streams are
    rewritten line by line as they flow. Other bodies (images, the page) and the API schema pass unchanged."""

    def __init__(self, app: ASGIApp, skip: tuple[str, ...] = ("/openapi.json",)) -> None:
        self.app = app
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.skip:
            await self.app(scope, receive, send)
            return
        kind: str | None = None
        start: Message = {}
        parts: list[bytes] = []
        tail = b""

        async def out(message: Message) -> None:
            nonlocal kind, start, tail
            if message["type"] == "http.response.start":
                ctype = _header(message, b"content-type").split(b";")[0].strip().lower()
                if ctype == b"application/json" or ctype.endswith(b"+json"):
                    kind, start = "json", message  # sent with the rewritten body and its length
                    return
                kind = "sse" if ctype == b"text/event-stream" else None
            elif message["type"] == "http.response.body" and kind == "json":
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = b"".join(parts)
                body = _json(body) if body else body
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                message = {**message, "body": body}
            elif message["type"] == "http.response.body" and kind == "sse":
                text = tail + message.get("body", b"")
                more = message.get("more_body", False)
                cut = text.rfind(b"\n") + 1 if more else len(text)  # a line split across chunks waits for its end
                text, tail = text[:cut], text[cut:]
                message = {**message, "body": b"\n".join(_sse_line(x) for x in text.split(b"\n"))}
            await send(message)

        await self.app(scope, receive, out)


def _header(message: Message, name: bytes) -> bytes:
    headers: Any = message.get("headers", [])
    return next((v for k, v in headers if k.lower() == name), b"")
