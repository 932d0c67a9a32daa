"""Ingest throughput: batched, overlapped pipeline vs. a per-image loop, same model, same files.

ViT-B-32 shape with random weights (``--model``: any open_clip architecture, e.g. the paper's ViT-L-14-336),
fp32 on CPU or fp16 on a GPU (as ``OpenClipEmbedder.from_pretrained`` loads it), embedded qdrant-edge store.

    .venv/bin/python bench/ingest_throughput.py --n 256                                        # CPU
    python3 bench/ingest_throughput.py --device cuda --model ViT-L-14-336 --n 1024 --batch 64 --workers 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from retllm.embedders.base import fuse  # noqa: F401  (same module the pipeline uses)
from retllm.embedders.open_clip import OpenClipEmbedder
from retllm.images import load_image
from retllm.index.base import Record
from retllm.index.edge import EdgeIndex
from retllm.ingest import Ingestor, iter_sources
from retllm.types import content_id


def make_images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        # Photo-sized JPEGs so that decoding costs what it costs for real collections.
        base = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((640, 480), Image.BILINEAR)
        p = folder / f"{i:05d}.jpg"
        im.save(p, quality=90)
        paths.append(p)
    return paths


def per_image_loop(emb: OpenClipEmbedder, index: EdgeIndex, paths: list[Path]) -> float:
    index.ensure_collection("loop", emb.dim)
    t = time.perf_counter()
    for p in paths:
        data = p.read_bytes()
        im = load_image(p)
        vec = emb.embed_image_inputs([emb.prepare_image(im)])[0]
        cid = content_id(None, data)
        index.upsert("loop", [Record(cid, {"image": vec}, {"retllm_id": cid, "image": str(p), "meta": {}})])
    return time.perf_counter() - t


def pipeline(emb: OpenClipEmbedder, index: EdgeIndex, paths: list[Path], workers: int) -> float:
    t = time.perf_counter()
    report = Ingestor(emb, index, "pipe", workers=workers).run(iter_sources(paths), progress=True)
    assert report.added == len(paths), report
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model, _, preprocess = open_clip.create_model_and_transforms(
        args.model, pretrained=None, device=dev, precision="fp32" if dev.type == "cpu" else "fp16"
    )
    emb = OpenClipEmbedder(model, preprocess, open_clip.get_tokenizer(args.model), device=dev, batch_size=args.batch)
    with tempfile.TemporaryDirectory() as d:
        paths = make_images(Path(d) / "imgs", args.n)
        with EdgeIndex(Path(d) / "edge") as index:
            pipeline(emb, index, paths[:16], args.workers)  # warm-up (allocator, threads)
            index.drop_collection("pipe")
            t_loop = per_image_loop(emb, index, paths)
            t_pipe = pipeline(emb, index, paths, args.workers)
    print(
        f"{args.model} on {dev}, torch threads {torch.get_num_threads()}, n={args.n}, batch={args.batch}, "
        f"decode workers={args.workers}"
    )
    print(f"per-image loop : {args.n / t_loop:8.1f} items/s ({t_loop:.1f} s)")
    print(f"pipeline       : {args.n / t_pipe:8.1f} items/s ({t_pipe:.1f} s)")
    print(f"speed-up       : {t_loop / t_pipe:8.2f}x  (target >= 3x)")


if __name__ == "__main__":
    main()
