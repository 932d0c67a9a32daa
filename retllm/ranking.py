"""Final ranking: one total order over a query's hits, whatever mix of scoring methods produced them.

The order, as a sort key (so it is transitive, unlike a comparator with a tolerance):

1. Pairs the model judged (``logits``, ``logprobs``, ``verbalized``) come before pairs that fell back
   (``coarse``: the MLLM could not score them, or gave a non-finite score); fallbacks keep their coarse
   order among themselves.
2. Judged pairs by score, high first. Scores are compared on a grid of ``tie_tolerance`` (1e-6), so
   floating-point jitter between equal scores decides nothing, except for two scores that straddle a
   grid line, which keep their score order (any grid has such edges).
3. A ``verbalized`` answer is a bare True/False with no probability. It ranks as the least confident
   answer of its kind: ``True`` just below every graded pair (``logits``/``logprobs``) scoring above
   0.5, ``False`` just above every graded pair scoring below 0.5 (graded pairs at exactly 0.5 sit
   between the two). A hard 1.0 never outranks a graded 0.99.
4. Ties: lower answer entropy (the model was surer), then the coarse order (the index's rank, which for
   ``auto`` search is the fused order: cosines of different vector kinds are not comparable).

``min_score`` keeps the hits that provably reach it: a graded score ``>= min_score``; a verbalized
``True`` counts as 0.5 and a ``False`` as 0.0; a fallback has no fine score and never passes.
"""

from __future__ import annotations

import logging
import math

from retllm.scorers.base import Score
from retllm.types import Hit

log = logging.getLogger(__name__)

GRADED = frozenset({"logits", "logprobs"})
FALLBACK = "coarse"


def _bucket(value: float, tol: float) -> int:
    return math.floor(value / tol + 0.5)


def _fine_score(h: Hit) -> float | None:
    """The hit's fine score, or None when it has none to rank by (a fallback, a non-finite value)."""
    if h.method == FALLBACK or h.score is None or not math.isfinite(h.score):
        return None
    return h.score


def rank_key(h: Hit, tie_tolerance: float = 1e-6) -> tuple[int, int, int, float, int]:
    """The sort key of :func:`apply_scores` (smaller sorts first)."""
    coarse_rank = h.coarse_rank if h.coarse_rank is not None else h.rank
    score = _fine_score(h)
    if score is None:
        return (1, 0, 0, 0.0, coarse_rank)
    if h.method in GRADED:
        level, sub = score, 0
    else:  # verbalized: the least confident answer of its kind
        level, sub = 0.5, (-1 if score >= 0.5 else 1)
    entropy = h.entropy if h.entropy is not None else math.inf
    return (0, -_bucket(level, tie_tolerance), sub, entropy, coarse_rank)


def passes(h: Hit, min_score: float) -> bool:
    """Whether a re-ranked hit provably reaches ``min_score`` (see the module docstring)."""
    score = _fine_score(h)
    if score is None:
        return False
    if h.method in GRADED:
        return score >= min_score
    return (0.5 if score >= 0.5 else 0.0) >= min_score


def apply_scores(
    hits: list[Hit], scores: list[Score], *, tie_tolerance: float = 1e-6, min_score: float | None = None
) -> list[Hit]:
    """Attach fine scores (with provenance) to coarse hits and re-rank them in the order described above.

    Args:
        min_score: Drop hits that do not reach it (``None`` keeps all), so a query can return nothing.
    """
    if len(hits) != len(scores):
        raise ValueError(f"{len(hits)} hits but {len(scores)} scores")
    merged = [
        h.model_copy(
            update={
                "score": s.value,
                "p_true": s.p_true,
                "entropy": s.entropy,
                "method": s.method,
                "retraced": s.retraced,
                "revisits": s.revisits,
                "error": s.error,
                "coarse_rank": h.rank,
            }
        )
        for h, s in zip(hits, scores, strict=True)
    ]
    ranked = sorted(merged, key=lambda h: rank_key(h, tie_tolerance))
    if min_score is not None:
        failed = sum(1 for h in ranked if _fine_score(h) is None)
        if failed:
            log.warning("%d hit(s) fell back to coarse scores and cannot pass min_score %.3g", failed, min_score)
        ranked = [h for h in ranked if passes(h, min_score)]
    return [h.model_copy(update={"rank": i + 1}) for i, h in enumerate(ranked)]
