"""The candidate-list benchmarks of METHOD.md §4, end to end: SugarCrepe and the MMEB eval subsets.

- :func:`run_sugarcrepe`: per category, the coarse choice is the caption whose embedding is closer (cosine) to
  the image's; the MLLM's is one listwise :meth:`~retllm.scorers.base.Scorer.choose` call per option order
  (both orders by default, probabilities averaged), so a preference for a slot cancels out. A tie counts as
  wrong, whichever stage it is in.
- :func:`run_mmeb`: per subset, every candidate is embedded once into a collection of its own (reused by later
  runs); each query searches only its own candidates (a payload filter on their ids), and the MLLM re-ranks the
  coarse top-k pointwise, as :meth:`Retriever.search <retllm.pipeline.Retriever.search>` does, or listwise
  (text candidates only). Precision@1 of the coarse and of the re-ranked list.

The scorer is wrapped in a :class:`~retllm.eval.cache.CachedScorer`, listwise answers included, so a rerun makes
no model call. Both write ``results.json``, ``rankings.jsonl`` and ``report.md`` in the harness's schema (one
section per category or subset); bad inputs are reported and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retllm.errors import BadItemError, ConfigError, ScoringError
from retllm.eval.cache import CachedScorer
from retllm.eval.choice_data import (
    MMEB_COLUMNS,
    SUGARCREPE_CATEGORIES,
    MMEBQuery,
    MMEBSet,
    MMEBSubset,
    SugarCrepeQuestion,
    SugarCrepeSet,
    candidate_id,
    load_mmeb,
    load_sugarcrepe,
)
from retllm.eval.datasets import nothing_to_evaluate
from retllm.images import ImageLimits
from retllm.scorers.base import MAX_OPTIONS
from retllm.types import VECTOR_NAMES, Query, VectorName

if TYPE_CHECKING:
    from retllm.embedders.base import Embedder, Vectors
    from retllm.index.base import Index
    from retllm.pipeline import Retriever
    from retllm.scorers.base import Scorer

__all__ = [
    "MMEB_COLUMNS",
    "SUGARCREPE_CATEGORIES",
    "MMEBQuery",
    "MMEBSet",
    "MMEBSubset",
    "SugarCrepeQuestion",
    "SugarCrepeSet",
    "candidate_id",
    "load_mmeb",
    "load_sugarcrepe",
    "mmeb_collection_names",
    "run_mmeb",
    "run_sugarcrepe",
]

log = logging.getLogger(__name__)

CANDIDATE_FIELD = "mmeb_candidate"
"""The payload field of an MMEB candidate that holds its id (what a query's filter matches)."""


@dataclass
class _Section:
    """What one category/subset gave: each query's coarse and re-ranked order, its cost, and what went wrong."""

    coarse: dict[str, list[str]] = field(default_factory=dict)
    reranked: dict[str, list[str]] = field(default_factory=dict)
    latencies: dict[str, float] = field(default_factory=dict)
    cached: set[str] = field(default_factory=set)  # answered from the cache alone
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    tokens: dict[str, int] | None = None


class _Costs:
    """Cache and token counters of the wrapped scorer, read as differences over a section."""

    def __init__(self, cached: CachedScorer | None, scorer: Scorer | None) -> None:
        self.cached, self.scorer = cached, scorer
        self.h0 = self.m0 = 0
        self.u0: dict[str, int] | None = None

    def usage(self) -> dict[str, int] | None:
        u = getattr(self.scorer, "usage", None)
        return dict(u) if isinstance(u, dict) else None

    def start(self) -> None:
        if self.cached is not None:
            self.h0, self.m0, self.u0 = self.cached.hits, self.cached.misses, self.usage()

    def finish(self, s: _Section) -> None:
        if self.cached is None:
            return
        s.hits, s.misses = self.cached.hits - self.h0, self.cached.misses - self.m0
        u1 = self.usage()
        if self.u0 is not None and u1 is not None:
            s.tokens = {k: int(u1.get(k, 0)) - int(self.u0.get(k, 0)) for k in ("prompt", "completion")}


def _percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 for an empty list)."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)] if s else 0.0


