"""Run a retrieval evaluation end to end (METHOD.md §4): embed the corpus, search both directions, score.

Each query goes through the library's own :meth:`Retriever.search <retllm.pipeline.Retriever.search>` (coarse
top-k, then the scorer re-ranks it), with the scorer wrapped in a :class:`~retllm.eval.cache.CachedScorer` so a
rerun, or a run with a larger k, only pays for pairs the model has not judged yet.

Re-ranking top-k only reorders the top k, so the re-ranked list beyond k is the coarse list: R@K' for K' > k is
the coarse one, and reported as such.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
import subprocess
import time
from collections import Counter
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


def collection_names(evalset: EvalSet, prefix: str = "eval", *, limit: int | None = None) -> dict[str, str]:
    """Corpus name -> a valid collection name (``eval-<set>-<split>[-nN]-<corpus>``) for each corpus of the set.

    A ``limit`` run gets image and text collections of its own, so it never deletes from (or searches past) the
    full run's; pools (M-BEIR) are loaded whole whatever the limit, so every run shares them.
    """
    stem = f"{prefix}-{evalset.name}-{evalset.split}"
    out = {}
    for corpus in evalset.corpora():
        limited = limit and corpus not in evalset.pools  # a pool is whole whatever the limit (it limits queries)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stem}{f'-n{limit}' if limited else ''}-{corpus}")
        if len(name) > 64:  # Qdrant's and the store's limit: keep it readable, unique by a hash of the whole
            name = name[:55] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        out[corpus] = name
    return out


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

    A collection built by another embedder is rebuilt; extra ids are deleted; an id whose text, image file
    content (sha256, so a file changed in place counts) or, for text+image items, fusion weight differs from
    what is stored is embedded again; missing ones are ingested with :class:`~retllm.ingest.Ingestor`, the code
    of ``retllm index add``.

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
            if it is not None and not _same_content(it, rec.payload, fusion_weight):
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
        [it.model_copy(update={"payload": _meta(it, embedder, fusion_weight)}) for it in items], progress=progress
    )
    return report.added, [f"{origin}: {reason}" for origin, reason in report.skipped]


def _meta(item: Item, embedder: Embedder, fusion_weight: float) -> dict[str, Any]:
    """What an eval point stores besides its content: the embedder, the image file's digest, the fusion weight."""
    meta: dict[str, Any] = {**item.payload, "embedder": embedder.id}
    if item.image is not None:
        meta["image_sha256"] = _file_digest(Path(str(item.image)))
        if item.text:
            meta["fusion_weight"] = fusion_weight
    return meta


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes (memoised by path, size and mtime); ``None`` if it cannot be read."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
    return _DIGESTS[key]


def _same_content(item: Item, payload: Mapping[str, Any], fusion_weight: float) -> bool:
    """Whether a stored point holds this item: the same text, the same image file (resolved path and content)
    and, for a text+image item, the same fusion weight."""
    if (payload.get("text") or None) != (item.text or None):
        return False
    if item.image is None:
        return payload.get("image") is None
    path = Path(str(item.image))
    meta = payload.get("meta") or {}
    if payload.get("image") != str(path.resolve()) or meta.get("image_sha256") != _file_digest(path):
        return False
    return not item.text or meta.get("fusion_weight") == fusion_weight


@dataclass
class _Direction:
    coarse: dict[str, list[str]] = field(default_factory=dict)
    reranked: dict[str, list[str]] = field(default_factory=dict)
    latencies: dict[str, float] = field(default_factory=dict)
    cached: set[str] = field(default_factory=set)  # queries answered from the score cache alone
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "QUERY: reason": a query image that cannot be read
    methods: Counter[str] = field(default_factory=Counter)  # scoring method of each re-ranked pair
    revisits: int = 0
    hits: int = 0
    misses: int = 0
    tokens: dict[str, int] | None = None
    requests: int | None = None  # HTTP requests a hosted scorer sent (revisit follow-ups and retries included)


def _percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (0 for an empty list)."""
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def _usage(scorer: Scorer | None) -> dict[str, int] | None:
    """A hosted scorer's token counters (:attr:`OpenAIScorer.usage <retllm.scorers.openai.OpenAIScorer.usage>`)."""
    usage = getattr(scorer, "usage", None)
    return dict(usage) if isinstance(usage, dict) else None


