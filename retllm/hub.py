"""Model availability: use cached weights without the network, and fail in seconds when offline.

A hub lookup on a machine with no route out can hang for minutes; every model loader calls
:func:`require_hub` before it lets a library download anything.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from functools import lru_cache
from urllib.parse import urlparse

from retllm.errors import ModelUnavailableError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0


def hub_endpoint() -> str:
    """The Hugging Face endpoint huggingface_hub would use."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def offline_mode() -> bool:
    """True when the user asked for offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


@lru_cache(maxsize=8)
def _reachable(endpoint: str, timeout: float) -> bool:
    url = urlparse(endpoint)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                if url.scheme == "http":
                    # A listener that never answers is as good as no route: ask for one byte back.
                    s.settimeout(timeout)
                    s.sendall(b"HEAD / HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
                    result.append(bool(s.recv(1)))
                else:
                    result.append(True)
        except OSError:
            result.append(False)

    # DNS resolution has no timeout of its own: run the probe in a thread and stop waiting.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1.0)
    return bool(result and result[0])


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub can be reached now (False at once in offline mode)."""
    if offline_mode():
        return False
    return _reachable(hub_endpoint(), timeout)


def require_hub(model: str, fix: str) -> None:
    """Raise :class:`ModelUnavailableError` quickly when ``model`` would need a download that cannot happen.

    Args:
        model: What is missing, as the user would name it.
        fix: How to point retllm at a local copy instead.
    """
    if hub_reachable():
        return
    why = "offline mode is on" if offline_mode() else f"{hub_endpoint()} is unreachable"
    raise ModelUnavailableError(f"model {model} is not cached and {why}; {fix}")
