"""``report.md`` of an evaluation: one table per direction, coarse beside re-ranked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_TITLES = {"text_to_image": "Text → image", "image_to_text": "Image → text"}


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def report_markdown(results: dict[str, Any]) -> str:
    """The Markdown report of :func:`retllm.eval.runner.run_eval`'s results."""
    c = results["config"]
    stage = "coarse only" if c["coarse_only"] else f"re-ranked by `{c['scorer']}` (top-{c['k']})"
    lines = [
        f"# {c['dataset']} {c['split']}" + (f" (limit {c['limit']})" if c["limit"] else ""),
        "",
        f"Embedder `{c['embedder']}`, {stage}; retllm {c['retllm']}, "
        f"commit {c['git_commit'] or 'unknown'}, {c['date']}.",
        f"Corpus: {results['corpus']['images']} images, {results['corpus']['texts']} texts; "
        f"{results['problems']['count']} problem(s) skipped.",
        "",
    ]
    for direction, d in results["directions"].items():
        lines += [f"## {_TITLES.get(direction, direction)} ({d['queries']} queries)", ""]
        ks = list(d["coarse"])
        lines.append("| stage | " + " | ".join(ks) + " |")
        lines.append("|---|" + "---:|" * len(ks))
        lines.append("| coarse | " + " | ".join(_pct(d["coarse"][x]) for x in ks) + " |")
        if d["reranked"] is not None:
            beyond = {f"R@{x}" for x in d["reranked_ks_beyond_k_are_coarse"]}
            cells = [_pct(d["reranked"].get(x)) + (" (coarse)" if x in beyond else "") for x in ks]
            lines.append("| re-ranked | " + " | ".join(cells) + " |")
        lines.append("")
        lat = d["latency_s"]
        qps = d["queries_per_s"]
        lines.append(
            f"Latency per query: mean {lat['mean']:.3f} s, p95 {lat['p95']:.3f} s; "
            f"{'' if qps is None else f'{qps:.2f}'} queries/s; MLLM calls per query {d['mllm_calls_per_query']:.2f}"
            + (f"; cache hits {d['cache']['hits']}, misses {d['cache']['misses']}" if d["cache"] else "")
            + (f"; {len(d['failed_queries'])} query(ies) failed (coarse order kept)" if d["failed_queries"] else "")
            + "."
        )
        lines.append("")
    return "\n".join(lines)


def write_report(results: dict[str, Any], path: Path) -> str:
    """Write :func:`report_markdown` to ``path``; returns the text."""
    text = report_markdown(results)
    path.write_text(text, encoding="utf-8")
    return text
