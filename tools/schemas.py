"""Typed arguments and results of the tools. Field descriptions are prompts: the calling model reads them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

FilterValue = StrictStr | StrictInt | StrictBool  # what a payload match takes (no floats: exact match only)
VectorChoice = Literal["auto", "image", "text", "fused"]

MAX_QUERY_CHARS = 2000
"""Most characters of query text a request takes: a description of what to find (~300 English words), not a
document. The MLLM sees at most RETLLM_MAX_QUERY_TOKENS of it (see :mod:`retllm.scorers.base`)."""

_QUERY = (
    f"What to find, in plain words (e.g. 'a red bicycle at night'), at most {MAX_QUERY_CHARS} characters. "
    "Optional when an image is given."
)
_IMAGE = (
    "An image to search with: a local file path or an http(s) URL, or 'attached' for the image the user "
    "attached most recently in this conversation ('attached:2' for the second image of that message)."
)
_K = "How many candidates the fast first stage passes to the visual judge (more is slower but finds more)."
_COLLECTION = "Collection to search (default: the configured one). list_collections shows what exists."
_FILTER = (
    'Only items whose stored fields equal these values, e.g. {"time": "night"}; a list means any of them, '
    'e.g. {"colour": ["red", "blue"]}.'
)
_VECTOR = "Which stored embedding to match: auto (all kinds, fused by rank), image, text or fused."


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class NoArgs(_Args):
    """No arguments."""


class CoarseSearchArgs(_Args):
    """Arguments of ``coarse_search``."""

    query: str | None = Field(default=None, max_length=MAX_QUERY_CHARS, description=_QUERY)
    image: str | None = Field(default=None, description=_IMAGE)
    k: int = Field(default=10, ge=1, le=1000, description=_K)
    collection: str | None = Field(default=None, description=_COLLECTION)
    filter: dict[str, FilterValue | list[FilterValue]] | None = Field(default=None, description=_FILTER)
    vector: VectorChoice = Field(default="auto", description=_VECTOR)

    @field_validator("query", mode="before")
    @classmethod
    def _bounded_query(cls, v: Any) -> Any:
        if isinstance(v, str) and len(v) > MAX_QUERY_CHARS:
            raise ValueError(
                f"the query is {len(v):,} characters; at most {MAX_QUERY_CHARS:,} are taken: describe what to find "
                "in fewer words"
            )
        return v

    @field_validator("filter", mode="before")
    @classmethod
    def _usable_filter(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            return v  # the type check says what is wrong
        for key, value in v.items():
            if not isinstance(key, str) or not key.strip():
                raise ValueError("filter keys must be field names, not empty")
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ValueError(f"filter {key!r}: give at least one value")
            bad = [
                x
                for x in values
                if not isinstance(x, str | int | bool) or (isinstance(x, int) and not -(2**63) <= x < 2**63)
            ]
            if bad:
                raise ValueError(
                    f"filter {key!r}: values are matched exactly and must be strings, integers or booleans "
                    f"(64-bit), or a list of them; got {bad[0]!r}"
                )
        return v

    @model_validator(mode="after")
    def _something_to_search(self) -> CoarseSearchArgs:
        if not (self.query and self.query.strip()) and not self.image and not getattr(self, "like", None):
            raise ValueError("give a query text, an image, or both")
        return self


class SearchArgs(CoarseSearchArgs):
    """Arguments of ``multimodal_search``."""

    like: int | None = Field(
        default=None,
        ge=1,
        description="Search with the image of result number N (its rank) of the previous search in this "
        "conversation, e.g. 2 for 'more like the second one'. Combine with query to add words.",
    )
    top: int = Field(default=5, ge=1, le=1000, description="How many ranked results to return.")
    min_score: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Drop results the judge scores below this (0-1, its probability that the result matches). "
        "When nothing is left, nothing in the collection matches well.",
    )


class RevisitArgs(BaseModel):
    """Arguments of ``revisit_image``: typed for the schema the model reads, checked by
    :func:`retllm.scorers.turns.check_revisit` alone, so a revisit in the graph is judged exactly as in the library
    loop (extra keys ignored, a box of strings refused, the same messages)."""

    model_config = ConfigDict(
        extra="ignore", arbitrary_types_allowed=True, json_schema_extra={"required": ["candidate_id"]}
    )

    arguments_error: SkipJsonSchema[str | None] = None  # set by the scoring node for a call that was not JSON
    candidate_id: Annotated[Any, WithJsonSchema({"type": "string"})] = Field(
        default=None, description="The id of the candidate whose image to look at again."
    )
    box: Annotated[
        Any, WithJsonSchema({"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4})
    ] = Field(
        default=None,
        description="Optional zoom region [x0, y0, x1, y1] as fractions (0-1) of the image's width and height; "
        "omit it to see the whole image again.",
    )


class NewItem(_Args):
    """One item to add."""

    text: str | None = Field(default=None, description="The item's text (a caption, a document).")
    image: str | None = Field(default=None, description="The item's image: a local file path or an http(s) URL.")
    id: str | None = Field(default=None, description="Optional id; by default one derived from the content.")
    payload: dict[str, Any] = Field(default_factory=dict, description="Extra fields to store and filter on.")


class AddItemsArgs(_Args):
    """Arguments of ``add_items``."""

    items: list[NewItem] = Field(min_length=1, max_length=1000, description="Items to add (text, image or both).")
    collection: str | None = Field(default=None, description="Collection to add to (created when missing).")


class DeleteItemsArgs(_Args):
    """Arguments of ``delete_items``."""

    ids: list[str] = Field(min_length=1, max_length=10000, description="Ids of the items to delete.")
    collection: str | None = Field(default=None, description="Collection to delete from (default: the configured one).")


class HitOut(BaseModel):
    """One ranked result with its provenance."""

    rank: int = Field(description="Final rank (1 = best).")
    id: str
    score: float | None = Field(description="The judge's probability that it matches (null: not judged).")
    p_true: float | None = Field(
        default=None, description="The judge's raw P(True) under its whole vocabulary (null where unknown)."
    )
    entropy: float | None = Field(
        default=None, description="Entropy (nats) of the judge's answer distribution (ties go to the surer)."
    )
    coarse_rank: int | None = Field(default=None, description="Rank in the fast first stage.")
    coarse_score: float = Field(description="Embedding similarity in the first stage.")
    method: str | None = Field(
        default=None, description="How the score was read: logits, logprobs, verbalized, or coarse (not judged)."
    )
    retraced: int | None = Field(default=None, description="Decoder layer where visual retracing fired, if it did.")
    revisits: int | None = Field(default=None, description="How often the judge looked at the image again.")
    text: str | None = None
    image: str | None = Field(default=None, description="Image reference (path or URL) of the item.")
    payload: dict[str, Any] = Field(default_factory=dict)
    vector: str | None = None
    error: str | None = None


class SearchOut(BaseModel):
    """A search's results: ranked hits with provenance, and what was searched."""

    collection: str
    query: str | None = None
    image: str | None = Field(default=None, description="Reference of the query image, if any.")
    scorer: str | None = Field(default=None, description="The judge that re-ranked (null: first stage only).")
    k: int
    min_score: float | None = None
    hits: list[HitOut]


class CollectionInfo(BaseModel):
    name: str
    items: int | None = Field(description="Items stored (null: the collection is broken).")
    dim: int | None = None
    broken: str | None = Field(
        default=None, description="Why the collection cannot be used, and how to recover it (null: it works)."
    )


class CollectionsOut(BaseModel):
    collections: list[CollectionInfo]


class AddOut(BaseModel):
    collection: str
    added: int
    already_present: int
    ids: list[str | None] = Field(description="Ids of the items given, in order (null where the item was skipped).")
    skipped: list[dict[str, str]] = Field(description="Items that could not be added, with the reason.")


class DeleteOut(BaseModel):
    collection: str
    deleted: int
    missing: list[str] = Field(description="Ids that were not in the collection.")