def _search_direction(
    retriever: Retriever,
    queries: Sequence[tuple[str, Query]],
    *,
    using: VectorName | None,
    k: int,
    depth: int,
    cached: CachedScorer | None,
    desc: str,
    progress: bool,
) -> _Direction:
    from tqdm import tqdm

    d = _Direction()
    h0, m0 = (cached.hits, cached.misses) if cached is not None else (0, 0)
    u0 = _usage(cached.inner) if cached is not None else None  # (an empty cache is falsy: it has a len)
    for qid, q in tqdm(queries, desc=desc, unit="query", disable=not progress):
        t0 = time.perf_counter()
        if cached is None:
            try:
                hits = retriever.search(q, k=depth, top=depth, using=using, coarse_only=True)
            except BadItemError as e:  # a query image that cannot be read: reported, the run goes on
                d.skipped.append(f"{qid}: {e}")
                continue
            d.latencies[qid] = time.perf_counter() - t0
            d.coarse[qid] = [h.id for h in hits]
            continue
        misses = cached.misses
        try:  # one coarse list: its first k are the pool the model re-ranks, the rest the tail past k
            # (two searches of different depths can order ties, and fused-rank ties, differently)
            deep = retriever.coarse(q, k=depth, using=using)
        except BadItemError as e:  # a query image that cannot be read: reported, the run goes on
            d.skipped.append(f"{qid}: {e}")
            continue
        pool = deep[:k]
        try:
            hits = retriever.rerank(q, pool)
            failed = False
        except ScoringError as e:  # every pair fell back (not cached): the rerun retries; meanwhile the coarse order
            log.warning("query %s: %s", qid, e)
            hits, failed = pool, True
            d.failed.append(qid)
        d.latencies[qid] = time.perf_counter() - t0
        if cached.misses == misses and not failed:
            d.cached.add(qid)
        if not failed:
            d.methods.update(h.method or "coarse" for h in hits)
            d.revisits += sum(h.revisits or 0 for h in hits)
        coarse = [h.id for h in deep]
        d.coarse[qid] = coarse
        d.reranked[qid] = (coarse[:k] if failed else [h.id for h in hits]) + coarse[k:]
    if cached is not None:
        d.hits, d.misses = cached.hits - h0, cached.misses - m0
        u1 = _usage(cached.inner)
        if u0 is not None and u1 is not None:
            d.tokens = {key: u1[key] - u0.get(key, 0) for key in ("prompt", "completion") if key in u1}
            d.requests = u1.get("requests", 0) - u0.get("requests", 0)
    return d


