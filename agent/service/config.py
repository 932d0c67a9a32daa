"""The service's own settings (``RETLLM_*``), read once by ``retllm serve`` beside the library's :class:`Settings`."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    """How the service admits, limits and links requests."""

    model_config = SettingsConfigDict(env_prefix="RETLLM_", extra="ignore")

    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token every request must carry (Authorization: Bearer ...). Unset: no authentication, "
        "and the service refuses a non-loopback address unless --insecure is given.",
    )
    public_url: str | None = Field(
        default=None, description="Base URL clients reach the service at (behind a proxy); default: the request's."
    )
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

    @field_validator("api_token", "public_url", mode="before")
    @classmethod
    def _blank_is_none(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("api_token")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError(
                "RETLLM_API_TOKEN must be at least 16 characters (e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        return v

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)
