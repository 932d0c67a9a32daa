"""``retllm serve``: check the address against the token, build the app, run uvicorn (or run it in the background
of another program: :func:`in_background`)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from retllm.agent.service.config import ServeSettings

from retllm.access import check_bind
from retllm.settings import Settings, from_env


def run(settings: Settings, *, host: str, port: int, insecure: bool = False) -> None:
    conf = from_env(ServeSettings)  # a bad value: one line, before anything loads
    check_bind(host, "--host", token=conf.token is not None, insecure=insecure)
    if conf.api_token is None:
        logging.getLogger(__name__).warning("RETLLM_API_TOKEN is not set: the service has no authentication")
    import uvicorn
    from retllm.agent.service.app import create_app

    level = logging.getLogger().getEffectiveLevel()
    uvicorn.run(
        create_app(settings, conf),
        host=host,
        port=port,
        log_level="info" if level <= logging.INFO else "warning",
        access_log=level <= logging.INFO,
        timeout_graceful_shutdown=10,
    )


@contextmanager
def in_background(app: Any, host: str = "127.0.0.1", *, start_timeout: float = 60) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a thread, on a free port of ``host``, until the block ends; yields its base
    URL (for notebooks, tests and benchmarks that want the real HTTP service inside their own process)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="retllm-serve", daemon=True)
    t.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not t.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("the service did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=start_timeout)
        sock.close()
