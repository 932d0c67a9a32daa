from __future__ import annotations

import math

import pytest

from retllm.ranking import apply_scores
from retllm.scorers.base import Score, two_way
from retllm.types import Hit


def hit(i: str, coarse: float, rank: int) -> Hit:
    return Hit(id=i, rank=rank, coarse_score=coarse)


def test_rank_by_score_then_entropy_then_coarse() -> None:
    hits = [hit("a", 0.9, 1), hit("b", 0.8, 2), hit("c", 0.7, 3), hit("d", 0.6, 4)]
    scores = [Score(0.5, entropy=2.0), Score(0.9, entropy=3.0), Score(0.5 + 1e-9, entropy=1.0), Score(0.5, entropy=2.0)]
    out = apply_scores(hits, scores)
    assert [h.id for h in out] == ["b", "c", "a", "d"]  # c ties a (within 1e-6) but is surer; a beats d on coarse
    assert [h.rank for h in out] == [1, 2, 3, 4] and [h.coarse_rank for h in out] == [2, 3, 1, 4]
    assert out[0].score == 0.9 and out[0].method == "logits"


def test_coarse_fallbacks_keep_provenance() -> None:
    out = apply_scores([hit("a", 0.3, 1)], [Score(0.3, method="coarse", error="Timeout")])
    assert out[0].method == "coarse" and out[0].error == "Timeout"
    with pytest.raises(ValueError):
        apply_scores([hit("a", 0.3, 1)], [])


def test_two_way_is_stable() -> None:
    assert two_way(0.0, 0.0) == 0.5
    assert two_way(1000.0, 0.0) == 1.0 and two_way(0.0, 1000.0) == 0.0
    assert two_way(2.0, 1.0) == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-12)
