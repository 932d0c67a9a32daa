"""Final ranking: fine score desc, then answer entropy asc (tie-break), then coarse score desc."""

from __future__ import annotations

from functools import cmp_to_key

from retllm.scorers.base import Score
from retllm.types import Hit


def _cmp(tol: float):  # noqa: ANN202
    def cmp(a: Hit, b: Hit) -> int:
        sa, sb = a.score if a.score is not None else a.coarse_score, b.score if b.score is not None else b.coarse_score
        if abs(sa - sb) > tol:
            return -1 if sa > sb else 1
        ea = a.entropy if a.entropy is not None else float("inf")
        eb = b.entropy if b.entropy is not None else float("inf")
        if ea != eb:
            return -1 if ea < eb else 1
        if a.coarse_score != b.coarse_score:
            return -1 if a.coarse_score > b.coarse_score else 1
        return 0

    return cmp


def apply_scores(hits: list[Hit], scores: list[Score], *, tie_tolerance: float = 1e-6) -> list[Hit]:
    """Attach fine scores (with provenance) to coarse hits and re-rank them.

    Scores equal within ``tie_tolerance`` are ordered by lower entropy, then by higher coarse score.
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
    ranked = sorted(merged, key=cmp_to_key(_cmp(tie_tolerance)))
    return [h.model_copy(update={"rank": i + 1}) for i, h in enumerate(ranked)]
