"""HFScorer as a shared, long-lived object: many threads, bad pairs inside batches, the image budget, settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from retllm.images import ImageLimits
from retllm.scorers.base import Candidate, Score
from retllm.scorers.hf import HFScorer
from retllm.scorers.retrace import RetraceConfig
from retllm.settings import Settings
from retllm.types import Query
from tests.threads import run_threads

FORCED = RetraceConfig(start=0, end=3, threshold=-1.0)


def scorer(dirs: dict[str, Path], fam: str = "qwen2_vl", **kw: Any) -> HFScorer:
    kw.setdefault("image_tokens", None)
    kw.setdefault("retrace", FORCED)
    return HFScorer.from_pretrained(str(dirs[fam]), device="cpu", **kw)


def cands(paths: list[Path]) -> list[Candidate]:
    return [Candidate(f"c{i}", image=str(p), coarse_score=0.5) for i, p in enumerate(paths)]


def save(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def workload(images: list[Path]) -> list[tuple[Query, list[Candidate]]]:
    """80 queries of three shapes (text->image, image->image, text->text) over overlapping candidates."""
    out: list[tuple[Query, list[Candidate]]] = []
    texts = [Candidate(f"t{i}", text=f"a caption number {i}") for i in range(6)]
    for q in range(80):
        if q % 4 == 3:
            out.append((Query(text=f"words {q}"), texts[q % 3 : q % 3 + 3]))
        elif q % 4 == 2:
            out.append((Query(image=str(images[q % 6])), cands(images)[(q + 1) % 3 : (q + 1) % 3 + 3]))
        else:
            out.append((Query(text=f"a picture {q}"), cands(images)[q % 3 : q % 3 + 4]))
    return out


def run_concurrently(s: HFScorer, queries: list[tuple[Query, list[Candidate]]], threads: int = 8):  # type: ignore[no-untyped-def]
    """Each of ``threads`` real threads runs every ``threads``-th query; returns results and errors."""
    results: dict[int, list[Score]] = {}

    def work(t: int) -> None:
        for j in range(t, len(queries), threads):
            results[j] = s.score(*queries[j])

    errors = run_threads(work, threads)
    return [results.get(j) for j in range(len(queries))], errors


def fields(scores: list[Score]) -> list[tuple[Any, ...]]:
    return [(s.value, s.p_true, s.entropy, s.method, s.retraced) for s in scores]


def test_concurrent_queries_alone_in_their_batches_equal_sequential_exactly(tiny_vlm_dirs, candidate_images) -> None:
    """8 threads x 10 queries, retracing forced: bit-identical to one query at a time, zero errors."""
    queries = workload(candidate_images)
    sequential = [scorer(tiny_vlm_dirs, cross_query=False).score(q, cs) for q, cs in queries]
    s = scorer(tiny_vlm_dirs, cross_query=False)
    got, errors = run_concurrently(s, queries)
    assert errors == []
    assert [fields(g) for g in got] == [fields(w) for w in sequential]
    assert all(sc.method == "logits" and sc.retraced == 2 for r in sequential for sc in r if r)


@pytest.mark.parametrize("fam", ["qwen2_vl", "smolvlm"])
def test_concurrent_queries_share_forwards_and_keep_their_scores(tiny_vlm_dirs, candidate_images, fam: str) -> None:
    """Cross-query micro-batching: fewer forwards than sequential, the same scores up to batch padding (1e-5,
    the batched-vs-single bound), the same retracing layers, zero errors."""
    queries = workload(candidate_images)
    alone = scorer(tiny_vlm_dirs, fam, batch_size=8)
    sequential = [alone.score(q, cs) for q, cs in queries]
    s = scorer(tiny_vlm_dirs, fam, batch_size=8)
    got, errors = run_concurrently(s, queries)
    assert errors == []
    assert s._worker.batches < alone._worker.batches  # pairs of different queries shared forwards
    for g, w in zip(got, sequential, strict=True):
        assert g is not None and [x.method for x in g] == [x.method for x in w] == ["logits"] * len(w)
        assert [x.retraced for x in g] == [x.retraced for x in w]
        for field in ("value", "p_true", "entropy"):
            assert max(abs(getattr(a, field) - getattr(b, field)) for a, b in zip(g, w, strict=True)) <= 1e-5


def test_an_image_the_processor_rejects_fails_only_its_pair(tiny_vlm_dirs, candidate_images, tmp_path: Path) -> None:
    """A 3000x10 image (Qwen refuses aspect ratios over 200) inside a batch: it falls back, the rest are scored
    exactly as without it."""
    strip = save(tmp_path / "strip.png", (3000, 10))
    good = cands(candidate_images[:4])
    mixed = [*good[:2], Candidate("strip", image=str(strip), coarse_score=0.9), *good[2:]]
    s = scorer(tiny_vlm_dirs, batch_size=8, cross_query=False)
    out = s.score(Query(text="a red circle"), mixed)
    assert [o.method for o in out] == ["logits", "logits", "coarse", "logits", "logits"]
    assert out[2].value is None and "aspect ratio" in out[2].error
    clean = scorer(tiny_vlm_dirs, batch_size=8, cross_query=False).score(Query(text="a red circle"), good)
    kept = [o for o in out if o.method == "logits"]
    assert max(abs(a.value - b.value) for a, b in zip(kept, clean, strict=True)) <= 1e-5


def test_out_of_memory_in_a_batch_is_retried_in_halves(tiny_vlm_dirs, candidate_images) -> None:
    """A forward over more than two pairs runs out of memory (raised by the model, as CUDA would): the batch is
    split until it fits, every pair is scored and equals its one-by-one score; a pair that never fits falls back."""
    s = scorer(tiny_vlm_dirs, batch_size=6)
    limit = {"rows": 2}

    def oom(_m: Any, args: tuple, kwargs: dict) -> None:
        rows = (kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None else args[0]).shape[0]
        if rows > limit["rows"]:
            raise torch.OutOfMemoryError(f"CUDA out of memory (fake): {rows} rows")

    handle = s.text_model.register_forward_pre_hook(oom, with_kwargs=True)
    try:
        q = Query(text="a blue square")
        out = s.score(q, cands(candidate_images))
        assert [o.method for o in out] == ["logits"] * 6
        single = scorer(tiny_vlm_dirs, batch_size=1).score(q, cands(candidate_images))
        assert max(abs(a.value - b.value) for a, b in zip(out, single, strict=True)) <= 1e-5
        limit["rows"] = 0  # nothing fits: every pair falls back with the error, none raises
        out = s.score(q, cands(candidate_images[:3]))
        assert [o.method for o in out] == ["coarse"] * 3 and all("OutOfMemoryError" in o.error for o in out)
    finally:
        handle.remove()


def tower_tokens(s: HFScorer, images: list[Path]) -> list[int]:
    """Visual tokens per image after the processor (patches / merge**2), as the scorer feeds them."""
    ims = [[s.load(str(p))] for p in images]
    out = s.processor.image_processor(images=ims, return_tensors="pt", **s._proc_kwargs)
    merge = s.processor.image_processor.merge_size
    return [int(t.prod()) // merge**2 for t in out["image_grid_thw"]]


@pytest.mark.parametrize("fam", ["qwen2_vl", "qwen3_vl"])
def test_qwen_images_get_the_papers_token_budget(tiny_vlm_dirs, tmp_path: Path, fam: str) -> None:
    small, large = save(tmp_path / "small.png", (30, 20)), save(tmp_path / "large.png", (1600, 1200), 1)
    paper = HFScorer.from_pretrained(str(tiny_vlm_dirs[fam]), device="cpu")  # the default: 256-512 tokens
    got = tower_tokens(paper, [small, large])
    assert 256 <= got[0] <= 512 and 256 <= got[1] <= 512  # small enlarged to the minimum, large shrunk
    own = scorer(tiny_vlm_dirs, fam)  # the checkpoint's own (tiny) budget
    assert tower_tokens(own, [small])[0] < 256
    custom = scorer(tiny_vlm_dirs, fam, image_tokens=(16, 64))
    assert all(16 <= t <= 64 for t in tower_tokens(custom, [small, large]))
    out = paper.score(Query(text="x"), cands([small, large]))
    assert [o.method for o in out] == ["logits", "logits"]


def test_settings_reach_the_local_scorer(tiny_vlm_dirs, candidate_images, tmp_path: Path, monkeypatch) -> None:
    """max_image_pixels, url_timeout and the token budget travel from the settings into HFScorer."""
    big = save(tmp_path / "big.png", (200, 150))
    monkeypatch.setenv("RETLLM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RETLLM_DEVICE", "cpu")
    monkeypatch.setenv("RETLLM_MAX_IMAGE_PIXELS", "10000")
    monkeypatch.setenv("RETLLM_URL_TIMEOUT", "1.5")
    monkeypatch.setenv("RETLLM_SCORER_MIN_IMAGE_TOKENS", "4")
    monkeypatch.setenv("RETLLM_SCORER_MAX_IMAGE_TOKENS", "8")
    monkeypatch.setenv("RETLLM_SCORER_CROSS_QUERY", "false")
    s = HFScorer.from_settings(str(tiny_vlm_dirs["qwen2_vl"]), Settings())
    assert s.limits == ImageLimits(max_pixels=10000, url_timeout=1.5) and s._worker.cross_query is False
    out = s.score(Query(text="x"), [*cands(candidate_images[:1]), Candidate("big", image=str(big))])
    assert out[0].method == "logits" and out[1].method == "coarse" and "too large" in out[1].error
    assert all(4 <= t <= 8 for t in tower_tokens(s, candidate_images[:2]))


def test_non_finite_logits_fail_only_their_pair(tiny_vlm_dirs, candidate_images) -> None:
    """fp16 overflow on a T4/V100 gives inf/NaN logits: that pair falls back, the query is ranked."""
    from retllm.ranking import apply_scores
    from retllm.types import Hit

    s = scorer(tiny_vlm_dirs, batch_size=1, cross_query=False, retrace=RetraceConfig(enabled=False))

    def poison(_m: Any, _args: Any, out: torch.Tensor) -> torch.Tensor | None:  # the second forward's head
        return torch.full_like(out, float("nan")) if poison.calls == 2 else None

    poison.calls = 0  # type: ignore[attr-defined]

    def count(_m: Any, _args: Any) -> None:
        poison.calls += 1  # type: ignore[attr-defined]

    h1 = s.lm_head.register_forward_pre_hook(count)
    h2 = s.lm_head.register_forward_hook(poison)
    try:
        out = s.score(Query(text="x"), cands(candidate_images[:3]))
    finally:
        h1.remove()
        h2.remove()
    assert [o.method for o in out] == ["logits", "coarse", "logits"] and "non-finite" in out[1].error
    hits = [Hit(id=f"h{i}", rank=i + 1, coarse_score=0.5) for i in range(3)]
    ranked = apply_scores(hits, out)
    assert ranked[-1].id == "h1"
    nan = apply_scores(hits, [Score(float("nan"), entropy=1.0), out[0], out[2]])  # any scorer's NaN ranks last
    assert nan[-1].id == "h0"


def test_a_closed_scorer_says_so(tiny_vlm_dirs, candidate_images) -> None:
    from retllm.errors import ScoringError

    s = scorer(tiny_vlm_dirs)
    assert s.score(Query(text="x"), cands(candidate_images[:1]))[0].method == "logits"
    s.close()
    with pytest.raises(ScoringError, match="closed"):
        s.score(Query(text="x"), cands(candidate_images[:1]))


def test_a_masked_vocabulary_entry_does_not_spoil_the_entropy(tiny_vlm_dirs, candidate_images) -> None:
    """A -inf logit somewhere in the vocabulary (a masked token) is 0 * log 0 = 0 in the entropy."""
    s = scorer(tiny_vlm_dirs, retrace=RetraceConfig(enabled=False))
    plain = s.score(Query(text="x"), cands(candidate_images[:2]))

    def mask(_m: Any, _args: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[..., 7] = float("-inf")
        return out

    h = s.lm_head.register_forward_hook(mask)
    try:
        out = s.score(Query(text="x"), cands(candidate_images[:2]))
    finally:
        h.remove()
    assert [o.method for o in out] == ["logits", "logits"]
    assert all(o.entropy is not None and 0 < o.entropy < float("inf") for o in out)
    assert max(abs(a.value - b.value) for a, b in zip(out, plain, strict=True)) <= 1e-6  # type: ignore[operator]
