"""Request and response bodies of the service (the OpenAPI schema at ``/docs`` is built from these)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from retllm.tools.schemas import CoarseSearchArgs, HitOut

MAX_MESSAGE_CHARS = 20_000
"""Longest user message the chat takes (``/chat``, and each message of the OpenAI route)."""
MAX_CONVERSATION_CHARS = 200_000
"""Most text in one OpenAI-route request (it sends the whole conversation each time)."""


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
    """One user turn of a conversation: a message, or the answer to the action a ``confirm`` event asked about."""

    model_config = ConfigDict(extra="forbid")

    thread_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The conversation to continue (default: a new one; its id comes back in the first event).",
    )
    message: str | None = Field(
        default=None, min_length=1, max_length=MAX_MESSAGE_CHARS, description="What the user says."
    )
    images: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Attached images: data:image/...;base64 URLs or http(s) URLs.",
    )
    confirm: bool | None = Field(
        default=None,
        description="Instead of a message: the user's answer to what the conversation's `confirm` event asked "
        "(true: do it, false: do not). Needs thread_id.",
    )

    @model_validator(mode="after")
    def _message_or_confirm(self) -> ChatRequest:
        if self.confirm is None and self.message is None:
            raise ValueError("give a message (or confirm: true/false, to answer a confirm event)")
        if self.confirm is not None and (self.message is not None or self.images):
            raise ValueError("give a message (with images) or confirm, not both")
        if self.confirm is not None and self.thread_id is None:
            raise ValueError("confirm answers what a conversation waits for: give its thread_id")
        return self

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
