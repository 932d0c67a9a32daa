"""The retrieval pipeline (no LangGraph): coarse top-k from the index, then (optionally) fine scores."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from retllm import events
from retllm.embedders.base import Embedder
from retllm.errors import Cancelled, ConfigError
from retllm.events import EventSink
from retllm.images import ImageLimits, is_url
from retllm.index.base import FilterSpec, Index, SearchResult
from retllm.ranking import apply_scores
from retllm.scorers.base import Candidate, Score, Scorer, check_not_all_failed
from retllm.types import Hit, Query, VectorName

log = logging.getLogger(__name__)


def hit_from_result(r: SearchResult, rank: int) -> Hit:
    """A coarse :class:`Hit` from an index result."""
    p: Mapping[str, Any] = r.payload
    return Hit(
        id=r.id,
        rank=rank,
        coarse_score=r.score,
        text=p.get("text"),
        image=p.get("image"),
        payload=dict(p.get("meta") or {}),
        vector=r.vector,
    )


class Retriever:
    """Coarse search over one collection; the fine stage plugs in as a scorer."""

    def __init__(
        self,
        embedder: Embedder,
        index: Index,
        collection: str,
        *,
        scorer: Scorer | None = None,
        fusion_weight: float = 0.5,
        limits: ImageLimits | None = None,
    ) -> None:
        self.embedder = embedder
        self.index = index
        self.collection = collection
        self.scorer = scorer
        self.fusion_weight = fusion_weight
        self.limits = limits or ImageLimits()

    def coarse(
        self, query: Query, *, k: int = 10, flt: FilterSpec | None = None, using: VectorName | None = None
    ) -> list[Hit]:
        """Top-k by cosine similarity; checks the collection exists and its size fits the embedder."""
        self.index.check_dim(self.collection, self.embedder.dim)
        image = None
        if query.image is not None:
            image = self.limits.load(query.image, min_side=self.embedder.input_side)
        vectors = self.embedder.embed_query(
            query.text if query.text and query.text.strip() else None, image, self.fusion_weight
        )
        results = self.index.search(self.collection, vectors, limit=k, using=using, flt=flt)
        return [hit_from_result(r, i + 1) for i, r in enumerate(results)]

    def search(
        self,
        query: Query,
        *,
        k: int = 10,
        top: int | None = None,
        flt: FilterSpec | None = None,
        using: VectorName | None = None,
        coarse_only: bool = False,
        min_score: float | None = None,
        on_event: EventSink | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Hit]:
        """Coarse top-k, then (unless ``coarse_only`` or no scorer) fine scores and re-ranking.

        Args:
            k: Coarse pool size: how many candidates the MLLM sees.
            top: How many final hits to return (default all k).
            min_score: Drop hits whose fine score is below it (two-way P(True); see :mod:`retllm.ranking`),
                so a query with no good match returns nothing. Needs the fine stage.
            on_event: Receives the progress events of :mod:`retllm.events` (stage, candidate, revisit, final).
            cancel: Set when the caller has gone: no more model work starts for this search.

        Raises:
            ScoringError: The fine stage failed for every candidate.
            EndpointError: The scorer's endpoint refused the request (bad key, unknown model, ...).
            Cancelled: ``cancel`` was set before the search finished.
        """
        scorer = None if coarse_only else self.scorer
        if min_score is not None and scorer is None:
            raise ConfigError("min_score filters fine scores: it needs the fine stage (a scorer, not coarse-only)")
        emit = on_event or (lambda _e: None)
        fetched = query
        if scorer is not None and is_url(query.image):  # download the query image once for both stages
            fetched = query.model_copy(update={"image": self.limits.read(query.image)})
        Cancelled.check(cancel)
        hits = self.coarse(fetched, k=k, flt=flt, using=using)
        emit(events.stage("coarse", len(hits)))
        if scorer is not None:
            hits = self.rerank(
                query if scorer.prefers_urls else fetched, hits, min_score=min_score, on_event=on_event, cancel=cancel
            )
        hits = hits[:top] if top else hits
        emit(events.final(hits))
        return hits

    def rerank(
        self,
        query: Query,
        hits: list[Hit],
        *,
        candidate_text: bool = True,
        min_score: float | None = None,
        on_event: EventSink | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Hit]:
        """Fine-score coarse hits and re-rank them (needs a scorer).

        Args:
            candidate_text: Show the MLLM each candidate's text; ``False`` judges images alone
                (text-to-image retrieval over captioned images, as in the demo).
            min_score: Drop hits below it (see :meth:`search`).
            cancel: Set when the caller has gone (:class:`~retllm.errors.Cancelled`).
        """
        if self.scorer is None:
            raise ConfigError("re-ranking needs a scorer (RETLLM_SCORER)")
        if not hits:
            return hits
        if on_event is not None:
            on_event(events.stage("fine", len(hits)))
        cands = candidates_of(hits, candidate_text=candidate_text)
        Cancelled.check(cancel)
        if type(self.scorer).score is Scorer.score:
            scores = self.scorer.score(query, cands, on_event=on_event, cancel=cancel)
        else:  # a scorer written against the older API (score() only): no per-candidate events, cancel after it
            scores = self.scorer.score(query, cands)
            Cancelled.check(cancel)
        return finish_rerank(hits, scores, min_score=min_score)


def candidates_of(hits: Sequence[Hit], *, candidate_text: bool = True) -> list[Candidate]:
    """What the fine stage sees of coarse hits (the same for the library pipeline and the agent graph)."""
    return [Candidate(h.id, h.text if candidate_text else None, h.image, h.coarse_score) for h in hits]


def finish_rerank(hits: list[Hit], scores: Sequence[Score], *, min_score: float | None = None) -> list[Hit]:
    """Re-rank coarse hits by their fine scores (one per hit, in order); fails when every pair failed."""
    check_not_all_failed(scores)
    failed = [s for s in scores if s.failed]
    if failed:
        log.warning(
            "%d of %d candidates could not be scored and rank last (first: %s)",
            len(failed),
            len(scores),
            failed[0].error,
        )
    return apply_scores(hits, list(scores), min_score=min_score)