def _seed(*parts: str) -> int:
    """A stable per-question seed for the option shuffle (the same order on every run, so the cache holds)."""
    return int(hashlib.sha256("/".join(parts).encode()).hexdigest()[:12], 16)


def _summary(s: _Section, metric: str, value: Callable[[str, list[str]], float], fine: bool) -> dict[str, Any]:
    """One section of ``results["directions"]``: the metric for both stages over the queries run, and costs."""
    n = len(s.coarse)
    lat = list(s.latencies.values())
    total = sum(lat)
    fresh = [t for q, t in s.latencies.items() if q not in s.cached]

    def mean(rankings: dict[str, list[str]]) -> dict[str, float]:
        return {metric: sum(value(q, r) for q, r in rankings.items()) / n} if n else {}

    return {
        "queries": n,
        "metric": metric,
        "coarse": mean(s.coarse),
        "reranked": mean(s.reranked) if fine else None,
        "queries_per_s": n / total if total > 0 else None,
        "latency_s": {"mean": total / n if n else 0.0, "p50": _percentile(lat, 50), "p95": _percentile(lat, 95)},
        "latency_uncached_s": (
            {"queries": len(fresh), "mean": sum(fresh) / len(fresh), "p95": _percentile(fresh, 95)}
            if fine and fresh
            else None
        ),
        "cached_queries": len(s.cached) if fine else 0,
        "mllm_calls_per_query": s.misses / n if fine and n else 0.0,
        "cache": {"hits": s.hits, "misses": s.misses} if fine else None,
        "tokens": s.tokens if fine else None,
        "failed_queries": s.failed,
        "skipped_queries": s.skipped,
    }


