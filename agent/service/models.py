"""Request and response bodies of the service (the OpenAPI schema at ``/docs`` is built from these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from retllm.tools.schemas import CoarseSearchArgs, HitOut


class SearchRequest(CoarseSearchArgs):
    """A search: the options of ``retllm search``. ``image``: an http(s) URL, a ``data:image/...;base64`` URL, or a
    path under the configured roots (``RETLLM_FILE_ROOTS``); or upload the file (multipart field ``image``)."""

    top: int | None = Field(
        default=None, ge=1, le=1000, description="How many ranked results to return (default: all k, as the CLI)."
    )
    min_score: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Drop results the judge scores below this (0-1)."
    )
    coarse_only: bool = Field(default=False, description="Skip the MLLM: the coarse order only.")


class PublicHit(HitOut):
    """One ranked result; ``image`` and ``thumbnail`` are URLs served by this service."""

    thumbnail: str | None = Field(default=None, description="URL of a small version of the image.")


class PublicSearch(BaseModel):
    """A search's ranked results with provenance."""

    collection: str
    query: str | None = None
    scorer: str | None = Field(default=None, description="The judge that re-ranked (null: coarse order only).")
    k: int
    min_score: float | None = None
    hits: list[PublicHit]


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] = Field(min_length=1, max_length=10_000)
    collection: str | None = None


class ChatRequest(BaseModel):
    """One user turn of a conversation."""

    model_config = ConfigDict(extra="forbid")

    thread_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The conversation to continue (default: a new one; its id comes back in the first event).",
    )
    message: str = Field(min_length=1, max_length=20_000, description="What the user says.")
    images: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Attached images: data:image/...;base64 URLs or http(s) URLs.",
    )

    @field_validator("thread_id")
    @classmethod
    def _not_dots(cls, v: str | None) -> str | None:
        if v is not None and not v.strip("."):
            raise ValueError("a thread id cannot be only dots")
        return v


class ThreadInfo(BaseModel):
    thread_id: str
    title: str
    updated: str | None = None


class ThreadTurn(BaseModel):
    role: str
    text: str = ""
    images: int = 0
    search: dict[str, Any] | None = None
