"""Upsert throughput and top-50 query latency: embedded qdrant-edge vs. qdrant-client local mode.

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


def bench(index: Index, n: int, queries: np.ndarray, vecs: np.ndarray, optimize: bool) -> tuple[float, float, float]:
    index.ensure_collection("b", DIM)
    t = time.perf_counter()
    for i in range(0, n, 1000):
        recs = [
            Record(f"p{j}", {"image": vecs[j]}, {"retllm_id": f"p{j}", "meta": {"g": j % 7}})
            for j in range(i, min(i + 1000, n))
        ]
        index.upsert("b", recs)
    t_up = time.perf_counter() - t
    t_opt = 0.0
    if optimize and isinstance(index, EdgeIndex):
        t = time.perf_counter()
        index.optimize("b")
        t_opt = time.perf_counter() - t
    index.search("b", {"image": queries[0]}, limit=50, using="image")  # warm
    lat = []
    for q in queries:
        t = time.perf_counter()
        hits = index.search("b", {"image": q}, limit=50, using="image")
        lat.append(time.perf_counter() - t)
        assert len(hits) == 50
    return n / t_up, float(np.median(lat) * 1000), t_opt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--queries", type=int, default=50)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        vecs = rng.standard_normal((n, DIM)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        queries = vecs[rng.choice(n, args.queries, replace=False)] + 0.01
        with tempfile.TemporaryDirectory() as d:
            for name, make, opt in [
                ("qdrant-edge (plain segments)", lambda: EdgeIndex(Path(d) / "e1"), False),
                ("qdrant-edge (after optimize/HNSW)", lambda: EdgeIndex(Path(d) / "e2"), True),
                ("qdrant-client local :memory:", lambda: QdrantIndex(":memory:"), False),
            ]:
                with make() as idx:
                    ups, p50, t_opt = bench(idx, n, queries, vecs, opt)
                rows.append((n, name, ups, p50, t_opt))
                print(
                    f"{n:>7} {name:<36} upsert {ups:9.0f} pts/s   top-50 p50 {p50:8.2f} ms   optimize {t_opt:6.1f} s",
                    flush=True,
                )
    print()
    for n in args.sizes:
        r = {name: (ups, p50) for m, name, ups, p50, _ in rows if m == n}
        e, c = r["qdrant-edge (after optimize/HNSW)"], r["qdrant-client local :memory:"]
        pe = r["qdrant-edge (plain segments)"]
        print(
            f"n={n}: edge/client upsert speed {pe[0] / c[0]:.1f}x; "
            f"client/edge query latency {c[1] / pe[1]:.1f}x plain, {c[1] / e[1]:.1f}x with HNSW"
        )


if __name__ == "__main__":
    main()
