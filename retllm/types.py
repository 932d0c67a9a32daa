"""Core value types: items, queries, hits and scores."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from retllm.errors import EmptyQueryError
from retllm.payload import MAX_ID_CHARS, check_payload, check_string, check_text

ImageSource = str | Path | bytes
"""A local path, an http(s) URL, or encoded image bytes."""

VectorName = Literal["image", "text", "fused"]
VECTOR_NAMES: tuple[VectorName, ...] = ("image", "text", "fused")

# Point ids in Qdrant must be integers or UUIDs; user ids are arbitrary strings, mapped stably.
_ID_NAMESPACE = uuid.UUID("6f1c7c2e-5b1a-4d36-9a53-2f4f3c1e8b70")


def point_id(item_id: str) -> str:
    """The Qdrant point id (a UUID string) for a retllm item id."""
    return str(uuid.uuid5(_ID_NAMESPACE, item_id))


def content_id(text: str | None, image_bytes: bytes | None) -> str:
    """Stable id from content: the same image bytes and text always give the same id."""
    h = hashlib.sha256()
    h.update(b"img:")
    h.update(hashlib.sha256(image_bytes).digest() if image_bytes is not None else b"-")
    h.update(b"|txt:")
    h.update(text.encode("utf-8") if text is not None else b"-")
    return h.hexdigest()[:32]


class Item(BaseModel):
    """One corpus entry: text, image, or both, plus a JSON payload.

    Attributes:
        id: Caller's id; when ``None`` ingest derives it from the content (see :func:`content_id`).
        text: Optional text.
        image: Optional image as a local path, an http(s) URL, or encoded bytes.
        payload: JSON fields, stored and returned with hits, usable in filters.

    Raises:
        BadItemError: at construction, for an id, text or payload outside :mod:`retllm.payload`'s
            bounds (every face builds its items here, so one check covers them all).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str | None = None
    text: str | None = None
    image: ImageSource | None = None
    payload: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_empty(self) -> Item:
        if self.text is None and self.image is None:
            raise ValueError("an item needs text, an image, or both")
        if self.id is not None:
            check_text(self.id, "id", limit=MAX_ID_CHARS)
        if self.text is not None:
            check_text(self.text)
        if isinstance(self.image, str):
            check_string(self.image, "image")
        check_payload(self.payload)
        return self


class Query(BaseModel):
    """A search query: text, image, or both."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str | None = None
    image: ImageSource | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> Query:
        if (self.text is None or not self.text.strip()) and self.image is None:
            raise EmptyQueryError("empty query: give query text, --image, or both")
        if self.text is not None:
            check_string(self.text, "query text")
        return self

    @property
    def modality(self) -> str:
        """``text``, ``image`` or ``text+image``."""
        has_text = bool(self.text and self.text.strip())
        if has_text and self.image is not None:
            return "text+image"
        return "text" if has_text else "image"


class Hit(BaseModel):
    """One search result with its provenance.

    ``coarse_score`` is the embedding stage's cosine similarity on the named vector ``vector`` (for ``auto``
    search with ``rank`` fusion, the kind that ranked the item best), or the fused score when ``vector`` is
    ``rrf``/``dbsf``; ``rank`` is the order. The fine-stage fields stay ``None`` when the fine stage did not
    run (``--coarse-only``); ``score`` is also ``None`` for a pair the scorer could not judge.
    """

    id: str
    rank: int
    coarse_score: float
    text: str | None = None
    image: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    vector: str | None = None
    score: float | None = None
    p_true: float | None = None
    entropy: float | None = None
    method: str | None = None
    retraced: int | None = None
    revisits: int | None = None
    error: str | None = None
    coarse_rank: int | None = None
