"""Index benchmarks: upsert throughput, top-50 latency and HNSW recall; `auto` (fused) vs single-vector search.

Part 1, one named vector per point: qdrant-edge with plain segments (exact), qdrant-edge after
``optimize()`` (HNSW) and qdrant-client local mode. Recall@50 of each against exact top-50 computed with
numpy. Queries are fresh samples of the data distribution, never stored vectors or near-duplicates of them:
``clustered`` (points around 256 centres at cosine ~0.7, like real image/text embeddings) and ``uniform``
(random directions: nearest neighbours at cosine ~0.15, the hardest case for a graph index).

Part 2, three named vectors per point (image, text, fused, as an image+text item): ``auto`` search against
a single-vector search, on edge: ``rank`` fusion (one batched request, each item at its best rank) and
``rrf`` (one Query API request, a prefetch per vector, reciprocal rank fusion).

    .venv/bin/python bench/index_latency.py --sizes 20000 100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from retllm.index.base import Index, Record
from retllm.index.edge import EdgeIndex
from retllm.index.qdrant import QdrantIndex

DIM = 512
K = 50


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sample(rng: np.random.Generator, n: int, kind: str, centres: np.ndarray) -> np.ndarray:
    """``n`` unit vectors: around random centres (cosine to the centre ~0.7) or uniform directions."""
    if kind == "uniform":
        return unit_rows(rng.standard_normal((n, DIM)))
    noise = rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return unit_rows(centres[rng.integers(0, len(centres), n)] + noise)


def fill(index: Index, vecs: dict[str, np.ndarray]) -> float:
    """Upsert every point (named vectors from ``vecs``) in batches of 1,000; returns points/s."""
    index.ensure_collection("b", DIM)
    n = len(next(iter(vecs.values())))
    t = time.perf_counter()
    for i in range(0, n, 1000):
        recs = [
            Record(f"p{j}", {name: v[j] for name, v in vecs.items()}, {"retllm_id": f"p{j}", "meta": {"g": j % 7}})  # type: ignore[misc]
            for j in range(i, min(i + 1000, n))
        ]
        index.upsert("b", recs)
    return n / (time.perf_counter() - t)


def latency(index: Index, queries: np.ndarray, name: str, using: str | None) -> tuple[float, list[list[int]]]:
    index.search("b", {name: queries[0]}, limit=K, using=using)  # type: ignore[arg-type,dict-item]
    lat, got = [], []
    for q in queries:
        t = time.perf_counter()
        hits = index.search("b", {name: q}, limit=K, using=using)  # type: ignore[arg-type,dict-item]
        lat.append(time.perf_counter() - t)
        got.append([int(h.id[1:]) for h in hits])
    return float(np.median(lat) * 1000), got


def recall(got: list[list[int]], vecs: np.ndarray, queries: np.ndarray) -> float:
    exact = np.argsort(-(queries @ vecs.T), axis=1)[:, :K]
    return float(np.mean([len(set(g) & set(e.tolist())) / K for g, e in zip(got, exact, strict=True)]))


def part1(n: int, kind: str, n_queries: int, rng: np.random.Generator, centres: np.ndarray) -> None:
    vecs = sample(rng, n, kind, centres)
    queries = sample(rng, n_queries, kind, centres)
    with tempfile.TemporaryDirectory() as d:
        for name, make, opt in [
            ("qdrant-edge (plain segments)", lambda: EdgeIndex(Path(d) / "e1"), False),
            ("qdrant-edge (after optimize/HNSW)", lambda: EdgeIndex(Path(d) / "e2"), True),
            ("qdrant-client local :memory:", lambda: QdrantIndex(":memory:"), False),
        ]:
            with make() as idx:
                ups = fill(idx, {"image": vecs})
                t_opt = 0.0
                if opt:
                    t = time.perf_counter()
                    idx.optimize("b")
                    t_opt = time.perf_counter() - t
                p50, got = latency(idx, queries, "image", "image")
            print(
                f"{n:>7} {kind:<9} {name:<34} upsert {ups:7.0f} pts/s  top-50 p50 {p50:7.2f} ms  "
                f"recall@50 {recall(got, vecs, queries):.3f}  optimize {t_opt:5.1f} s",
                flush=True,
            )


def part2(n: int, n_queries: int, rng: np.random.Generator, centres: np.ndarray) -> None:
    vecs = {name: sample(rng, n, "clustered", centres) for name in ("image", "text", "fused")}
    queries = sample(rng, n_queries, "clustered", centres)
    with tempfile.TemporaryDirectory() as d, EdgeIndex(Path(d)) as idx:
        fill(idx, vecs)
        for label in ("plain segments", "after optimize/HNSW"):
            if label.startswith("after"):
                idx.optimize("b")
            single, _ = latency(idx, queries, "text", "image")
            line = f"{n:>7} edge, {label:<20} single vector {single:6.2f} ms"
            for fusion in ("rank", "rrf"):
                idx.fusion = fusion  # type: ignore[assignment]
                auto, _ = latency(idx, queries, "text", None)
                line += f"   auto/{fusion} {auto:6.2f} ms ({auto / single:.2f}x)"
            print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--part", choices=["1", "2", "all"], default="all")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centres = unit_rows(rng.standard_normal((256, DIM)))
    for n in args.sizes:
        if args.part in ("1", "all"):
            for kind in ("clustered", "uniform"):
                part1(n, kind, args.queries, rng, centres)
        if args.part in ("2", "all"):
            part2(n, args.queries, rng, centres)


if __name__ == "__main__":
    main()
