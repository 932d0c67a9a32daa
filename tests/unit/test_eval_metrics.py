from __future__ import annotations

import logging

import numpy as np
import pytest

from retllm.eval.metrics import accuracy, mean_recall, precision_at_1, recall_at_k


def naive_recall(ranked: list[str], positives: set[str], k: int) -> float:
    """The textbook definition: the rank of the best positive is at most k."""
    ranks = [i + 1 for i, c in enumerate(ranked) if c in positives]
    return float(bool(ranks) and min(ranks) <= k)


def test_matches_a_naive_reference_on_random_rankings() -> None:
    rng = np.random.default_rng(0)
    pool = [f"c{i}" for i in range(40)]
    rankings, positives = {}, {}
    for q in range(200):
        n = int(rng.integers(0, 30))  # some shorter than k, some empty
        rankings[f"q{q}"] = [str(c) for c in rng.permutation(pool)[:n]]
        positives[f"q{q}"] = {str(c) for c in rng.choice(pool, size=int(rng.integers(1, 6)), replace=False)}
    ks = (1, 5, 10, 50)
    got = mean_recall(rankings, positives, ks=ks)
    for k in ks:
        want = np.mean([naive_recall(rankings[q], positives[q], k) for q in positives])
        assert got[f"R@{k}"] == pytest.approx(want)
        assert all(
            recall_at_k(rankings[q], positives[q], k) == naive_recall(rankings[q], positives[q], k) for q in positives
        )
    assert got["R@1"] <= got["R@5"] <= got["R@10"] <= got["R@50"]


def test_hand_computed_cases() -> None:
    assert recall_at_k(["a", "b", "c"], {"c"}, 2) == 0.0
    assert recall_at_k(["a", "b", "c"], {"c"}, 3) == 1.0
    assert recall_at_k(["a", "b", "c"], {"b", "z"}, 2) == 1.0  # several positives: any one is enough
    assert recall_at_k(["a", "b"], {"b"}, 10) == 1.0  # fewer candidates than k
    assert recall_at_k([], {"b"}, 10) == 0.0  # empty ranking is a miss
    # ties were broken by the ranker: the given order is the order, nothing is re-sorted
    assert recall_at_k(["z", "a"], {"a"}, 1) == 0.0 and recall_at_k(["a", "z"], {"a"}, 1) == 1.0
    assert precision_at_1(["p", "n"], {"p"}) == 1.0 and precision_at_1(["n", "p"], {"p"}) == 0.0
    assert precision_at_1([], {"p"}) == 0.0


def test_mean_recall_hand_computed_with_duplicate_captions() -> None:
    # two images share the caption "a dog": each text id is its own query with its own image only
    positives = {"img1#0": {"img1"}, "img2#0": {"img2"}, "img3#0": {"img3"}}
    rankings = {"img1#0": ["img1", "img2"], "img2#0": ["img1", "img2"], "img3#0": ["img2", "img1", "img3"]}
    assert mean_recall(rankings, positives, ks=(1, 2, 3)) == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 1.0})


def test_missing_query_is_a_miss_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="retllm.eval.metrics"):
        got = mean_recall({"q1": ["a"], "stray": ["a"]}, {"q1": {"a"}, "q2": {"b"}}, ks=(1,))
    assert got == {"R@1": 0.5}
    assert "1 of 2 queries have no ranking" in caplog.text and "q2" in caplog.text
    assert "unknown queries" in caplog.text and "stray" in caplog.text


def test_missing_queries_without_stray_rankings_count_as_misses() -> None:
    """The mean is over the queries of ``positives``, never over the rankings given: 1 hit of 4 queries is 0.25
    (dividing by the 1 ranking would report 1.0 for a run that lost three queries)."""
    positives = {"q1": {"a"}, "q2": {"b"}, "q3": {"c"}, "q4": {"d"}}
    assert mean_recall({"q1": ["a", "x"]}, positives, ks=(1, 2)) == {"R@1": 0.25, "R@2": 0.25}
    assert mean_recall({"q1": ["x", "a"], "q2": ["b"]}, positives, ks=(1, 2)) == {"R@1": 0.25, "R@2": 0.5}


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="q2"):
        mean_recall({"q1": ["a"], "q2": ["a"]}, {"q1": {"a"}, "q2": set()})
    with pytest.raises(ValueError, match="no queries"):
        mean_recall({}, {})
    with pytest.raises(ValueError, match="at least 1"):
        mean_recall({"q": ["a"]}, {"q": {"a"}}, ks=(0, 1))
    with pytest.raises(ValueError, match="at least 1"):
        recall_at_k(["a"], {"a"}, 0)
    with pytest.raises(ValueError, match="no positives"):
        recall_at_k(["a"], set(), 1)


def test_accuracy() -> None:
    assert accuracy({"x": 0, "y": 1, "z": 0}, {"x": 0, "y": 0, "z": 0}) == pytest.approx(2 / 3)
    assert accuracy({"x": "pos"}, {"x": "pos", "y": "pos"}) == 0.5  # no choice counts as wrong
    with pytest.raises(ValueError):
        accuracy({}, {})
