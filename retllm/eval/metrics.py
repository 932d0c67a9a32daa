"""Retrieval metrics over rankings that are already in their final order.

Rankings are ordered lists of candidate ids: the ranker has broken every tie (see
:mod:`retllm.ranking`), and nothing here re-sorts. A query's positives are a set, so a text query with
five captions' worth of matches, or an image with five captions, counts as found when any one of them
is within the cut-off.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)


def recall_at_k(ranked: Sequence[str], positives: set[str], k: int) -> float:
    """Whether any positive is within the first ``k`` candidates.

    Args:
        ranked: Candidate ids, best first. Fewer than ``k`` (or none) is fine.
        positives: The ids that count as a match; must not be empty.
        k: The cut-off, at least 1.

    Returns:
        1.0 if a positive is among ``ranked[:k]``, else 0.0.

    Raises:
        ValueError: ``k`` is below 1 or ``positives`` is empty (recall is undefined then).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not positives:
        raise ValueError("recall is undefined for a query with no positives")
    return 1.0 if any(c in positives for c in ranked[:k]) else 0.0


def precision_at_1(ranked: Sequence[str], positives: set[str]) -> float:
    """Whether the top candidate is a positive (MMEB's precision@1: 1.0 or 0.0 for one query).

    Raises:
        ValueError: ``positives`` is empty.
    """
    return recall_at_k(ranked, positives, 1)


def mean_recall(
    rankings: Mapping[str, Sequence[str]],
    positives: Mapping[str, set[str]],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k for each ``k``, averaged over the queries of ``positives``.

    ``positives`` defines the query set. A query missing from ``rankings`` counts as a miss at every
    ``k`` and is logged as a warning (so a run that lost queries cannot look better than it is);
    rankings of queries that ``positives`` does not name are ignored, with a warning.

    Args:
        rankings: Query id -> candidate ids, best first.
        positives: Query id -> the candidate ids that match it.
        ks: The cut-offs.

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ...}``, each in [0, 1].

    Raises:
        ValueError: No queries, a query with no positives (named), or a cut-off below 1.
    """
    if not positives:
        raise ValueError("no queries to evaluate")
    if bad_k := [k for k in ks if k < 1]:
        raise ValueError(f"cut-offs must be at least 1, got {bad_k}")
    if empty := [q for q, pos in positives.items() if not pos]:
        raise ValueError(f"{len(empty)} queries have no positives, e.g. {empty[:5]}")
    missing = [q for q in positives if q not in rankings]
    if missing:
        log.warning(
            "%d of %d queries have no ranking (counted as misses), e.g. %s", len(missing), len(positives), missing[:5]
        )
    if extra := [q for q in rankings if q not in positives]:
        log.warning("%d rankings are for unknown queries (ignored), e.g. %s", len(extra), extra[:5])
    out = {}
    for k in ks:
        hits = sum(recall_at_k(rankings.get(q, ()), pos, k) for q, pos in positives.items())
        out[f"R@{k}"] = hits / len(positives)
    return out


def accuracy(choices: Mapping[str, object], answers: Mapping[str, object]) -> float:
    """The share of questions whose choice equals the answer (listwise use: SugarCrepe, MMEB).

    ``answers`` defines the question set; a question with no choice counts as wrong (logged), choices
    for unknown questions are ignored.

    Args:
        choices: Question id -> what the ranker chose (a candidate id or index).
        answers: Question id -> the right choice.

    Raises:
        ValueError: ``answers`` is empty.
    """
    if not answers:
        raise ValueError("no questions to evaluate")
    if missing := [q for q in answers if q not in choices]:
        log.warning(
            "%d of %d questions have no choice (counted as wrong), e.g. %s", len(missing), len(answers), missing[:5]
        )
    return sum(q in choices and choices[q] == a for q, a in answers.items()) / len(answers)
