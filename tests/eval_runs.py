"""Evaluation run folders made on the spot, in the layout `retllm eval` writes (results.json + rankings.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

QWEN = "hf:Qwen/Qwen2-VL-2B-Instruct"
CLIP = "open_clip:ViT-B-32"


def config(**changes: Any) -> dict[str, Any]:
    """A run's configuration as the runner records it, with ``changes`` applied."""
    base: dict[str, Any] = {
        "dataset": "coco",
        "split": "test",
        "limit": 8,
        "k": 10,
        "coarse_only": False,
        "embedder": CLIP,
        "scorer": QWEN,
        "fingerprint": json.dumps({"dtype": "torch.float32", "prompts": "abc"}, sort_keys=True),
        "packages": {"torch": "2.6.0", "transformers": "5.18.0"},
        "git_commit": "aaaa111",
        "date": "2025-01-01T00:00:00+00:00",
    }
    return base | changes


def section(
    coarse: dict[str, float],
    reranked: dict[str, float] | None,
    *,
    queries: int = 8,
    metric: str | None = "R@1",
    qps: float | None = 2.5,
    p95: float = 0.75,
    calls: float = 10.0,
    tokens: tuple[int, int] | None = None,
    beyond_k: tuple[int, ...] = (),
) -> dict[str, Any]:
    """One section's summary; ``metric=None`` writes the older layout (no metric, no p50, no tokens)."""
    out: dict[str, Any] = {
        "queries": queries,
        "coarse": coarse,
        "reranked": reranked,
        "reranked_ks_beyond_k_are_coarse": list(beyond_k),
        "queries_per_s": qps,
        "latency_s": {"mean": p95 / 2, "p95": p95},
        "mllm_calls_per_query": calls,
        "cache": None if reranked is None else {"hits": 0, "misses": int(calls * queries)},
        "failed_queries": [],
        "skipped_queries": [],
    }
    if metric is not None:
        out["metric"] = metric
        out["latency_s"]["p50"] = p95 / 3
        out["tokens"] = None if tokens is None else {"prompt": tokens[0], "completion": tokens[1]}
    return out


def write_run(
    folder: Path,
    cfg: dict[str, Any],
    directions: dict[str, dict[str, Any]],
    rankings: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a run folder; ``rankings`` rows go to rankings.jsonl as given."""
    folder.mkdir(parents=True, exist_ok=True)
    results = {
        "config": cfg,
        "corpus": {"images": 8, "texts": 40},
        "problems": {"count": 0, "items": []},
        "directions": directions,
    }
    (folder / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    with (folder / "rankings.jsonl").open("w", encoding="utf-8") as f:
        for row in rankings or []:
            f.write(json.dumps(row) + "\n")
    return folder


def ranking(direction: str, query: str, latency: float | None = None, cached: bool | None = None) -> dict[str, Any]:
    """One rankings.jsonl row; ``None`` leaves the key out, as older runs do."""
    row: dict[str, Any] = {"direction": direction, "query": query, "coarse": ["a", "b"], "reranked": ["b", "a"]}
    if latency is not None:
        row["latency_s"] = latency
    if cached is not None:
        row["cached"] = cached
    return row


def write_karpathy_set(root: Path, name: str, folder: str, n: int = 3, *, coco_names: bool = False) -> Path:
    """A Karpathy split file ``dataset_<name>.json`` with ``n`` test images stored in ``root/folder/`` (the
    folder an official archive unpacks to); ``coco_names``: COCO's ``COCO_val2014_<id>.jpg`` names with
    ``filepath: val2014``, as in Karpathy's ``dataset_coco.json``."""
    import numpy as np
    from PIL import Image

    (root / folder).mkdir(parents=True)
    entries = []
    for i in range(n):
        filename = f"COCO_val2014_{i:012d}.jpg" if coco_names else f"{1000 + i}.jpg"
        arr = np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / folder / filename, "JPEG")
        sents = [{"raw": f"picture number {i} with colour {c}"} for c in ("red", "blue")]
        entries.append({"filename": filename, "split": "test", "sentences": sents})
        if coco_names:
            entries[-1]["filepath"] = "val2014"
    (root / f"dataset_{name}.json").write_text(json.dumps({"images": entries}))
    return root
