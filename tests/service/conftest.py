"""A real ``retllm serve`` app on uvicorn in a thread (loopback, a free port), over tiny models and the local
OpenAI-compatible fake (scorer and chat model), with the scene images ingested as ``retllm index add`` does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.conftest import deps_from, ingest, scene_images  # noqa: F401 - fixture re-export
from tests.fakes.openai_server import FakeOpenAI, Switches, fake_openai

TOKEN = "test-token-0123456789abcdef"


def served(app: Any) -> Any:
    """``app`` on uvicorn in a thread on a free loopback port until the block ends; yields its base URL."""
    from retllm.agent.service.run import in_background

    return in_background(app, start_timeout=30)


def wait_ready(url: str, headers: dict[str, str] | None = None, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{url}/readyz", headers=headers)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r.json()
        time.sleep(0.1)


def service_env(cli_env: dict[str, str], fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    return {
        **cli_env,
        "RETLLM_SCORER": "openai:fake-vlm",
        "RETLLM_OPENAI_BASE_URL": fake.url,
        "OPENAI_API_KEY": "k",
        "RETLLM_CHAT_MODEL": "openai:chat-model",
        "RETLLM_CHAT_BASE_URL": fake.url,
        **extra,
    }


@contextmanager
def running(env: dict[str, str], *, deps: Any = None, **conf: Any) -> Iterator[tuple[str, Any]]:
    """The service for ``env`` (settings from it, as ``retllm serve`` reads them), ready; yields (url, service)."""
    from retllm.agent.service.app import create_app
    from retllm.agent.service.config import ServeSettings

    from tests.agent.conftest import environ

    with environ(env):
        from retllm.settings import Settings

        settings, sconf = Settings(), ServeSettings(**conf)
    app = create_app(settings, sconf, deps=deps)
    with served(app) as url:
        headers = {"Authorization": f"Bearer {TOKEN}"} if sconf.api_token else None
        ready = wait_ready(url, headers)
        assert ready["status"] in ("ready", "degraded"), ready  # degraded: a broken collection beside the others
        yield url, app.state.service


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai(Switches()) as f:
        yield f


@pytest.fixture
def scenes_env(cli_env: dict[str, str], fake: FakeOpenAI, scene_images: list[Path]) -> dict[str, str]:  # noqa: F811
    env = service_env(cli_env, fake)
    ingest(env, scene_images)
    return env


def blobs(env: dict[str, str]) -> set[str]:
    d = Path(env["RETLLM_DATA_DIR"]) / "blobs"
    return {p.name for p in d.iterdir()} if d.exists() else set()
