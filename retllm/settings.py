"""Settings, read once at the edge (CLI, service, graph entry) and passed down as objects."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from retllm.errors import ConfigError
from retllm.images import DEFAULT_DECODE_BUDGET_MB, ImageLimits
from retllm.scorers.base import DEFAULT_MAX_QUERY_TOKENS
from retllm.scorers.config import RetraceConfig
from retllm.urlguard import MAX_URL_BYTES, parse_networks

DEFAULT_EMBEDDER = "open_clip:ViT-B-32@laion2b_s34b_b79k"
DEFAULT_SCORER = "hf:HuggingFaceTB/SmolVLM-256M-Instruct"


def _list_from_env(v: object, separators: str) -> object:
    """A JSON list, or items split on ``separators``, from an environment string (other values unchanged)."""
    if not isinstance(v, str):
        return v
    text = v.strip()
    if text.startswith("["):
        return json.loads(text)
    return [p.strip() for p in re.split(f"[{re.escape(separators)}]", text) if p.strip()]


class Settings(BaseSettings):
    """All ``RETLLM_*`` settings. Library code receives this object; it never reads the environment."""

    model_config = SettingsConfigDict(env_prefix="RETLLM_", extra="ignore", env_nested_delimiter="__")

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
    url_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds to fetch one image URL, in total: DNS, connects, redirects and the whole body.",
    )
    max_url_bytes: int = Field(
        default=MAX_URL_BYTES, ge=1, description="Image URL bodies larger than this many bytes are refused."
    )
    allow_private_urls: bool = Field(
        default=False,
        description="Fetch image URLs on loopback, private, link-local and CGNAT addresses too. The cloud metadata "
        "addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200) stay refused even then.",
    )
    allowed_url_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR) or single addresses whose image URLs are fetched although not public, "
        "e.g. 10.1.2.0/24,127.0.0.1 (a JSON list or comma-separated). A metadata address only as itself.",
    )
    file_roots: Annotated[list[Path] | None, NoDecode] = Field(
        default=None,
        description="Folders that image paths given in requests (tools, MCP, service) must lie in, symlinks and "
        "'..' resolved; uploads (the blob folder) are always allowed. A JSON list, or paths separated by "
        "os.pathsep or commas. Unset: any path.",
    )
    decode_workers: int = Field(default=2, ge=1, le=64, description="Threads decoding images at ingest.")
    decode_budget_mb: int = Field(
        default=DEFAULT_DECODE_BUDGET_MB,
        ge=16,
        description="MiB that images being decoded at once may take across the process (decodes wait for room); "
        "an image that needs more alone is refused. A 64 MP image needs about 250 MiB at full size, a few MiB "
        "where only a bounded size is needed (queries, thumbnails, the MLLM's input).",
    )
    vector_fusion: Literal["rank", "rrf", "dbsf"] = Field(
        default="rank",
        description="How `auto` vector search fuses the image, text and fused searches: rank = each item at "
        "its best rank in any of them (one batched request); rrf / dbsf = Qdrant's reciprocal-rank / "
        "distribution-based score fusion in one Query API request (sums over the kinds: favours items "
        "that store more kinds).",
    )
    min_score: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Default threshold on the fine score (two-way P(True)); hits below it are dropped.",
    )

    scorer: str = Field(default=DEFAULT_SCORER, description="Fine-stage scorer: hf:<id or folder> or openai:<model>.")
    dtype: str = Field(default="auto", description="Scorer dtype: auto (fp32 CPU, bf16 CUDA), float32, bfloat16.")
    scorer_batch_size: int = Field(default=8, ge=1, le=1024, description="Pairs per forward (local scorers).")
    scorer_image_side: int | None = Field(
        default=None,
        ge=28,
        description="Longest image side (px) a local MLLM sees; unset: the model's own setting. Smaller is faster.",
    )
    scorer_min_image_tokens: int | None = Field(
        default=256,
        ge=1,
        description="Qwen families: fewest visual tokens per image (smaller images are enlarged); "
        "the research code's 256. Empty: the checkpoint's own.",
    )
    scorer_max_image_tokens: int | None = Field(
        default=512,
        ge=1,
        description="Qwen families: most visual tokens per image (larger images are shrunk); "
        "the research code's 512. Empty: the checkpoint's own (up to 16,384 for Qwen2.5-VL).",
    )
    scorer_cross_query: bool = Field(
        default=True,
        description="Concurrent queries share a local scorer's forwards (throughput); false: each query is "
        "batched alone, bit-identical to running the queries one at a time.",
    )
    vision_cache_size: int = Field(default=256, ge=0, description="Images kept in the vision-output cache.")
    vision_cache_mb: float = Field(default=1024, gt=0, description="Memory bound of the vision-output cache, MiB.")
    retrace: RetraceConfig = Field(default_factory=RetraceConfig, description="Visual retracing (RETLLM_RETRACE__*).")
    openai_base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint base URL.")
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "RETLLM_OPENAI_API_KEY"),
        description="API key for the endpoint (OPENAI_API_KEY).",
    )
    openai_concurrency: int = Field(default=16, ge=1, le=256, description="Requests in flight at once.")
    openai_timeout: float = Field(default=60.0, gt=0, description="Seconds per request.")
    openai_retries: int = Field(default=3, ge=0, le=20, description="Retries per pair (429/5xx/timeouts).")
    revisit: Literal["auto", "on", "off"] = Field(
        default="auto", description="Offer the revisit_image tool: auto = on for endpoints that accept tools."
    )
    max_revisits: int = Field(default=1, ge=0, le=8, description="Revisit-image calls allowed per pair.")
    send_image_urls: bool = Field(default=False, description="Send http(s) image URLs as URLs, not data URLs.")
    max_query_tokens: int | None = Field(
        default=DEFAULT_MAX_QUERY_TOKENS,
        ge=8,
        description="Query text past this many tokens is cut before the MLLM sees it (logged): local models count "
        "with their tokenizer, hosted ones by an estimate (4 letters, 2 digits or signs, or 1 other character per "
        "token). Requests take at most 2,000 characters of query text anyway. Empty: never cut.",
    )
    openai_probe: Literal["auto", "off"] = Field(
        default="auto",
        description="auto: check once per scorer, by prompt-token counts, that the endpoint reads images and shows "
        "tools; off: no check (for a gateway that reports token usage its own way): images are assumed to reach a "
        "vision encoder and the revisit tool is offered only with RETLLM_REVISIT=on.",
    )

    chat_model: str = Field(
        default="openai:gpt-4o-mini",
        description="Chat model of `retllm chat` (the one that talks and calls the search tool), in LangChain's "
        "provider:model form (init_chat_model), e.g. openai:gpt-4o-mini, or openai:<name> with RETLLM_CHAT_BASE_URL "
        "for any OpenAI-compatible server (vLLM, llama.cpp, Ollama).",
    )
    chat_base_url: str | None = Field(
        default=None, description="Base URL of the chat model's OpenAI-compatible server (default: the provider's)."
    )
    chat_api_key: SecretStr | None = Field(
        default=None,
        description="API key for the chat model (default: the provider's own variable, e.g. OPENAI_API_KEY).",
    )
    chat_write_tools: bool = Field(
        default=False,
        description="Give the chat model add_items and delete_items too (default: it only searches and lists). "
        "A delete then waits for the user's confirmation (the web page, retllm chat); the stateless OpenAI "
        "route refuses deletes.",
    )
    chat_attachments_thread_mb: float = Field(
        default=64, gt=0, description="Images attached in one conversation kept at most (MiB); the oldest go first."
    )
    chat_attachments_total_mb: float = Field(
        default=1024, gt=0, description="Images attached in all conversations kept at most (MiB); the oldest go first."
    )
    chat_attachments_days: float = Field(
        default=30, gt=0, description="Days an attached image is kept (deleting a conversation deletes its images)."
    )
    thumbnail_size: int = Field(
        default=256, ge=16, le=2048, description="Longest side (px) of result thumbnails (MCP image content)."
    )

    @field_validator("qdrant_url", "chat_base_url")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v or None

    @field_validator(
        "scorer_min_image_tokens", "scorer_max_image_tokens", "min_score", "max_query_tokens", mode="before"
    )
    @classmethod
    def _blank_means_unset(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("allowed_url_networks", mode="before")
    @classmethod
    def _networks_from_env(cls, v: object) -> object:
        return _list_from_env(v, ",")

    @field_validator("allowed_url_networks")
    @classmethod
    def _networks_are_valid(cls, v: list[str]) -> list[str]:
        try:
            return [str(n) for n in parse_networks(v)]
        except ValueError as e:
            raise ValueError(f"RETLLM_ALLOWED_URL_NETWORKS: {e}") from e

    @field_validator("file_roots", mode="before")
    @classmethod
    def _roots_from_env(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():
            return None
        return _list_from_env(v, os.pathsep + ",")

    @field_validator("file_roots")
    @classmethod
    def _roots_are_folders(cls, v: list[Path] | None) -> list[Path] | None:
        for root in v or []:
            if not root.is_dir():
                raise ValueError(f"RETLLM_FILE_ROOTS: {root} is not an existing folder")
        return v

    @model_validator(mode="after")
    def _key_needs_url(self) -> Settings:
        if self.qdrant_api_key is not None and self.qdrant_url is None:
            raise ValueError("RETLLM_QDRANT_API_KEY is set but RETLLM_QDRANT_URL is not")
        lo, hi = self.scorer_min_image_tokens, self.scorer_max_image_tokens
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"RETLLM_SCORER_MIN_IMAGE_TOKENS ({lo}) is above RETLLM_SCORER_MAX_IMAGE_TOKENS ({hi})")
        return self

    @property
    def image_limits(self) -> ImageLimits:
        """How every component reads stored, trusted images (ingest, query, fine stage): URLs guarded, any path."""
        return ImageLimits(
            max_pixels=self.max_image_pixels,
            url_timeout=self.url_timeout,
            max_bytes=self.max_url_bytes,
            allow_private=self.allow_private_urls,
            allowed_networks=parse_networks(self.allowed_url_networks),
            decode_budget_mb=self.decode_budget_mb,
        )

    @property
    def request_limits(self) -> ImageLimits:
        """How images named in requests are read: :attr:`image_limits`, with paths confined to
        ``file_roots`` and the blob folder (uploads) when ``file_roots`` is set."""
        if self.file_roots is None:
            return self.image_limits
        return dataclasses.replace(self.image_limits, file_roots=(*self.file_roots, self.blob_dir))

    @property
    def edge_dir(self) -> Path:
        """Folder of the embedded store (one qdrant-edge shard per collection)."""
        return self.data_dir / "edge"

    @property
    def blob_dir(self) -> Path:
        """Folder where images given as bytes are kept so the fine stage can read them later."""
        return self.data_dir / "blobs"


S = TypeVar("S", bound=BaseSettings)


def from_env(cls: type[S], **values: Any) -> S:
    """``cls(**values)`` with the rest read from the environment; bad values raise one :class:`ConfigError` of
    one line (never pydantic's report, which would also echo the value: a token, say)."""
    try:
        return cls(**values)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "settings"
            problems.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"invalid setting {'; '.join(problems)}") from e
