"""Eval harness overhead: pairs/s of ``run_eval`` vs. the fine stage scoring the same pairs directly.

Both arms score the same (query, top-k candidates) pairs with one HFScorer of the fine-stage benchmark's
shape (random weights, the research code's retracing on, vision cache on and cleared before each arm):

- fine stage: ``scorer.score(query, candidates)`` per query, the candidates being the query's coarse top-k;
- eval harness: ``run_eval`` over the same queries (coarse search in the store, score-cache lookups and
  writes, metrics, results.json/report.md/rankings.jsonl), with a fresh score cache, so every pair is a miss.

Then the harness runs again over the same data and k: every pair must come from the cache (no model call).
Arms are interleaved, each one's best time kept (this machine's run-to-run noise is ~5-10%).

    .venv/bin/python bench/eval_throughput.py --shape qwen2-vl-0.5b --k 10 --queries 6 --repeats 2   # CPU, fp32
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench._common import random_image  # noqa: E402
from bench.fine_stage import build_model, model_args  # noqa: E402
from retllm.embedders.open_clip import OpenClipEmbedder  # noqa: E402
from retllm.eval.datasets import EvalSet, Section  # noqa: E402
from retllm.eval.runner import collection_names, ensure_corpus, run_eval  # noqa: E402
from retllm.index.edge import EdgeIndex  # noqa: E402
from retllm.pipeline import Retriever  # noqa: E402
from retllm.scorers.base import Candidate  # noqa: E402
from retllm.scorers.hf import HFScorer  # noqa: E402
from retllm.scorers.retrace import RetraceConfig  # noqa: E402
from retllm.types import Item, Query  # noqa: E402
from tests.fakes.tiny_clip import build_tiny_clip  # noqa: E402

WORDS = "red blue green dog cat car tree house boat bird snow beach city street river".split()


def main() -> None:
    ap = model_args()
    ap.add_argument("--queries", type=int, default=6, help="text->image queries per arm")
    ap.add_argument("--images", type=int, default=40, help="corpus images")
    args = ap.parse_args()
    model, processor, dev = build_model(args)
    rng = np.random.default_rng(0)
    side = (args.image_size, args.image_size)
    items = [
        Item(id=f"img{i}", image=random_image(f"eval_{args.image_size}_{i}", side, rng)) for i in range(args.images)
    ]
    queries = {f"q{i}": Query(text=" ".join(rng.choice(WORDS, 6)) + f" number {i}") for i in range(args.queries)}
    positives = {q: {f"img{i}"} for i, q in enumerate(queries)}
    evalset = EvalSet("bench", "test", pools={"images": items})
    evalset.tasks.append(Section("text_to_image", "images", "image", queries, positives))
    scorer = HFScorer(  # the fine-stage benchmark's scorer: retracing on, batch k, every image at --image-size
        model,
        processor,
        retrace=RetraceConfig(),
        vision_cache_size=256,
        batch_size=args.k,
        image_tokens=None,  # type: ignore[arg-type]
    )

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        embedder = OpenClipEmbedder.from_pretrained(f"local-dir:{build_tiny_clip(root / 'clip')}", device="cpu")
        with EdgeIndex(root / "edge") as index:
            coll = collection_names(evalset)["images"]
            ensure_corpus(embedder, index, coll, items)  # embedded once, before any timing (as a rerun finds it)
            retriever = Retriever(embedder, index, coll, scorer=scorer)
            top = {q: retriever.coarse(x, k=args.k, using="image") for q, x in queries.items()}
            by_id = {it.id: it for it in items}
            cands = {q: [Candidate(h.id, image=str(by_id[h.id].image)) for h in hits] for q, hits in top.items()}
            pairs = sum(len(c) for c in cands.values())
            scorer.score(Query(text="warm up"), cands["q0"][:2])

            def fine() -> None:
                for q, x in queries.items():
                    scorer.score(x, cands[q])

            def harness(cache: Path, name: str) -> dict:
                return run_eval(
                    evalset,
                    embedder=embedder,
                    index=index,
                    scorer=scorer,
                    k=args.k,
                    out_dir=root / name,
                    cache_path=cache,
                    fingerprint="bench",
                    progress=False,
                )

            times: dict[str, list[float]] = {"fine stage  ": [], "eval harness": []}
            for r in range(args.repeats):
                for name in times:
                    assert scorer.vision_cache is not None
                    scorer.vision_cache.clear()
                    t0 = time.perf_counter()
                    if name == "fine stage  ":
                        fine()
                    else:
                        res = harness(root / f"scores{r}.sqlite", f"run{r}")
                        assert res["directions"]["text_to_image"]["cache"]["misses"] == pairs, res
                    times[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            again = harness(root / "scores0.sqlite", "again")["directions"]["text_to_image"]
            t_again = time.perf_counter() - t0

    best = {name: min(ts) for name, ts in times.items()}
    for name, t in best.items():
        print(f"{name}: {pairs / t:6.3f} pairs/s ({t:.2f} s for {pairs} pairs, best of {args.repeats})")
    ratio = best["fine stage  "] / best["eval harness"]
    print(f"\neval harness vs fine stage: {ratio:.3f}x pairs/s (target: within 10%, i.e. >= 0.90x)")
    hits, misses = again["cache"]["hits"], again["cache"]["misses"]
    print(
        f"second run, same data and k: {hits} cache hits, {misses} misses ({100 * hits / max(1, hits + misses):.0f}% "
        f"hits, target 100%), {t_again:.2f} s"
    )


if __name__ == "__main__":
    main()
