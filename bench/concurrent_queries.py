"""Throughput of concurrent queries on one shared local scorer vs. the same queries one at a time.

Eight queries, each with its own k candidate images (so the vision cache cannot help either side), run
three ways, interleaved and best of ``--repeats`` each:

- one at a time: each query batches its own pairs (k = 10, batch 8: a batch of 8, then one of 2);
- 8 threads, cross-query micro-batching (the default): the worker fills each forward with pending pairs
  of any query, so partial batches disappear;
- 8 threads, each query batched alone (``RETLLM_SCORER_CROSS_QUERY=false``): the forwards a lock
  around the model would give.

    .venv/bin/python bench/concurrent_queries.py --shape qwen2-vl-0.5b --k 10 --repeats 2     # CPU, fp32
    python3 bench/concurrent_queries.py --shape qwen2.5-vl-7b --device cuda --k 10 --image-size 448
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench._common import random_image  # noqa: E402
from bench.fine_stage import build_model, model_args, sync  # noqa: E402
from retllm.scorers.base import Candidate, Score  # noqa: E402
from retllm.scorers.hf import HFScorer  # noqa: E402
from retllm.types import Query  # noqa: E402


def sequential(s: HFScorer, work: list[tuple[Query, list[Candidate]]]) -> list[list[Score]]:
    return [s.score(q, cs) for q, cs in work]


def concurrent(s: HFScorer, work: list[tuple[Query, list[Candidate]]]) -> list[list[Score]]:
    out: list[list[Score]] = [[] for _ in work]
    barrier = threading.Barrier(len(work))

    def run(i: int) -> None:
        barrier.wait()
        out[i] = s.score(*work[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    ap = model_args()
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    model, processor, dev = build_model(args)
    rng = np.random.default_rng(0)
    side = (args.image_size, args.image_size)
    work = [
        (
            Query(text=f"query {q}: a red circle on a white background"),
            [
                Candidate(f"q{q}c{i}", image=random_image(f"conc_{args.image_size}_{q}_{i}", side, rng))
                for i in range(args.k)
            ],
        )
        for q in range(args.queries)
    ]
    common = dict(batch_size=args.batch_size, vision_cache_size=0, image_tokens=None)
    variants = {
        "one query at a time": (HFScorer(model, processor, **common), sequential),  # type: ignore[arg-type]
        f"{args.queries} threads, cross-query batches": (HFScorer(model, processor, **common), concurrent),  # type: ignore[arg-type]
        f"{args.queries} threads, each query alone": (
            HFScorer(model, processor, cross_query=False, **common),  # type: ignore[arg-type]
            concurrent,
        ),
    }
    first = next(iter(variants.values()))[0]
    first.score(work[0][0], work[0][1][:2])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, list[list[Score]]] = {}
    forwards: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved: every side sees the same machine state
        for name, (scorer, run) in variants.items():
            before = scorer._worker.batches
            sync(dev)
            t = time.perf_counter()
            results[name] = run(scorer, work)
            sync(dev)
            times[name].append(time.perf_counter() - t)
            forwards[name] = scorer._worker.batches - before
    pairs = args.queries * args.k
    base = min(times["one query at a time"])
    for name, ts in times.items():
        best = min(ts)
        print(
            f"{name:<34}: {pairs / best:7.2f} pairs/s ({best:.2f} s, best of {args.repeats}, "
            f"{forwards[name]} forwards)  {base / best:.2f}x"
        )
    ref = results["one query at a time"]
    for name, res in results.items():
        diff = max(abs(a.value - b.value) for r, w in zip(res, ref, strict=True) for a, b in zip(r, w, strict=True))  # type: ignore[operator]
        print(f"max |score - one-at-a-time score|, {name}: {diff:.1e}")


if __name__ == "__main__":
    main()
