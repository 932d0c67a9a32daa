"""One way to run a test server: a ``ThreadingHTTPServer`` on a free port, served from a thread, shut down after."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def running_server(
    handler: Callable[..., BaseHTTPRequestHandler],
    host: str = "127.0.0.1",
    *,
    tls: ssl.SSLContext | None = None,
    daemon_threads: bool = False,
    poll_interval: float = 0.5,
    join: bool = False,
) -> Iterator[ThreadingHTTPServer]:
    """``handler`` served on ``host`` at a free port (``server.server_address[1]``) until the block ends.

    ``daemon_threads=False`` (the default) makes closing wait for requests in flight, so what handlers record is
    complete when the block ends; ``join`` also waits for the serving thread."""
    server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = daemon_threads
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        if join:
            thread.join()
