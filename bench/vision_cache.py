"""Vision cache on the default model family: SmolVLM-256M-shaped Idefics3, random init, CPU fp32.

SmolVLM splits each image into 512-px tiles plus a global view and runs its SigLIP tower on every tile,
so the tower dominates a pair's cost. Measured side by side, same candidates, retracing on:

- no cache: every query re-encodes every candidate (what the scorer did for this family before);
- cache cold: the first query over the candidates (each distinct image encoded once);
- cache warm: a second query over the same candidates (no tower at all).

    .venv/bin/python bench/vision_cache.py --k 6 --longest-edge 1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parent.parent))

from bench._common import random_image  # noqa: E402
from retllm.scorers.base import Candidate  # noqa: E402
from retllm.scorers.hf import HFScorer  # noqa: E402
from retllm.scorers.retrace import RetraceConfig  # noqa: E402
from retllm.types import Query  # noqa: E402
from tests.fakes.tiny_vlm import make_idefics3  # noqa: E402

# HuggingFaceTB/SmolVLM-256M-Instruct's published shape: SmolLM2-135M decoder, SigLIP-B/16 at 512 px.
SMOLVLM_256M = dict(
    layers=30,
    vocab_size=49280,
    text=dict(
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    ),
    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16),
    scale_factor=4,
    tile=512,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--longest-edge", type=int, default=1024, help="SmolVLM-256M itself uses 2048 (4x4 tiles)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--image-side", type=int, default=None, help="RETLLM_SCORER_IMAGE_SIDE for both scorers")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model, processor = make_idefics3(**SMOLVLM_256M, longest_edge=args.longest_edge, sharpen=False)  # type: ignore[arg-type]
    n_params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"SmolVLM-256M shape: {n_params:.2f}B params, fp32, cpu, built in {time.perf_counter() - t0:.0f}s")
    rng = np.random.default_rng(0)
    cands = [Candidate(f"c{i}", image=random_image(f"smol_{i}", (640, 480), rng, (16, 12))) for i in range(args.k)]
    q1, q2 = Query(text="a red circle on a white background"), Query(text="two dogs playing in the snow")
    kw = dict(batch_size=args.k, retrace=RetraceConfig(), image_side=args.image_side)
    plain = HFScorer(model, processor, vision_cache_size=0, **kw)  # type: ignore[arg-type]
    cached = HFScorer(model, processor, vision_cache_size=256, **kw)  # type: ignore[arg-type]
    r, ims = plain._pair(q1, None, cands[0])
    px = processor(text=[plain._chat_text(r)], images=[ims], return_tensors="pt", **plain._proc_kwargs)
    edge = plain._proc_kwargs.get("size", {}).get("longest_edge", args.longest_edge)
    print(f"k={args.k} images of 640x480, longest edge {edge}: {px['pixel_values'].shape[1]} tiles of 512 px per image")
    plain.score(q1, cands[:1])  # warm-up
    times: dict[str, list[float]] = {"none": [], "cold": [], "warm": []}
    diff = 0.0
    for _ in range(args.repeats):
        t = time.perf_counter()
        ref = plain.score(q2, cands)
        times["none"].append(time.perf_counter() - t)
        assert cached.vision_cache is not None
        cached.vision_cache.clear()
        t = time.perf_counter()
        cached.score(q1, cands)
        times["cold"].append(time.perf_counter() - t)
        t = time.perf_counter()
        got = cached.score(q2, cands)
        times["warm"].append(time.perf_counter() - t)
        diff = max(diff, max(abs(a.value - b.value) for a, b in zip(ref, got, strict=True)))
        print("  " + "  ".join(f"{k} {v[-1]:.1f}s" for k, v in times.items()), flush=True)
    t_none, t_cold, t_warm = (min(times[k]) for k in ("none", "cold", "warm"))
    for name, t in [("no cache        ", t_none), ("cache cold      ", t_cold), ("cache warm      ", t_warm)]:
        print(f"{name}: {args.k / t:6.2f} pairs/s ({t:.2f} s, best of {args.repeats})")
    print(f"\nsecond query over the same candidates (warm) vs no cache: {t_none / t_warm:.2f}x")
    print(f"first query (cold) vs no cache: {t_none / t_cold:.2f}x")
    print(f"max |score(cached) - score(uncached)| = {diff:.2e}")


if __name__ == "__main__":
    main()
