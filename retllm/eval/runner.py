"""Run a retrieval evaluation end to end (METHOD.md §4): embed the corpus, search both directions, score.

Each query goes through the library's own :meth:`Retriever.search <retllm.pipeline.Retriever.search>` (coarse
top-k, then the scorer re-ranks it), with the scorer wrapped in a :class:`~retllm.eval.cache.CachedScorer` so a
rerun, or a run with a larger k, only pays for pairs the model has not judged yet.

Re-ranking top-k only reorders the top k, so the re-ranked list beyond k is the coarse list: R@K' for K' > k is
the coarse one, and reported as such.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retllm.errors import BadItemError, ScoringError
from retllm.eval.cache import CachedScorer
from retllm.ingest import Ingestor
from retllm.pipeline import Retriever
from retllm.types import Item, Query, VectorName

if TYPE_CHECKING:
    from retllm.embedders.base import Embedder
    from retllm.eval.datasets import EvalSet
    from retllm.images import ImageLimits
    from retllm.index.base import Index
    from retllm.scorers.base import Scorer

log = logging.getLogger(__name__)

KS = (1, 5, 10)
DIRECTIONS = ("text_to_image", "image_to_text")
PACKAGES = ("torch", "transformers", "open_clip_torch", "qdrant-client")


def collection_names(evalset: EvalSet, prefix: str = "eval") -> dict[str, str]:
    """``{"images": ..., "texts": ...}``: valid collection names for the set's two corpora."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{prefix}-{evalset.name}-{evalset.split}")[:56]
    return {"images": f"{stem}-images", "texts": f"{stem}-texts"}


def ensure_corpus(
    embedder: Embedder,
    index: Index,
    collection: str,
    items: Sequence[Item],
    *,
    limits: ImageLimits | None = None,
    fusion_weight: float = 0.5,
    progress: bool = False,
) -> tuple[int, list[str]]:
    """Make ``collection`` hold exactly ``items`` (by id), embedded by ``embedder``; reuse what is there.

    A collection built by another embedder is rebuilt; extra ids are deleted; missing ones are ingested with
    :class:`~retllm.ingest.Ingestor`, the code of ``retllm index add``.

    Returns:
        How many items were embedded now, and ``"ORIGIN: reason"`` for each item ingest skipped.
    """
    want = {str(it.id) for it in items}
    if index.exists(collection):
        stored: set[str] = set()
        other_embedder = False
        changed: set[str] = set()  # same id, other content (another copy of the data, re-captioned, moved)
        by_id = {str(it.id): it for it in items}
        for rec in index.scroll(collection):
            stored.add(rec.id)
            if (rec.payload.get("meta") or {}).get("embedder") != embedder.id:
                other_embedder = True
                break
            it = by_id.get(rec.id)
            if it is not None and not _same_content(it, rec.payload):
                changed.add(rec.id)
        if other_embedder or index.dim(collection) != embedder.dim:
            log.info("%s was built by another embedder: rebuilding it", collection)
            index.drop_collection(collection)
        else:
            extra = sorted((stored - want) | changed)
            if extra:
                index.delete(collection, extra)
            missing = (want - stored) | changed
            if not missing:
                return 0, []
            items = [it for it in items if it.id in missing]
    ing = Ingestor(embedder, index, collection, fusion_weight=fusion_weight, limits=limits)
    report = ing.add(
        [it.model_copy(update={"payload": {**it.payload, "embedder": embedder.id}}) for it in items], progress=progress
    )
    return report.added, [f"{origin}: {reason}" for origin, reason in report.skipped]


def _same_content(item: Item, payload: Mapping[str, Any]) -> bool:
    """Whether a stored point holds this item: the same text, and the same image file (by resolved path)."""
    if (payload.get("text") or None) != (item.text or None):
        return False
    if item.image is None:
        return payload.get("image") is None
    return payload.get("image") == str(Path(str(item.image)).resolve())


