"""``report.md`` of an evaluation: one table per section (direction, category, task), coarse beside re-ranked.

It reads the results of every runner of the harness (:func:`retllm.eval.runner.run_eval` and the candidate-list
runners of :mod:`retllm.eval.choice`): each section has ``coarse`` and ``reranked`` metric rows with the same
keys, whatever they are (``R@1``..., ``accuracy``, ``P@1``), and the cost figures beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_TITLES = {"text_to_image": "Text → image", "image_to_text": "Image → text"}


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _costs(d: dict[str, Any]) -> str:
    """One sentence of what the section cost: latency, throughput, model calls, cache, tokens, fallbacks."""
    lat = d.get("latency_s") or {}
    qps = d.get("queries_per_s")
    parts = [
        f"Latency per query: mean {lat.get('mean', 0.0):.3f} s"
        + (f", p50 {lat['p50']:.3f} s" if "p50" in lat else "")
        + f", p95 {lat.get('p95', 0.0):.3f} s",
        f"{'' if qps is None else f'{qps:.2f}'} queries/s",
        f"MLLM calls per query {d.get('mllm_calls_per_query', 0.0):.2f}"
        + (f" ({d['pairs_per_query']:.2f} pairs judged per query)" if d.get("pairs_per_query") else ""),
    ]
    if d.get("model_requests") is not None:
        parts.append(f"{d['model_requests']} request(s) to the endpoint")
    if d.get("cache"):
        parts.append(f"cache hits {d['cache']['hits']}, misses {d['cache']['misses']}")
    if d.get("cached_queries"):
        fresh = d.get("latency_uncached_s")
        parts.append(
            f"{d['cached_queries']} query(ies) answered from the cache alone (their latency is a cache read)"
            + (f"; uncached queries: mean {fresh['mean']:.3f} s, p95 {fresh['p95']:.3f} s" if fresh else "")
        )
    if d.get("tokens"):
        parts.append(f"tokens: {d['tokens'].get('prompt', 0)} prompt, {d['tokens'].get('completion', 0)} completion")
    pairs = d.get("pairs")
    if pairs and pairs.get("fallback"):
        parts.append(f"{pairs['fallback']} of {pairs['total']} pairs fell back to the coarse order")
    if d.get("revisits"):
        parts.append(f"{d['revisits']} image revisit(s) behind the scores used")
    if d.get("failed_queries"):
        parts.append(f"{len(d['failed_queries'])} query(ies) failed (coarse order kept)")
    if d.get("skipped_queries"):
        parts.append(f"{len(d['skipped_queries'])} query(ies) skipped (unreadable)")
    return "; ".join(parts) + "."


def report_markdown(results: dict[str, Any]) -> str:
    """The Markdown report of an evaluation's results."""
    c = results["config"]
    stage = "coarse only" if c["coarse_only"] else f"re-ranked by `{c['scorer']}` (top-{c['k']})"
    corpus = results.get("corpus") or {}
    sizes = (
        f"{corpus['images']} images, {corpus['texts']} texts"
        if "images" in corpus and "texts" in corpus
        else ", ".join(f"{n} {name}" for name, n in (corpus.get("items") or {}).items()) or "none"
    )
    lines = [
        f"# {c['dataset']} {c['split']}" + (f" (limit {c['limit']})" if c.get("limit") else ""),
        "",
        f"Embedder `{c['embedder']}`, {stage}; retllm {c.get('retllm', '?')}, "
        f"commit {c.get('git_commit') or 'unknown'}, {c.get('date', '')}.",
        f"Corpus: {sizes}; {results['problems']['count']} problem(s) skipped.",
        "",
    ]
    for name, d in results["directions"].items():
        lines += [f"## {_TITLES.get(name, name)} ({d['queries']} queries)", ""]
        keys = list(d["coarse"]) or list(d.get("reranked") or {})
        if keys:
            lines.append("| stage | " + " | ".join(keys) + " |")
            lines.append("|---|" + "---:|" * len(keys))
            lines.append("| coarse | " + " | ".join(_pct(d["coarse"].get(x)) for x in keys) + " |")
            if d.get("reranked") is not None:
                beyond = {f"R@{x}" for x in d.get("reranked_ks_beyond_k_are_coarse", [])}
                cells = [_pct(d["reranked"].get(x)) + (" (coarse)" if x in beyond else "") for x in keys]
                lines.append("| re-ranked | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [_costs(d), ""]
    return "\n".join(lines)


def write_report(results: dict[str, Any], path: Path) -> str:
    """Write :func:`report_markdown` to ``path``; returns the text."""
    text = report_markdown(results)
    path.write_text(text, encoding="utf-8")
    return text