def _summary(d: _Direction, positives: Mapping[str, set[str]], k: int, fine: bool) -> dict[str, Any]:
    from retllm.eval.metrics import mean_recall

    n = len(d.latencies)
    lat = list(d.latencies.values())
    total = sum(lat)
    fresh = [t for q, t in d.latencies.items() if q not in d.cached]  # what the model cost, not cache reads
    positives = {q: positives[q] for q in d.coarse}  # the queries run (mean_recall takes its query set from it)
    pairs = sum(d.methods.values())
    out: dict[str, Any] = {
        "queries": n,
        "metric": "R@1",
        "coarse": mean_recall(d.coarse, positives, ks=KS) if n else {},
        "reranked": (mean_recall(d.reranked, positives, ks=KS) if n else {}) if fine else None,
        "reranked_ks_beyond_k_are_coarse": [x for x in KS if x > k] if fine else [],
        "queries_per_s": n / total if total > 0 else None,
        "latency_s": {"mean": total / n if n else 0.0, "p50": _percentile(lat, 50), "p95": _percentile(lat, 95)},
        "latency_uncached_s": (
            {"queries": len(fresh), "mean": sum(fresh) / len(fresh), "p95": _percentile(fresh, 95)} if fresh else None
        ),
        "cached_queries": len(d.cached),
        "mllm_calls_per_query": d.misses / n if fine and n else 0.0,  # pairs this run sent to the model
        "pairs_per_query": pairs / n if fine and n else 0.0,  # pairs judged, from the model or the cache
        "model_requests": d.requests if fine else None,
        "cache": {"hits": d.hits, "misses": d.misses} if fine else None,
        "tokens": d.tokens if fine else None,
        "pairs": {"total": pairs, "fallback": d.methods.get("coarse", 0), "methods": dict(d.methods)} if fine else None,
        "revisits": d.revisits if fine else None,  # pairs' scores that came with image revisits (cached ones too)
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


def run_config(
    dataset: str,
    split: str,
    *,
    limit: int | None,
    k: int,
    embedder: Embedder,
    scorer: Scorer | None,
    fingerprint: str,
    cache_path: Path,
    index: Index | None = None,
    fusion_weight: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A run's ``config`` in ``results.json``: what was run, with what (the store and how it fuses vector kinds,
    when one was searched), and the versions (every benchmark's)."""
    from retllm import __version__

    store = (
        {"index": type(index).__name__, "vector_fusion": getattr(index, "fusion", None), "fusion_weight": fusion_weight}
        if index is not None
        else {}
    )
    return {
        "dataset": dataset,
        "split": split,
        "limit": limit,
        "k": k,
        "coarse_only": scorer is None,
        "embedder": embedder.id,
        "scorer": scorer.id if scorer is not None else None,
        "fingerprint": fingerprint,
        "cache": str(cache_path) if scorer is not None else None,
        "retllm": __version__,
        "packages": _versions(),
        "git_commit": _git_commit(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **store,
        **extra,
    }


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
    extra_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every query set of ``evalset`` (:meth:`EvalSet.sections`: text→image and image→text of an
    image-caption set, the tasks of M-BEIR); write ``results.json``, ``rankings.jsonl`` and ``report.md``.

    Args:
        scorer: The fine stage (wrapped in a :class:`CachedScorer` at ``cache_path``); ``None``: coarse only.
        k: Coarse pool size the scorer re-ranks (``search(k=k, top=k)``).
        fingerprint: The settings that change scores (:func:`~retllm.eval.cache.settings_fingerprint`).
        limit: Recorded in the configuration (the set is already limited by its loader); a limited run embeds into
            collections of its own (:func:`collection_names`).
        extra_config: Recorded in ``config`` too (the CLI's preset).

    Returns:
        The results, as written to ``out_dir / "results.json"``.

    Raises:
        ConfigError: A corpus with no item embedded, or a query set with every query skipped (nothing to
            measure: one line naming the folder, the count skipped and the first reason; no report written).
    """
    from retllm.eval.datasets import nothing_to_evaluate
    from retllm.eval.report import write_report

    names = collection_names(evalset, collection_prefix, limit=limit)
    corpora = evalset.corpora()
    problems = list(evalset.problems)
    embedded = {}
    for corpus, items in corpora.items():
        n, skipped = ensure_corpus(
            embedder, index, names[corpus], items, limits=limits, fusion_weight=fusion_weight, progress=progress
        )
        embedded[corpus] = n
        problems += skipped
        if items and not (index.exists(names[corpus]) and index.count(names[corpus])):
            what = f"no item of corpus {corpus!r} could be embedded"
            raise nothing_to_evaluate(evalset.name, evalset.root, skipped, what)

    cached = CachedScorer(scorer, cache_path, fingerprint=fingerprint) if scorer is not None else None
    depth = max(k, max(KS))
    directions: dict[str, Any] = {}
    rankings: dict[str, _Direction] = {}
    try:
        for section in evalset.sections():
            retriever = Retriever(
                embedder, index, names[section.corpus], scorer=cached, fusion_weight=fusion_weight, limits=limits
            )
            queries = [(q, query) for q, query in section.queries.items() if section.positives.get(q)]
            d = _search_direction(
                retriever,
                queries,
                using=section.using,
                k=k,
                depth=depth,
                cached=cached,
                desc=section.name,
                progress=progress,
            )
            if queries and not d.latencies:
                what = f"every {section.name} query was skipped"
                raise nothing_to_evaluate(evalset.name, evalset.root, d.skipped, what)
            rankings[section.name] = d
            directions[section.name] = _summary(d, section.positives, k, fine=cached is not None)
    finally:
        if cached is not None:
            cached.close()

    results: dict[str, Any] = {
        "config": run_config(
            evalset.name,
            evalset.split,
            limit=limit,
            k=k,
            embedder=embedder,
            scorer=scorer,
            fingerprint=fingerprint,
            cache_path=cache_path,
            index=index,
            fusion_weight=fusion_weight,
            collections=names,
            **(extra_config or {}),
        ),
        "corpus": {
            **({"images": len(evalset.images), "texts": len(evalset.texts)} if evalset.images else {}),
            "items": {c: len(items) for c, items in corpora.items()},
            "embedded_now": embedded,
        },
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
                        {
                            "direction": direction,
                            "query": qid,
                            "coarse": coarse,
                            "reranked": d.reranked.get(qid),
                            "latency_s": round(d.latencies[qid], 6),
                            "cached": qid in d.cached,
                        }
                    )
                )
                f.write("\n")
    write_report(results, out_dir / "report.md")
    return results
