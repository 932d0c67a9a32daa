"""Graph state: small and serialisable (ids, scores, image references; never image bytes or model objects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from langchain_core.messages import AnyMessage
from langgraph.graph import add_messages

from retllm.scorers.turns import Turn
from retllm.types import Hit


@dataclass(kw_only=True)
class InputState:
    """A search request: the same options as ``retllm search``.

    Attributes:
        query: Query text.
        image: Query image: a file path or an http(s) URL.
        k: Coarse pool size (how many candidates the MLLM judges).
        top: How many ranked hits to keep (default all k).
        min_score: Drop hits whose fine score is below it (default ``RETLLM_MIN_SCORE``).
        collection: Collection (default ``RETLLM_COLLECTION``).
        filter: Payload filter, ``{"key": value}`` (a list value means any of them).
        vector: ``auto``, ``image``, ``text`` or ``fused``.
    """

    query: str | None = None
    image: str | None = None
    k: int = 10
    top: int | None = None
    min_score: float | None = None
    collection: str | None = None
    filter: dict[str, Any] | None = None
    vector: str = "auto"


@dataclass(kw_only=True)
class State(InputState):
    """The retrieval graph's state.

    Attributes:
        messages: The tool calls and tool messages of the run (coarse search, revisits), in order.
        search: The coarse search's result (collection, query image reference, coarse hits).
        candidates: What the MLLM judges (id, text, image reference, coarse score); the revisit tool reads it.
        turns: One scoring turn per candidate (:class:`retllm.scorers.turns.Turn`).
        calls: Which turn made each pending revisit call (graph call id -> turn key), for the revisit tool.
        hits: The final ranked hits with provenance.
        error: Why the search ended without results (a tool error the caller can fix).
    """

    messages: Annotated[list[AnyMessage], add_messages] = field(default_factory=list)
    search: dict[str, Any] | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    error: str | None = None
