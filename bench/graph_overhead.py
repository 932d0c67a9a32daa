"""The retrieval graph vs. ``Retriever.search`` on the same query: what LangGraph (tool calls, ToolNodes, state
copies, stream events) adds on top of the library.

Both sides use the same embedder, index and scorer objects, the same collection and query, with the vision cache
off so every run does the same model work; runs are interleaved, best of ``--repeats``. Two scorer shapes: the
0.66B bench shape (random Qwen2-VL-0.5B-shaped weights, fp32 on CPU) where the ratio matters, and a tiny model
where the difference in milliseconds is the graph's own cost.

    .venv/bin/python bench/graph_overhead.py --k 10 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))

from retllm.agent.graph import build_graph  # noqa: E402
from retllm.tools.deps import Deps  # noqa: E402

from bench._common import random_image  # noqa: E402
from bench.fine_stage import build_model  # noqa: E402
from retllm.embedders.open_clip import OpenClipEmbedder  # noqa: E402
from retllm.index.edge import EdgeIndex  # noqa: E402
from retllm.ingest import Ingestor  # noqa: E402
from retllm.scorers.hf import HFScorer  # noqa: E402
from retllm.scorers.retrace import RetraceConfig  # noqa: E402
from retllm.settings import Settings  # noqa: E402
from retllm.types import Item, Query  # noqa: E402
from tests.fakes.tiny_clip import build_tiny_clip  # noqa: E402
from tests.fakes.tiny_vlm import build_tiny_qwen  # noqa: E402


def compare(name: str, deps: Deps, k: int, repeats: int) -> None:
    query = Query(text="a red circle on a white background")
    retriever = deps.retriever("bench")
    graph = build_graph(deps)
    lib_t, graph_t = [], []
    lib_hits = graph_hits = None
    retriever.search(query, k=k)  # warm-up both paths
    graph.invoke({"query": query.text, "k": k, "collection": "bench"})
    for r in range(repeats):
        for side in ("lib", "graph") if r % 2 == 0 else ("graph", "lib"):  # alternate which side goes first
            t0 = time.perf_counter()
            if side == "lib":
                lib_hits = retriever.search(query, k=k)
                lib_t.append(time.perf_counter() - t0)
            else:
                graph_hits = graph.invoke({"query": query.text, "k": k, "collection": "bench"})["hits"]
                graph_t.append(time.perf_counter() - t0)
    assert lib_hits is not None and graph_hits is not None
    same = [(h.id, h.score) for h in lib_hits] == [(h.id, h.score) for h in graph_hits]
    a, b = min(lib_t), min(graph_t)
    ma, mb = statistics.median(lib_t), statistics.median(graph_t)
    print(
        f"{name:>22}: Retriever.search best {a * 1000:8.1f} / median {ma * 1000:8.1f} ms | graph best "
        f"{b * 1000:8.1f} / median {mb * 1000:8.1f} ms | overhead best {(b - a) * 1000:+7.1f} ms "
        f"({(b / a - 1) * 100:+.1f}%), median {(mb - ma) * 1000:+7.1f} ms ({(mb / ma - 1) * 100:+.1f}%) | "
        f"same ranking: {same}",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--skip-large", action="store_true", help="only the tiny model")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="retllm-graph-bench-"))
    embedder = OpenClipEmbedder.from_pretrained(f"local-dir:{build_tiny_clip(root / 'clip')}", device="cpu")
    index = EdgeIndex(root / "edge")
    rng = np.random.default_rng(0)
    side = (args.image_size, args.image_size)
    items = [Item(id=f"c{i}", image=random_image(f"g{args.image_size}_{i}", side, rng)) for i in range(args.k)]
    Ingestor(embedder, index, "bench").add(items)
    settings = Settings(data_dir=root / "data")
    tiny = HFScorer.from_pretrained(
        str(build_tiny_qwen(root / "tiny", "qwen2_vl")), device="cpu", vision_cache_size=0, batch_size=args.k
    )
    compare("tiny Qwen2-VL", Deps(settings, embedder=embedder, index=index, scorer=tiny), args.k, args.repeats)
    if not args.skip_large:
        ns = argparse.Namespace(shape="qwen2-vl-0.5b", device="cpu", image_size=args.image_size)
        model, processor, _ = build_model(ns)
        big = HFScorer(
            model, processor, retrace=RetraceConfig(), vision_cache_size=0, batch_size=args.k, image_tokens=None
        )
        compare("0.66B bench shape", Deps(settings, embedder=embedder, index=index, scorer=big), args.k, args.repeats)


if __name__ == "__main__":
    main()
