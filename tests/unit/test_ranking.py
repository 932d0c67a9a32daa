from __future__ import annotations

import itertools
import math

import pytest

from retllm.ranking import apply_scores, passes, rank_key
from retllm.scorers.base import Score, two_way
from retllm.types import Hit


def hit(i: str, coarse: float, rank: int) -> Hit:
    return Hit(id=i, rank=rank, coarse_score=coarse)


def hits_for(n: int) -> list[Hit]:
    return [hit(f"h{i}", 0.9 - i / 100, i + 1) for i in range(n)]


def test_rank_by_score_then_entropy_then_coarse() -> None:
    hits = [hit("a", 0.9, 1), hit("b", 0.8, 2), hit("c", 0.7, 3), hit("d", 0.6, 4)]
    scores = [Score(0.5, entropy=2.0), Score(0.9, entropy=3.0), Score(0.5 + 1e-9, entropy=1.0), Score(0.5, entropy=2.0)]
    out = apply_scores(hits, scores)
    assert [h.id for h in out] == ["b", "c", "a", "d"]  # c ties a (within 1e-6) but is surer; a beats d on coarse
    assert [h.rank for h in out] == [1, 2, 3, 4] and [h.coarse_rank for h in out] == [2, 3, 1, 4]
    assert out[0].score == 0.9 and out[0].method == "logits"


def test_fallbacks_rank_after_every_scored_pair_in_coarse_order() -> None:
    """A timed-out pair with cosine 0.30 must not outrank real scores of 0.2 (nor of 0.001)."""
    hits = [hit("t1", 0.30, 1), hit("s1", 0.25, 2), hit("t2", 0.29, 3), hit("s2", 0.20, 4), hit("s3", 0.10, 5)]
    scores = [
        Score.fallback("APITimeoutError: timed out"),
        Score(0.2, entropy=1.0, method="logprobs"),
        Score.fallback("InternalServerError: boom"),
        Score(0.001, entropy=1.0),
        Score(0.7, entropy=1.0),
    ]
    out = apply_scores(hits, scores)
    assert [h.id for h in out] == ["s3", "s1", "s2", "t1", "t2"]
    fallbacks = out[3:]
    assert all(h.method == "coarse" and h.score is None and h.p_true is None and h.error for h in fallbacks)
    assert [h.coarse_rank for h in fallbacks] == [1, 3]
    assert "score" in out[3].model_dump() and out[3].model_dump()["score"] is None  # JSON: null, not a cosine


def test_a_verbalized_answer_ranks_as_the_least_confident_answer_of_its_kind() -> None:
    hits = hits_for(7)
    scores = [
        Score(1.0, method="verbalized"),  # bare True, best coarse
        Score(0.99, entropy=0.1, method="logprobs"),
        Score(0.51, entropy=0.5, method="logits"),
        Score(0.0, method="verbalized"),  # bare False
        Score(0.49, entropy=0.5, method="logprobs"),
        Score(0.5, entropy=0.6, method="logprobs"),
        Score(1.0, method="verbalized"),  # another bare True, lower coarse
    ]
    out = apply_scores(hits, scores)
    assert [h.id for h in out] == ["h1", "h2", "h0", "h6", "h5", "h3", "h4"]
    assert [h.rank for h in out] == list(range(1, 8))


def test_the_order_is_total_and_ignores_input_order() -> None:
    """A sort key, not a comparator with a tolerance: every permutation of a tricky set gives one order."""
    base = [
        Score(0.5, entropy=1.0),
        Score(0.5 + 6e-7, entropy=2.0),  # within the tolerance of its neighbours on a chain
        Score(0.5 + 1.2e-6, entropy=0.5),
        Score(0.5 + 5e-9, entropy=1.0),  # floating-point jitter only
        Score.fallback("x"),
        Score(1.0, method="verbalized"),
        Score(0.0, method="verbalized"),
    ]
    hits = hits_for(len(base))
    want = [h.id for h in apply_scores(hits, base)]
    for perm in itertools.islice(itertools.permutations(range(len(base))), 0, None, 97):
        got = apply_scores([hits[i] for i in perm], [base[i] for i in perm])
        assert [h.id for h in got] == want
    keys = [rank_key(h) for h in apply_scores(hits, base)]
    assert keys == sorted(keys)
    jitter = apply_scores(hits_for(2), [Score(0.3, entropy=1.0), Score(0.3 + 5e-9, entropy=1.0)])
    assert [h.id for h in jitter] == ["h0", "h1"]  # the jitter does not beat the coarse order


def test_min_score_keeps_what_provably_reaches_it() -> None:
    hits = hits_for(6)
    scores = [
        Score(0.9, entropy=1.0),
        Score(0.3, entropy=1.0, method="logprobs"),
        Score(1.0, method="verbalized"),
        Score(0.0, method="verbalized"),
        Score.fallback("timeout"),
        Score(0.5, entropy=1.0),
    ]
    assert [h.id for h in apply_scores(hits, scores, min_score=0.5)] == ["h0", "h2", "h5"]
    assert [h.rank for h in apply_scores(hits, scores, min_score=0.5)] == [1, 2, 3]
    assert [h.id for h in apply_scores(hits, scores, min_score=0.6)] == ["h0"]
    assert apply_scores(hits, scores, min_score=0.95) == []  # a query can honestly return nothing
    assert len(apply_scores(hits, scores, min_score=0.0)) == 5  # the fallback has no fine score to pass
    assert not passes(Hit(id="x", rank=1, coarse_score=0.99, score=None, method="coarse"), 0.0)


def test_mismatched_lengths_are_an_error() -> None:
    with pytest.raises(ValueError):
        apply_scores([hit("a", 0.3, 1)], [])


def test_two_way_is_stable() -> None:
    assert two_way(0.0, 0.0) == 0.5
    assert two_way(1000.0, 0.0) == 1.0 and two_way(0.0, 1000.0) == 0.0
    assert two_way(2.0, 1.0) == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-12)


def test_ties_follow_the_coarse_order_not_the_coarse_score() -> None:
    """With fused search the coarse scores of different vector kinds are not comparable (text-text ~0.7,
    text-image ~0.3): ties go by the coarse rank the index gave."""
    hits = [Hit(id="img", rank=1, coarse_score=0.31), Hit(id="txt", rank=2, coarse_score=0.74)]
    same = [Score(0.6, entropy=1.0), Score(0.6, entropy=1.0)]
    assert [h.id for h in apply_scores(hits, same)] == ["img", "txt"]
    failed = [Score.fallback("x"), Score.fallback("y")]
    assert [h.id for h in apply_scores(hits, [Score(0.1, entropy=1.0), *failed[:1]])] == ["img", "txt"]
    both_failed = apply_scores([*hits, Hit(id="ok", rank=3, coarse_score=0.9)], [*failed, Score(0.2, entropy=1.0)])
    assert [h.id for h in both_failed] == ["ok", "img", "txt"]