@dataclass
class _Direction:
    coarse: dict[str, list[str]] = field(default_factory=dict)
    reranked: dict[str, list[str]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "QUERY: reason": a query image that cannot be read
    hits: int = 0
    misses: int = 0


def _percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 for an empty list)."""
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def _search_direction(
    retriever: Retriever,
    queries: Sequence[tuple[str, Query]],
    *,
    using: VectorName,
    k: int,
    depth: int,
    cached: CachedScorer | None,
    desc: str,
    progress: bool,
) -> _Direction:
    from tqdm import tqdm

    d = _Direction()
    h0, m0 = (cached.hits, cached.misses) if cached else (0, 0)
    for qid, q in tqdm(queries, desc=desc, unit="query", disable=not progress):
        t0 = time.perf_counter()
        if cached is None:
            try:
                hits = retriever.search(q, k=depth, top=depth, using=using, coarse_only=True)
            except BadItemError as e:  # a query image that cannot be read: reported, the run goes on
                d.skipped.append(f"{qid}: {e}")
                continue
            d.latencies.append(time.perf_counter() - t0)
            d.coarse[qid] = [h.id for h in hits]
            continue
        try:
            hits = retriever.search(q, k=k, top=k, using=using)
            failed = False
        except BadItemError as e:  # a query image ingest skipped too: reported, the run goes on
            d.skipped.append(f"{qid}: {e}")
            continue
        except ScoringError as e:  # every pair fell back (not cached): the rerun retries; meanwhile the coarse order
            log.warning("query %s: %s", qid, e)
            hits, failed = retriever.coarse(q, k=k, using=using), True
            d.failed.append(qid)
        d.latencies.append(time.perf_counter() - t0)
        coarse = [h.id for h in sorted(hits, key=lambda h: h.coarse_rank or h.rank)]
        fine = coarse if failed else [h.id for h in hits]
        tail: list[str] = []
        if depth > k:  # the coarse list past k, for coarse R@K' with K' > k (re-ranking leaves it as it is);
            # by id, not by position: with tied cosines the deeper search may order the first k differently
            seen = set(coarse)
            deep = [h.id for h in retriever.coarse(q, k=depth, using=using) if h.id not in seen]
            tail = deep[: depth - len(coarse)]
        d.coarse[qid] = coarse + tail
        d.reranked[qid] = fine + tail
    if cached is not None:
        d.hits, d.misses = cached.hits - h0, cached.misses - m0
    return d


def _summary(d: _Direction, positives: Mapping[str, set[str]], k: int, fine: bool) -> dict[str, Any]:
    from retllm.eval.metrics import mean_recall

    n = len(d.latencies)
    total = sum(d.latencies)
    positives = {q: positives[q] for q in d.coarse}  # the queries run (mean_recall takes its query set from it)
    out: dict[str, Any] = {
        "queries": n,
        "coarse": mean_recall(d.coarse, positives, ks=KS) if n else {},
        "reranked": (mean_recall(d.reranked, positives, ks=KS) if n else {}) if fine else None,
        "reranked_ks_beyond_k_are_coarse": [x for x in KS if x > k] if fine else [],
        "queries_per_s": n / total if total > 0 else None,
        "latency_s": {"mean": total / n if n else 0.0, "p95": _percentile(d.latencies, 95)},
        "mllm_calls_per_query": d.misses / n if fine and n else 0.0,
        "cache": {"hits": d.hits, "misses": d.misses} if fine else None,
        "failed_queries": d.failed,
        "skipped_queries": d.skipped,
    }
    return out


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_commit() -> str | None:
    import retllm

    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(retllm.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def run_eval(
    evalset: EvalSet,
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
    fusion_weight: float = 0.5,
    limits: ImageLimits | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate text→image and image→text retrieval on ``evalset``; write ``results.json`` and ``report.md``.

    Args:
        scorer: The fine stage (wrapped in a :class:`CachedScorer` at ``cache_path``); ``None``: coarse only.
        k: Coarse pool size the scorer re-ranks (``search(k=k, top=k)``).
        fingerprint: The settings that change scores (:func:`~retllm.eval.cache.settings_fingerprint`).
        limit: Recorded in the configuration (the set is already limited by its loader).

    Returns:
        The results, as written to ``out_dir / "results.json"``.
    """
    from retllm import __version__
    from retllm.eval.report import write_report

    names = collection_names(evalset, collection_prefix)
    image_items = [Item(id=i, image=str(p)) for i, p in evalset.images.items()]
    text_items = [Item(id=t, text=c) for t, c in evalset.texts.items()]
    problems = list(evalset.problems)
    embedded = {}
    for kind, items in (("images", image_items), ("texts", text_items)):
        n, skipped = ensure_corpus(
            embedder, index, names[kind], items, limits=limits, fusion_weight=fusion_weight, progress=progress
        )
        embedded[kind] = n
        problems += skipped

    cached = CachedScorer(scorer, cache_path, fingerprint=fingerprint) if scorer is not None else None
    depth = max(k, max(KS))
    directions: dict[str, Any] = {}
    rankings: dict[str, _Direction] = {}
    try:
        plan: list[tuple[str, str, VectorName, list[tuple[str, Query]], Mapping[str, set[str]]]] = [
            (
                "text_to_image",
                names["images"],
                "image",
                [(t, Query(text=evalset.texts[t])) for t in evalset.texts if evalset.text_to_images.get(t)],
                evalset.text_to_images,
            ),
            (
                "image_to_text",
                names["texts"],
                "text",
                [(i, Query(image=str(evalset.images[i]))) for i in evalset.images if evalset.image_to_texts.get(i)],
                evalset.image_to_texts,
            ),
        ]
        for direction, collection, using, queries, positives in plan:
            retriever = Retriever(
                embedder, index, collection, scorer=cached, fusion_weight=fusion_weight, limits=limits
            )
            d = _search_direction(
                retriever, queries, using=using, k=k, depth=depth, cached=cached, desc=direction, progress=progress
            )
            rankings[direction] = d
            directions[direction] = _summary(d, positives, k, fine=cached is not None)
    finally:
        if cached is not None:
            cached.close()

    results: dict[str, Any] = {
        "config": {
            "dataset": evalset.name,
            "split": evalset.split,
            "limit": limit,
            "k": k,
            "coarse_only": scorer is None,
            "embedder": embedder.id,
            "scorer": scorer.id if scorer is not None else None,
            "fingerprint": fingerprint,
            "collections": names,
            "cache": str(cache_path) if scorer is not None else None,
            "retllm": __version__,
            "packages": _versions(),
            "git_commit": _git_commit(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
        "corpus": {"images": len(evalset.images), "texts": len(evalset.texts), "embedded_now": embedded},
        "problems": {"count": len(problems), "items": problems},
        "directions": directions,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with (out_dir / "rankings.jsonl").open("w", encoding="utf-8") as f:
        for direction, d in rankings.items():
            for qid, coarse in d.coarse.items():
                f.write(
                    json.dumps(
                        {"direction": direction, "query": qid, "coarse": coarse, "reranked": d.reranked.get(qid)}
                    )
                )
                f.write("\n")
    write_report(results, out_dir / "report.md")
    return results
