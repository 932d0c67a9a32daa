"""Load test of the running service: C concurrent clients against ``POST /search`` of a real ``retllm serve`` app.

The bench embeds M random images into an embedded store (a temporary RETLLM_DATA_DIR), starts the service
(uvicorn on a free loopback port, in this process) with the built embedder, index and scorer injected, and
drives it with closed-loop clients: each client (a thread with its own httpx connection) sends its next search
when the previous one has answered. Every level of ``--clients`` runs in the same process on the same warm
models, one after the other, after a warm-up; per level it reports requests, errors (non-200s summarised by
status and body), p50/p95/max latency, throughput (requests/s and pairs/s over the whole level, and over the
part where every client was busy) and the ratio to the one-client level. For the why behind a ratio it also
reports what the scorer's worker did during the level: forwards, mean pairs per forward, the share of the
wall time the model was running, and the process's CPU use (cores busy on average).

Model setups (``--shape``):

- ``tiny``: a tiny random-weight Qwen2-VL (4 layers, hidden 64), as the tests' fakes build;
- ``qwen2-vl-0.5b``: the 0.66B bench shape of ``bench/fine_stage.py`` (random weights, fp32 on CPU).

The embedder is a tiny random open_clip model in both; images are ``--image-size`` px and the scorer's
processor sees every image at that size (image_tokens None, as the other fine-stage benches).

    .venv/bin/python bench/load_test.py --shape tiny --clients 1,8,32
    .venv/bin/python bench/load_test.py --shape qwen2-vl-0.5b --clients 1,8 --k 4 --top 4 --requests 8 --rounds 2
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

sys.path.append(str(Path(__file__).resolve().parent.parent))

from retllm.agent.service.app import create_app  # noqa: E402
from retllm.agent.service.config import ServeSettings  # noqa: E402
from retllm.agent.service.run import in_background  # noqa: E402
from retllm.tools.deps import Deps  # noqa: E402

from bench._common import random_image  # noqa: E402
from bench.fine_stage import SHAPES, build_model  # noqa: E402
from retllm.embedders.open_clip import OpenClipEmbedder  # noqa: E402
from retllm.ingest import Ingestor  # noqa: E402
from retllm.registry import make_index  # noqa: E402
from retllm.scorers.hf import HFScorer  # noqa: E402
from retllm.scorers.retrace import RetraceConfig  # noqa: E402
from retllm.settings import Settings  # noqa: E402
from retllm.types import Item  # noqa: E402

TINY_SHAPE = dict(family="qwen2_vl", layers=4)  # make_qwen's tiny text and vision defaults (hidden 64)

# A tiny random-init open_clip model (the coarse stage is not what this bench measures).
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

PHRASES = [
    "a red circle on a white background",
    "two dogs playing in the snow",
    "a blue square next to a green triangle",
    "a yellow star in the night sky",
    "a purple car parked by the sea",
    "an orange cat sleeping on a sofa",
    "a black and white photo of a bridge",
    "children flying a kite on the beach",
]

DEFAULTS = {  # per shape: total requests per level, collection size
    "tiny": dict(requests=128, items=40),
    "qwen2-vl-0.5b": dict(requests=8, items=40),
}


def tiny_clip_dir(folder: Path, seed: int = 0) -> Path:
    """Save a random-init open_clip model from :data:`TINY_CLIP_CFG` as a ``local-dir:`` folder."""
    import open_clip
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = CLIP(**TINY_CLIP_CFG)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    config = {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def wait_ready(url: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{url}/readyz", timeout=30)
        if r.status_code == 200:
            return r.json()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the service is not ready: {r.text}")
        time.sleep(0.1)


class ForwardMeter:
    """Wraps the scorer worker's ``run_batch`` (instrumentation only): forwards, pairs and seconds in the model."""

    def __init__(self, scorer: HFScorer) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[int, float]] = []  # (pairs, seconds) per forward
        inner = scorer._worker.run_batch

        def run_batch(pairs: list[Any]) -> list[Any]:
            t0 = time.perf_counter()
            try:
                return inner(pairs)
            finally:
                with self.lock:
                    self.log.append((len(pairs), time.perf_counter() - t0))

        scorer._worker.run_batch = run_batch

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def since(self, mark: int) -> list[tuple[int, float]]:
        with self.lock:
            return list(self.log[mark:])


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (every process), from /proc/stat; NaN where unavailable."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return math.nan
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Result:
    client: int
    start: float
    end: float
    status: int  # 0: no HTTP answer (an exception)
    detail: str = ""
    hits: int = 0


