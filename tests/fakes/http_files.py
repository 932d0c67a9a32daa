"""A real local HTTP server serving files from a folder (for image URLs), on loopback only."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

from tests.fakes.local_http import running_server


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_folder(folder: Path, requests: list[str] | None = None) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1; yields the base URL. GET paths are appended to ``requests``."""

    class Handler(_Quiet):
        def do_GET(self) -> None:
            if requests is not None:
                requests.append(self.path)
            super().do_GET()

    with running_server(partial(Handler, directory=str(folder))) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


@contextmanager
def silent_listener() -> Iterator[str]:
    """A TCP listener that accepts connections and never answers: stands in for a black-holed host."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()
