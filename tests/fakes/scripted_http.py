"""A real local HTTP(S) server whose answers a test scripts (redirects, huge, endless or slow bodies), recording
what it was asked and whether each answer went out in full or the client hung up first."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.fakes.local_http import running_server

Answer = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Served:
    url: str
    paths: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)  # per answer: written in full (False: the client hung up)

    def wait_answers(self, n: int, timeout: float = 10.0) -> list[bool]:
        """``finished`` once ``n`` answers have ended (written or cut off)."""
        end = time.monotonic() + timeout
        while len(self.finished) < n and time.monotonic() < end:
            time.sleep(0.01)
        return self.finished


def reply(h: BaseHTTPRequestHandler, status: int = 200, body: bytes = b"", **headers: str) -> None:
    """A whole answer: ``headers`` as keyword arguments (underscores for dashes); Content-Length from ``body``."""
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k.replace("_", "-"), v)
    if "Content_Length" not in headers:
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


@contextmanager
def scripted_server(answer: Answer, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[Served]:
    """Serve on ``host`` (any port), answering every GET with ``answer(handler)``."""
    served = Served("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            served.paths.append(self.path)
            served.hosts.append(self.headers.get("Host", ""))
            try:
                answer(self)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                served.finished.append(False)
                self.close_connection = True
                return
            served.finished.append(True)

        def log_message(self, *args: object) -> None:
            pass

    with running_server(Handler, host, tls=tls, poll_interval=0.05) as server:
        scheme = "https" if tls is not None else "http"
        served.url = f"{scheme}://{host}:{server.server_address[1]}"
        yield served