@dataclass
class Level:
    clients: int
    per_client: int
    results: list[Result] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    machine_cpu: float = 0.0
    forwards: list[tuple[int, float]] = field(default_factory=list)


def request_body(args: argparse.Namespace, client: int, i: int, query_images: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"k": args.k, "top": args.top}
    n = client * 1000 + i
    if args.image_every and i % args.image_every == args.image_every - 1:
        body["image"] = query_images[n % len(query_images)]  # an image -> image query (a data URL)
    else:
        body["query"] = f"{PHRASES[n % len(PHRASES)]} ({n})"
    return body


def run_level(
    url: str, args: argparse.Namespace, meter: ForwardMeter, clients: int, per_client: int, query_images: list[str]
) -> Level:
    """``clients`` closed-loop clients, ``per_client`` searches each, released together."""
    level = Level(clients, per_client)
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=args.timeout) as http:
            http.get("/healthz")  # the connection is open before the clock starts
            barrier.wait()
            for i in range(per_client):
                body = request_body(args, c, i, query_images)
                t0 = time.perf_counter()
                try:
                    r = http.post("/search", json=body)
                    t1 = time.perf_counter()
                    if r.status_code == 200 and len(r.json()["hits"]) == min(args.top, args.k):
                        res = Result(c, t0, t1, 200, hits=len(r.json()["hits"]))
                    elif r.status_code == 200:  # an answer with the wrong number of hits is an error too
                        res = Result(c, t0, t1, -200, f"200 with {len(r.json()['hits'])} hits")
                    else:
                        res = Result(c, t0, t1, r.status_code, r.text[:200])
                except httpx.HTTPError as e:
                    res = Result(c, t0, time.perf_counter(), 0, f"{type(e).__name__}: {e}"[:200])
                with lock:
                    level.results.append(res)

    threads = [threading.Thread(target=client, args=(c,), name=f"client-{c}") for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t_start, cpu0, mcpu0 = time.perf_counter(), cpu_seconds(), machine_cpu_seconds()
    mark = meter.mark()
    for t in threads:
        t.join()
    level.wall = time.perf_counter() - t_start
    level.cpu = cpu_seconds() - cpu0
    level.machine_cpu = machine_cpu_seconds() - mcpu0
    level.forwards = meter.since(mark)
    for r in level.results:  # times relative to the release
        r.start -= t_start
        r.end -= t_start
    return level


@dataclass
class Stats:
    requests: int
    ok: int
    errors: Counter
    p50: float
    p95: float
    max: float
    rps: float
    pps: float
    steady_rps: float
    busy: float
    cores: float
    others: float
    cpu_per_pair: float
    forwards: int
    mean_batch: float
    ms_per_pair: float


def stats(level: Level, k: int) -> Stats:
    ok = [r for r in level.results if r.status == 200]
    # Bodies with their numbers masked ("busy: 16 requests are already running..."), so alike errors count together.
    errors: Counter = Counter((r.status, re.sub(r"\d+", "N", r.detail)) for r in level.results if r.status != 200)
    lat = np.array([r.end - r.start for r in ok]) if ok else np.array([math.nan])
    # Steady part: until the first client finished its last request, every client had a request in flight.
    last: dict[int, float] = {}
    for r in level.results:
        last[r.client] = max(last.get(r.client, 0.0), r.end)
    t_steady = min(last.values())
    steady = sum(1 for r in ok if r.end <= t_steady)
    pairs = sum(n for n, _ in level.forwards)
    model_s = sum(s for _, s in level.forwards)
    return Stats(
        requests=len(level.results),
        ok=len(ok),
        errors=errors,
        p50=float(np.percentile(lat, 50)),
        p95=float(np.percentile(lat, 95)),
        max=float(lat.max()),
        rps=len(ok) / level.wall,
        pps=len(ok) * k / level.wall,
        steady_rps=steady / t_steady if t_steady > 0 else math.nan,
        busy=model_s / level.wall,
        cores=level.cpu / level.wall,
        others=max(0.0, (level.machine_cpu - level.cpu) / level.wall),
        cpu_per_pair=level.cpu / max(1, len(ok) * k),
        forwards=len(level.forwards),
        mean_batch=pairs / max(1, len(level.forwards)),
        ms_per_pair=1000 * model_s / max(1, pairs),
    )


def fmt_s(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"


def build_scorer(args: argparse.Namespace) -> HFScorer:
    if args.shape == "tiny":
        SHAPES.setdefault("tiny", TINY_SHAPE)  # build_model reads its shapes from this table
    ns = argparse.Namespace(shape=args.shape, device="cpu", image_size=args.image_size)
    model, processor, _ = build_model(ns)
    return HFScorer(
        model,
        processor,
        model_id=f"bench:{args.shape}",
        batch_size=args.batch_size,
        retrace=RetraceConfig(enabled=args.retrace == "on"),
        vision_cache_size=args.vision_cache,
        image_tokens=None,  # the processor's own size: every image is image_size**2 pixels
        cross_query=args.cross_query == "on",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", "qwen2-vl-0.5b"], default="tiny")
    ap.add_argument("--clients", default="1,8", help="comma-separated concurrency levels, run in this order")
    ap.add_argument("--requests", type=int, help="total searches per level (default: 128 tiny, 8 0.66B)")
    ap.add_argument("--min-per-client", type=int, default=2, help="searches per client at least")
    ap.add_argument("--items", type=int, help="images in the collection (default 40)")
    ap.add_argument("--k", type=int, default=4, help="coarse candidates the MLLM scores per search")
    ap.add_argument("--top", type=int, default=4, help="hits returned per search")
    ap.add_argument("--image-every", type=int, default=0, help="every N-th search of a client is image->image")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8, help="scorer pairs per forward (RETLLM_SCORER_BATCH_SIZE)")
    ap.add_argument("--cross-query", choices=["on", "off"], default="on", help="RETLLM_SCORER_CROSS_QUERY")
    ap.add_argument("--vision-cache", type=int, default=0, help="vision cache entries (0: every pair pays the tower)")
    ap.add_argument("--retrace", choices=["on", "off"], default="on")
    ap.add_argument("--torch-threads", type=int, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--serve-workers", type=int, default=8, help="RETLLM_SERVE_WORKERS")
    ap.add_argument("--max-queue", type=int, default=32, help="RETLLM_MAX_QUEUE")
    ap.add_argument("--warmup", type=int, default=1, help="sequential warm-up searches (then one concurrent burst)")
    ap.add_argument("--rounds", type=int, default=1, help="run the levels this many times, alternating their order")
    ap.add_argument("--timeout", type=float, default=900.0, help="client timeout per request, s")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    total = args.requests or DEFAULTS[args.shape]["requests"]
    n_items = args.items or DEFAULTS[args.shape]["items"]
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    root = Path(tempfile.mkdtemp(prefix="retllm-load-"))
    settings = Settings(data_dir=root / "data", device="cpu")
    t0 = time.perf_counter()
    embedder = OpenClipEmbedder.from_pretrained(f"local-dir:{tiny_clip_dir(root / 'clip')}", device="cpu")
    index = make_index(settings)  # the embedded store under RETLLM_DATA_DIR
    rng = np.random.default_rng(0)
    side = (args.image_size, args.image_size)
    items = [Item(image=random_image(f"load{args.image_size}_{i}", side, rng)) for i in range(n_items)]
    report = Ingestor(embedder, index, settings.collection, blob_dir=settings.blob_dir).add(items)
    query_images = []
    for i in range(4):
        data = Path(random_image(f"load{args.image_size}_q{i}", side, rng)).read_bytes()
        query_images.append("data:image/png;base64," + base64.b64encode(data).decode())
    print(f"collection: {report.added} images of {args.image_size} px ({time.perf_counter() - t0:.1f}s)", flush=True)

    scorer = build_scorer(args)
    meter = ForwardMeter(scorer)
    deps = Deps(settings, embedder=embedder, index=index, scorer=scorer)
    conf = ServeSettings(serve_workers=args.serve_workers, max_queue=args.max_queue)
    app = create_app(settings, conf, deps=deps)
    print(
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; scorer batch {args.batch_size}, "
        f"cross-query {args.cross_query}, vision cache {args.vision_cache}, retrace {args.retrace}; "
        f"serve workers {args.serve_workers}, queue {args.max_queue}; k {args.k}, top {args.top}"
        + (f", every {args.image_every}th search image->image" if args.image_every else ""),
        flush=True,
    )
    done: list[tuple[int, Level, Stats]] = []  # (round, level, stats)
    base_c = min(levels)
    try:
        with in_background(app) as url:
            wait_ready(url)
            t0 = time.perf_counter()
            for _ in range(args.warmup):
                run_level(url, args, meter, 1, 1, query_images)
            run_level(url, args, meter, max(levels), 1, query_images)  # thread pools, allocator, the largest batches
            print(f"warm-up: {time.perf_counter() - t0:.1f}s", flush=True)
            for rnd in range(args.rounds):
                order = levels if rnd % 2 == 0 else levels[::-1]  # later rounds alternate: both sides see the machine
                for c in order:
                    per = max(args.min_per_client, math.ceil(total / c))
                    level = run_level(url, args, meter, c, per, query_images)
                    st = stats(level, args.k)
                    done.append((rnd, level, st))
                    print(
                        f"{c:>3} clients x {per:>3}: {st.requests} requests, {st.requests - st.ok} errors, "
                        f"p50 {fmt_s(st.p50)}, p95 {fmt_s(st.p95)}, max {fmt_s(st.max)}, {st.rps:.2f} req/s "
                        f"({st.pps:.2f} pairs/s; all clients busy: {st.steady_rps:.2f} req/s) | {st.forwards} "
                        f"forwards, {st.mean_batch:.1f} pairs each, {st.ms_per_pair:.0f} ms/pair in the model, model "
                        f"busy {100 * st.busy:.0f}% of the wall, this process {st.cores:.2f} cores "
                        f"({st.cpu_per_pair:.2f} CPU s per pair), other processes {st.others:.2f} cores "
                        f"({level.wall:.1f}s)",
                        flush=True,
                    )
                    for (status, detail), n in st.errors.most_common():
                        print(f"      {n} x {status or 'no answer'}: {detail}", flush=True)
    finally:
        deps.close()  # the scorer's worker thread and the index
        shutil.rmtree(root, ignore_errors=True)

    base = {rnd: st for rnd, level, st in done if level.clients == base_c}
    print()
    print(
        f"| {args.shape}, k={args.k}, batch {args.batch_size} | clients × requests | errors | p50 | p95 | max "
        f"| req/s | pairs/s | vs {base_c} client{'s' if base_c > 1 else ''} | pairs/forward | model busy "
        "| CPU cores (ours / others) | our CPU s per pair |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for rnd, level, st in sorted(done, key=lambda d: (d[0], d[1].clients)):
        codes = ", ".join(f"{n}× {s or 'no answer'}" for (s, _), n in st.errors.most_common())
        name = f"{level.clients} client{'s' if level.clients > 1 else ''}"
        if args.rounds > 1:
            name += f", round {rnd + 1}"
        print(
            f"| {name} | {level.clients} × {level.per_client} | {st.requests - st.ok}{f' ({codes})' if codes else ''} "
            f"| {fmt_s(st.p50)} | {fmt_s(st.p95)} | {fmt_s(st.max)} | {st.rps:.2f} | {st.pps:.2f} "
            f"| **{st.rps / base[rnd].rps:.2f}×** | {st.mean_batch:.1f} | {100 * st.busy:.0f}% "
            f"| {st.cores:.2f} / {st.others:.2f} | {st.cpu_per_pair:.3f} |"
        )


if __name__ == "__main__":
    main()
