"""The service's own settings (``RETLLM_*``), read once by ``retllm serve`` beside the library's :class:`Settings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from retllm.access import AccessSettings


class ServeSettings(AccessSettings):
    """How the service admits, limits and links requests (who may call: :class:`AccessSettings`)."""

    model_config = SettingsConfigDict(env_prefix="RETLLM_", extra="ignore")

    serve_workers: int = Field(default=8, ge=1, le=256, description="Requests doing model work at once (threads).")
    max_queue: int = Field(
        default=32, ge=0, le=10_000, description="Requests waiting for a worker; past this they get 503 + Retry-After."
    )
    retry_after: int = Field(default=2, ge=1, le=600, description="Seconds a 503 asks the client to wait.")
    max_body_mb: float = Field(default=40.0, gt=0, le=4096, description="Largest request body (uploads included).")
    max_upload_files: int = Field(default=64, ge=1, le=10_000, description="Most files in one multipart request.")
    image_url_ttl: int = Field(
        default=7 * 24 * 3600, ge=60, description="Seconds a signed image link in a result stays valid (with a token)."
    )

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)