def _write(
    out_dir: Path,
    results: dict[str, Any],
    sections: dict[str, _Section],
    positives: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """``results.json``, ``rankings.jsonl`` (one row per query; with ``positives``, section -> query -> the id
    that is right, each row names it) and ``report.md``."""
    from retllm.eval.report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with (out_dir / "rankings.jsonl").open("w", encoding="utf-8") as f:
        for name, s in sections.items():
            for qid, coarse in s.coarse.items():
                row = {
                    "direction": name,
                    "query": qid,
                    "coarse": coarse,
                    "reranked": s.reranked.get(qid),
                    "latency_s": s.latencies.get(qid),
                    "cached": qid in s.cached,
                }
                if positives is not None:
                    row["positive"] = positives[name][qid]
                f.write(json.dumps(row) + "\n")
    write_report(results, out_dir / "report.md")


# --- SugarCrepe --------------------------------------------------------------------------------------------------


def _caption_cosines(
    embedder: Embedder,
    questions: Sequence[SugarCrepeQuestion],
    limits: ImageLimits,
    images: dict[Path, Vectors],
    skipped: list[str],
) -> dict[str, tuple[float, float]]:
    """Question id -> (cosine(image, positive), cosine(image, negative)), embedded in batches.

    The vectors are the ones :meth:`Embedder.embed_query` gives an image-only query and a text-only one (the same
    ``prepare_image`` and ``embed_image_inputs``, and ``embed_texts``); ``images`` keeps each image's vector
    across categories. An unreadable image skips its question (``"ID: reason"`` in ``skipped``).
    """
    ok: list[SugarCrepeQuestion] = []
    todo: dict[Path, Any] = {}
    bad: dict[Path, str] = {}
    for q in questions:
        if q.image not in images and q.image not in todo and q.image not in bad:
            try:
                todo[q.image] = embedder.prepare_image(limits.load(q.image, min_side=embedder.input_side))
            except BadItemError as e:
                bad[q.image] = str(e)
        if q.image in bad:
            skipped.append(f"{q.id}: {bad[q.image]}")
        else:
            ok.append(q)
    paths, inputs = list(todo), list(todo.values())
    bs = max(1, embedder.batch_size)
    for i in range(0, len(paths), bs):
        for p, v in zip(paths[i : i + bs], embedder.embed_image_inputs(inputs[i : i + bs]), strict=True):
            images[p] = v
    texts = [t for q in ok for t in (q.positive, q.negative)]
    tv = np.concatenate([embedder.embed_texts(texts[i : i + bs]) for i in range(0, len(texts), bs)]) if texts else None
    out: dict[str, tuple[float, float]] = {}
    for j, q in enumerate(ok):
        assert tv is not None
        im = images[q.image]
        out[q.id] = (float(np.dot(im, tv[2 * j])), float(np.dot(im, tv[2 * j + 1])))
    return out


def _two_way(p_pos: float, p_neg: float) -> list[str]:
    """The two captions best first; a tie puts the negative first (a tie is no evidence for the positive)."""
    return ["pos", "neg"] if p_pos > p_neg else ["neg", "pos"]


def run_sugarcrepe(
    data: SugarCrepeSet,
    *,
    embedder: Embedder,
    scorer: Scorer | None,
    out_dir: Path,
    cache_path: Path,
    fingerprint: str,
    limit: int | None = None,
    rounds: int = 2,
    limits: ImageLimits | None = None,
    progress: bool = True,
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """SugarCrepe accuracy per category, coarse (embedding cosine) and by the MLLM (listwise, both orders).

    Args:
        scorer: The MLLM (wrapped in a :class:`CachedScorer` at ``cache_path``); ``None``: coarse only.
        fingerprint: The settings that change scores (:func:`~retllm.eval.cache.settings_fingerprint`).
        limit: Recorded in the configuration (the set is already limited by its loader).
        rounds: 2 shows each question in both option orders and averages; 1 shows one (seeded) order.
        extra_config: Recorded in ``config`` too (the CLI's preset).

    Returns:
        The results, as written to ``out_dir / "results.json"``; rankings are ``["pos", "neg"]`` or the reverse.
    """
    from tqdm import tqdm

    from retllm.eval.runner import run_config

    if rounds not in (1, 2):
        raise ConfigError(f"SugarCrepe has two options: rounds must be 1 or 2, got {rounds}")
    limits = limits or ImageLimits()
    cached = CachedScorer(scorer, cache_path, fingerprint=fingerprint) if scorer is not None else None
    costs = _Costs(cached, scorer)
    sections: dict[str, _Section] = {}
    vectors: dict[Path, Vectors] = {}
    try:
        for cat, questions in data.categories.items():
            s = sections[cat] = _Section()
            costs.start()
            t0 = time.perf_counter()
            cos = _caption_cosines(embedder, questions, limits, vectors, s.skipped)
            share = (time.perf_counter() - t0) / max(1, len(cos))  # the batch's time, shared evenly
            for q in tqdm(questions, desc=cat, unit="question", disable=not progress):
                if q.id not in cos:
                    continue
                s.coarse[q.id] = _two_way(*cos[q.id])
                s.latencies[q.id] = share
                if cached is None:
                    continue
                t0, misses = time.perf_counter(), cached.misses
                try:
                    c = cached.choose(
                        Query(image=str(q.image)), [q.positive, q.negative], seed=_seed(cat, q.id), rounds=rounds
                    )
                    s.reranked[q.id] = _two_way(c.probs[0], c.probs[1])
                except BadItemError as e:  # the scorer cannot read the image: reported, the run goes on
                    del s.coarse[q.id], s.latencies[q.id]
                    s.skipped.append(f"{q.id}: {e}")
                    continue
                except ScoringError as e:  # an answer that names no option (not cached): the rerun retries
                    log.warning("%s %s: %s", cat, q.id, e)
                    s.failed.append(q.id)
                    s.reranked[q.id] = s.coarse[q.id]
                s.latencies[q.id] += time.perf_counter() - t0
                if cached.misses == misses and q.id not in s.failed:
                    s.cached.add(q.id)
            if questions and not s.latencies:
                raise nothing_to_evaluate(data.name, data.root, s.skipped, f"every {cat} question was skipped")
            costs.finish(s)
    finally:
        if cached is not None:
            cached.close()

    def correct(_q: str, ranking: list[str]) -> float:
        return 1.0 if ranking[0] == "pos" else 0.0

    n = sum(len(qs) for qs in data.categories.values())
    results: dict[str, Any] = {
        "config": run_config(
            data.name,
            data.split,
            embedder=embedder,
            scorer=scorer,
            limit=limit,
            k=2,
            fingerprint=fingerprint,
            cache_path=cache_path,
            rounds=rounds if scorer is not None else None,
            categories=list(data.categories),
            **(extra_config or {}),
        ),
        "corpus": {
            "questions": n,
            "images": len({q.image for qs in data.categories.values() for q in qs}),
            "texts": 2 * n,
            "categories": {c: len(qs) for c, qs in data.categories.items()},
        },
        "problems": {"count": len(data.problems), "items": list(data.problems)},
        "directions": {c: _summary(s, "accuracy", correct, cached is not None) for c, s in sections.items()},
    }
    _write(out_dir, results, sections)
    return results


# --- MMEB --------------------------------------------------------------------------------------------------------


def mmeb_collection_names(data: MMEBSet, prefix: str = "eval", *, limit: int | None = None) -> dict[str, str]:
    """Subset -> a valid collection name (``eval-mmeb-<subset>[-inst][-nN]``); a limited run, and a run that keeps
    the instructions (other texts, so other candidates), get collections of their own, so they never delete from
    the full default run's."""
    out = {}
    tail = ("-inst" if data.instructions_kept else "") + (f"-n{limit}" if limit else "")
    for subset in data.subsets:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{prefix}-{data.name}-{subset}{tail}")
        if len(name) > 64:
            name = name[:55] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        out[subset] = name
    return out


def _precision_at_1(positive: dict[str, str]) -> Callable[[str, list[str]], float]:
    from retllm.eval.metrics import precision_at_1

    return lambda qid, ranking: precision_at_1(ranking, {positive[qid]})


def _stores(item: Any, using: VectorName) -> bool:
    """Whether a candidate's point holds the ``using`` vector (text, image, or fused: both)."""
    if using == "fused":
        return item.text is not None and item.image is not None
    return getattr(item, using) is not None


def _check_mmeb(
    data: MMEBSet, scorer: Scorer | None, k: int, listwise: bool, rounds: int, using: VectorName | None
) -> list[str]:
    """Refuse what cannot run (before any work); notes on subsets where ``using`` hides some candidates."""
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    notes = []
    if using is not None:
        if using not in VECTOR_NAMES:
            raise ConfigError(f"using must be None (auto) or one of {', '.join(VECTOR_NAMES)}, got {using!r}")
        for name, sub in data.subsets.items():
            lacking = sum(not _stores(c, using) for c in sub.candidates.values())
            if lacking == len(sub.candidates):
                raise ConfigError(
                    f"MMEB subset {name}: none of its {lacking} candidates has a {using!r} vector, so vector "
                    f"{using!r} would find nothing; use auto, or the kind its candidates have"
                )
            if lacking:
                notes.append(
                    f"{name}: {lacking} of {len(sub.candidates)} candidates have no {using!r} vector and cannot be "
                    "found in this run"
                )
    if not listwise:
        return notes
    if scorer is None:
        raise ConfigError("listwise re-ranking needs a scorer (it cannot be coarse only)")
    if not 2 <= k <= MAX_OPTIONS:
        raise ConfigError(f"listwise mode shows the top-k as 2 to {MAX_OPTIONS} options: k={k}")
    if not 1 <= rounds <= k:
        raise ConfigError(f"rounds must be between 1 and k ({k}), got {rounds}")
    for name, sub in data.subsets.items():
        images = sum(c.image is not None for c in sub.candidates.values())
        if images:
            raise ConfigError(
                f"listwise mode shows candidates as text options, but MMEB subset {name} has {images} candidate(s) "
                "with an image; run it pointwise (without listwise), or leave the subset out"
            )
    return notes


def _mmeb_query(
    retriever: Retriever,
    cached: CachedScorer | None,
    subset: str,
    q: MMEBQuery,
    *,
    k: int,
    using: VectorName | None,
    listwise: bool,
    rounds: int,
) -> tuple[list[str], list[str] | None, bool]:
    """(coarse ids, re-ranked ids or None, failed) of one query over its own candidates; BadItemError skips it."""
    query = Query(text=q.text, image=str(q.image) if q.image is not None else None)
    flt = {CANDIDATE_FIELD: list(q.candidates)}
    kk = min(k, len(q.candidates))
    if cached is None:
        return [h.id for h in retriever.search(query, k=kk, flt=flt, using=using, coarse_only=True)], None, False
    if listwise:
        hits = retriever.coarse(query, k=kk, flt=flt, using=using)
        coarse = [h.id for h in hits]
        if len(hits) < 2:
            return coarse, coarse, False
        try:
            c = cached.choose(
                query, [h.text or "" for h in hits], seed=_seed(subset, q.id), rounds=min(rounds, len(hits))
            )
        except ScoringError as e:  # an answer that names no option (not cached): the rerun retries
            log.warning("%s %s: %s", subset, q.id, e)
            return coarse, coarse, True
        return coarse, [coarse[i] for i in sorted(range(len(hits)), key=lambda i: (-c.probs[i], i))], False
    try:
        hits = retriever.search(query, k=kk, top=kk, flt=flt, using=using)
    except ScoringError as e:  # every pair fell back (not cached): the rerun retries; meanwhile the coarse order
        log.warning("%s %s: %s", subset, q.id, e)
        coarse = [h.id for h in retriever.coarse(query, k=kk, flt=flt, using=using)]
        return coarse, coarse, True
    return [h.id for h in sorted(hits, key=lambda h: h.coarse_rank or h.rank)], [h.id for h in hits], False


def run_mmeb(
    data: MMEBSet,
    *,
    embedder: Embedder,
    index: Index,
    scorer: Scorer | None,
    k: int,
    out_dir: Path,
    cache_path: Path,
    fingerprint: str,
    collection_prefix: str = "eval",
    limit: int | None = None,
    using: VectorName | None = None,
    listwise: bool = False,
    rounds: int = 1,
    fusion_weight: float = 0.5,
    limits: ImageLimits | None = None,
    progress: bool = True,
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """MMEB precision@1 per subset: coarse (each query's own candidates by cosine) and re-ranked top-k.

    Args:
        scorer: The MLLM (wrapped in a :class:`CachedScorer` at ``cache_path``); ``None``: coarse only.
        k: Coarse pool size the scorer re-ranks.
        fingerprint: The settings that change scores (:func:`~retllm.eval.cache.settings_fingerprint`).
        limit: Recorded in the configuration (the set is already limited by its loader); a limited run embeds
            into collections of its own (:func:`mmeb_collection_names`).
        using: The stored vector kind matched (``None``: the query's kind against every stored kind, fused by
            rank, as ``retllm search`` does).
        listwise: Re-rank with one listwise call over the top-k (2 <= k <= 10) instead of k pointwise scores;
            only for subsets whose candidates are all text.
        rounds: Listwise calls per query, each in another cyclic shift of a seeded order (``rounds == k`` shows
            every candidate in every slot).
        extra_config: Recorded in ``config`` too (the CLI's preset).

    Raises:
        ConfigError: ``k`` out of range, listwise mode on a subset with image candidates, or ``using`` a vector
            kind that no candidate of a subset has (before any work; where only some lack it, ``problems`` says so).
    """
    from tqdm import tqdm

    from retllm.eval.runner import ensure_corpus, run_config
    from retllm.pipeline import Retriever

    notes = _check_mmeb(data, scorer, k, listwise, rounds, using)
    names = mmeb_collection_names(data, collection_prefix, limit=limit)
    problems = list(data.problems) + notes
    embedded: dict[str, int] = {}
    unusable: dict[str, set[str]] = {}
    for subset, sub in data.subsets.items():
        items = [it.model_copy(update={"payload": {CANDIDATE_FIELD: it.id}}) for it in sub.candidates.values()]
        n, skipped = ensure_corpus(
            embedder, index, names[subset], items, limits=limits, fusion_weight=fusion_weight, progress=progress
        )
        embedded[subset] = n
        for p in skipped:  # "ID: reason" -> which file it was
            cid, _, reason = p.partition(": ")
            it = sub.candidates.get(cid)
            shown = (it.image if isinstance(it.image, str) else it.text) if it is not None else None
            problems.append(f"{subset}: candidate {cid} ({shown}): {reason}")
        ids = list(sub.candidates)
        unusable[subset] = set(ids) - index.existing(names[subset], ids)  # what ingest skipped, now or before

    cached = CachedScorer(scorer, cache_path, fingerprint=fingerprint) if scorer is not None else None
    costs = _Costs(cached, scorer)
    sections: dict[str, _Section] = {}
    try:
        for subset, sub in data.subsets.items():
            s = sections[subset] = _Section()
            scoring = None if listwise else cached  # listwise: coarse search here, then one choose() call
            retriever = Retriever(
                embedder, index, names[subset], scorer=scoring, fusion_weight=fusion_weight, limits=limits
            )
            costs.start()
            for q in tqdm(sub.queries, desc=subset, unit="query", disable=not progress):
                if gone := [c for c in q.candidates if c in unusable[subset]]:
                    s.skipped.append(f"{q.id}: candidate {gone[0]} could not be embedded ({len(gone)} in all)")
                    continue
                t0, misses = time.perf_counter(), cached.misses if cached else 0
                try:
                    coarse, fine, failed = _mmeb_query(
                        retriever, cached, subset, q, k=k, using=using, listwise=listwise, rounds=rounds
                    )
                except BadItemError as e:  # a query image that cannot be read: reported, the run goes on
                    s.skipped.append(f"{q.id}: {e}")
                    continue
                s.latencies[q.id] = time.perf_counter() - t0
                s.coarse[q.id] = coarse
                if fine is not None:
                    s.reranked[q.id] = fine
                if failed:
                    s.failed.append(q.id)
                elif cached is not None and cached.misses == misses:
                    s.cached.add(q.id)
            if sub.queries and not s.latencies:
                raise nothing_to_evaluate(data.name, data.root, s.skipped, f"every {subset} query was skipped")
            costs.finish(s)
    finally:
        if cached is not None:
            cached.close()

    subsets = list(data.subsets.items())
    results: dict[str, Any] = {
        "config": run_config(
            data.name,
            data.split,
            embedder=embedder,
            scorer=scorer,
            limit=limit,
            k=k,
            fingerprint=fingerprint,
            cache_path=cache_path,
            index=index,
            fusion_weight=fusion_weight,
            mode="coarse" if scorer is None else "listwise" if listwise else "pointwise",
            rounds=rounds if listwise else None,
            using=using,
            subsets=list(data.subsets),
            collections=names,
            **(extra_config or {}),
            instructions_kept=data.instructions_kept,
            instructions_dropped={n: sub.instructions for n, sub in data.subsets.items() if sub.instructions},
        ),
        "corpus": {
            "queries": sum(len(sub.queries) for sub in data.subsets.values()),
            "images": sum(c.image is not None for sub in data.subsets.values() for c in sub.candidates.values()),
            "texts": sum(c.image is None for sub in data.subsets.values() for c in sub.candidates.values()),
            "subsets": {n: {"queries": len(sub.queries), "candidates": len(sub.candidates)} for n, sub in subsets},
            "embedded_now": embedded,
        },
        "problems": {"count": len(problems), "items": problems},
        "directions": {},
    }
    positives = {n: {q.id: sub.positive(q) for q in sub.queries} for n, sub in subsets}
    for subset, s in sections.items():
        results["directions"][subset] = _summary(s, "P@1", _precision_at_1(positives[subset]), cached is not None)
    _write(out_dir, results, sections, positives)
    return results
