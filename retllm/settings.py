"""Settings, read once at the edge (CLI, service, graph entry) and passed down as objects."""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EMBEDDER = "open_clip:ViT-B-32@laion2b_s34b_b79k"


class Settings(BaseSettings):
    """All ``RETLLM_*`` settings. Library code receives this object; it never reads the environment."""

    model_config = SettingsConfigDict(env_prefix="RETLLM_", extra="ignore")

    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("retllm")),
        description="Where the embedded store (qdrant-edge shards) and image blobs live.",
    )
    qdrant_url: str | None = Field(
        default=None,
        description="Qdrant server/cluster URL (http/https). ':memory:' or a folder path uses "
        "qdrant-client's local mode. Unset: the embedded qdrant-edge store under data_dir.",
    )
    qdrant_api_key: SecretStr | None = Field(default=None, description="API key for RETLLM_QDRANT_URL.")
    embedder: str = Field(default=DEFAULT_EMBEDDER, description="Embedder id, e.g. open_clip:NAME@TAG.")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or mps.")
    collection: str = Field(default="default", description="Default collection name.")
    batch_size: int = Field(default=32, ge=1, le=4096, description="Embedding batch size.")
    fusion_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Image weight w in the fused vector normalise(w*img + (1-w)*txt).",
    )
    max_image_pixels: int = Field(default=64_000_000, ge=1, description="Larger images are skipped.")
    url_timeout: float = Field(default=10.0, gt=0, description="Seconds to fetch one image URL.")
    decode_workers: int = Field(default=2, ge=1, le=64, description="Threads decoding images at ingest.")

    @field_validator("qdrant_url")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v or None

    @model_validator(mode="after")
    def _key_needs_url(self) -> Settings:
        if self.qdrant_api_key is not None and self.qdrant_url is None:
            raise ValueError("RETLLM_QDRANT_API_KEY is set but RETLLM_QDRANT_URL is not")
        return self

    @property
    def edge_dir(self) -> Path:
        """Folder of the embedded store (one qdrant-edge shard per collection)."""
        return self.data_dir / "edge"

    @property
    def blob_dir(self) -> Path:
        """Folder where images given as bytes are kept so the fine stage can read them later."""
        return self.data_dir / "blobs"
