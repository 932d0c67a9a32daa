"""``retllm serve``: check the address against the token, build the app, run uvicorn."""

from __future__ import annotations

import logging

from retllm.agent.service.config import ServeSettings
from retllm.agent.service.security import check_bind

from retllm.errors import ConfigError
from retllm.settings import Settings


def run(settings: Settings, *, host: str, port: int, insecure: bool = False) -> None:
    try:
        conf = ServeSettings()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    check_bind(host, token=conf.api_token is not None, insecure=insecure)
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
