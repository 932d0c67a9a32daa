"""Bounded work per request (issue 18, item 3): a decompression bomb's memory, and a normal search next to a
maximal query, for two trees side by side: this one and a baseline (today's main, through a shim folder that
puts its ``retllm`` first on the path: see docs/benchmarks.md).

- ``decode``: peak RSS growth and time of decoding an 8000x8000 half-transparent RGBA PNG (~256 KiB, built here,
  row by row) in a fresh interpreter per case: at full size, and as each caller asks for it (a request's check,
  CLIP's 224 px, SmolVLM's 2,048-px tiles, a hosted scorer's 1 MP, a 256-px thumbnail). The baseline has only
  the full-size decode, which every one of its callers did.
- ``serve``: a served app (uvicorn in the process) over tiny random models (a tiny open_clip and a tiny Qwen2-VL
  scorer, as bench/load_test.py builds them): the peak RSS growth of one and of two concurrent ``POST /search``
  with the bomb as the query image; then the latency of a normal text search alone and while a maximal query
  runs (``--words`` words: accepted by the baseline; this tree refuses it, 422, so its maximal query is the
  2,000 characters a request may carry, cut to RETLLM_MAX_QUERY_TOKENS).

    .venv/bin/python bench/bounded_work.py decode --base /tmp/shim-C
    .venv/bin/python bench/bounded_work.py serve --base /tmp/shim-C --words 5000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def rgba_bomb(side: int = 8000) -> bytes:
    """A PNG of ``side`` x ``side`` pixels of one half-transparent colour, written row by row (never whole)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\0" + bytes([200, 30, 30, 128]) * side
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def status_mib(key: str) -> float:
    """VmRSS / VmHWM of this process in MiB (``ru_maxrss`` would carry the parent's peak across exec)."""
    found = re.search(key + r":\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert found is not None
    return int(found[1]) / 1024


def reset_peak() -> float:
    """Restart the peak (VmHWM) from the current RSS; returns that RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_mib("VmRSS")


# --- decode ------------------------------------------------------------------------------------------------------

CASES = {  # name -> the call (this tree), as each caller asks
    "full size": "decode_image(bomb)",
    "validity check (every request)": "ImageLimits().check(bomb)",
    "CLIP input (224 px, shorter side)": "decode_image(bomb, min_side=224)",
    "SmolVLM tiles (2,048 px, longer side)": "decode_image(bomb, fit_side=2048)",
    "hosted scorer (1 MP budget)": "decode_image(bomb, min_pixels=1024 * 1024)",
    "thumbnail (256 px)": "decode_image(bomb, fit_side=256)",
}


def child_decode(case: str) -> dict[str, Any]:
    import inspect

    from retllm.images import ImageLimits, decode_image

    bounded = "min_side" in inspect.signature(decode_image).parameters
    code = CASES[case] if bounded else "decode_image(bomb)"  # the baseline decoded at full size for every caller
    bomb = rgba_bomb()
    before = reset_peak()
    t0 = time.perf_counter()
    out = eval(code, {"decode_image": decode_image, "ImageLimits": ImageLimits, "bomb": bomb})  # noqa: S307
    dt = time.perf_counter() - t0
    size = list(out.size) if out is not None else None
    return {"case": case, "growth": status_mib("VmHWM") - before, "seconds": dt, "size": size, "bytes": len(bomb)}


# --- serve -------------------------------------------------------------------------------------------------------


def child_serve(words: int, k: int, repeats: int) -> dict[str, Any]:
    import argparse as ap

    import httpx
    import numpy as np

    sys.path.append(str(REPO))
    from retllm.agent.service.app import create_app
    from retllm.agent.service.config import ServeSettings
    from retllm.agent.service.run import in_background
    from retllm.tools.deps import Deps

    from bench._common import random_image
    from bench.fine_stage import SHAPES, build_model
    from bench.load_test import TINY_SHAPE, tiny_clip_dir, wait_ready
    from retllm.embedders.open_clip import OpenClipEmbedder
    from retllm.ingest import Ingestor
    from retllm.registry import make_index
    from retllm.scorers.hf import HFScorer
    from retllm.settings import Settings
    from retllm.types import Item

    root = Path(tempfile.mkdtemp(prefix="retllm-bounded-"))
    settings = Settings(data_dir=root / "data", device="cpu")
    embedder = OpenClipEmbedder.from_pretrained(f"local-dir:{tiny_clip_dir(root / 'clip')}", device="cpu")
    index = make_index(settings)
    rng = np.random.default_rng(0)
    items = [Item(image=random_image(f"bounded_{i}", (224, 224), rng)) for i in range(12)]
    Ingestor(embedder, index, settings.collection, blob_dir=settings.blob_dir).add(items)
    SHAPES.setdefault("tiny", TINY_SHAPE)
    model, processor, _ = build_model(ap.Namespace(shape="tiny", device="cpu", image_size=224))
    scorer = HFScorer(model, processor, model_id="bench:tiny", image_tokens=None, vision_cache_size=0)
    deps = Deps(settings, embedder=embedder, index=index, scorer=scorer)
    app = create_app(settings, ServeSettings(serve_workers=8, max_queue=32), deps=deps)
    out: dict[str, Any] = {}
    bomb = rgba_bomb()
    normal = {"query": "a red circle on a white background", "k": k}
    with in_background(app) as url, httpx.Client(base_url=url, timeout=3600) as http:
        wait_ready(url)
        for _ in range(3):  # warm-up: thread pools, allocator, kernels
            assert http.post("/search", json=normal).status_code == 200

        # the bomb as a query image: one request, then two at once
        def bomb_search() -> int:
            with httpx.Client(base_url=url, timeout=3600) as c:
                return c.post("/search", data={"k": str(k)}, files={"image": ("bomb.png", bomb)}).status_code

        before = reset_peak()
        out["bomb_status"] = bomb_search()
        out["bomb_one"] = status_mib("VmHWM") - before
        before = reset_peak()
        codes: list[int] = []
        pair = [threading.Thread(target=lambda: codes.append(bomb_search())) for _ in range(2)]
        for t in pair:
            t.start()
        for t in pair:
            t.join()
        out["bomb_two"] = status_mib("VmHWM") - before
        out["bomb_two_status"] = codes

        def timed(body: dict[str, Any]) -> tuple[int, float]:
            with httpx.Client(base_url=url, timeout=3600) as c:
                t0 = time.perf_counter()
                r = c.post("/search", json=body)
                return r.status_code, time.perf_counter() - t0

        alone = [timed(normal)[1] for _ in range(repeats)]
        attack: dict[str, Any] = {"query": "word " * words, "k": k}
        status, took = timed(attack)
        out["attack_status"], out["attack_seconds"] = status, took
        text = attack["query"] if status == 200 else ("a red circle on a white background " * 60)[:2000]
        maximal = {"query": text, "k": k}
        out["maximal_chars"] = len(text)
        during, maximal_s = [], []
        for _ in range(repeats):
            result: dict[str, Any] = {}
            t = threading.Thread(target=lambda into=result: into.update(r=timed(maximal)))
            t.start()
            time.sleep(0.05)  # the maximal query is under way (its own latency is reported next to it)
            during.append(timed(normal)[1])
            t.join()
            maximal_s.append(result["r"][1])
        out["alone"], out["during"], out["maximal_seconds"] = alone, during, maximal_s
    deps.close()
    return out


# --- the two arms side by side -----------------------------------------------------------------------------------


def run_child(base: str | None, args: list[str]) -> Any:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (base, str(REPO)) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    r = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True
    )
    if r.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["decode", "serve"])
    ap.add_argument("--base", required=True, help="shim folder whose retllm/ is the baseline tree's")
    ap.add_argument("--words", type=int, default=5000, help="the maximal query the baseline accepts (words)")
    ap.add_argument("--k", type=int, default=4, help="candidates per search")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    arms = {"main": args.base, "this tree": None}
    if args.part == "decode":
        print("| case | main: peak RSS growth | this tree: peak RSS growth | ratio | main: time | this tree: time |")
        print("| --- | --- | --- | --- | --- | --- |")
        for case in CASES:
            got = {name: run_child(path, ["decode", case]) for name, path in arms.items()}
            a, b = got["main"], got["this tree"]
            size = f" ({b['size'][0]}x{b['size'][1]})" if b["size"] else ""
            print(
                f"| {case} | {a['growth']:.0f} MiB | {b['growth']:.0f} MiB{size} "
                f"| **{a['growth'] / max(b['growth'], 1):.1f}x** | {a['seconds']:.2f} s | {b['seconds']:.2f} s |",
                flush=True,
            )
        return
    serve = [str(args.words), str(args.k), str(args.repeats)]
    got = {name: run_child(path, ["serve", *serve]) for name, path in arms.items()}
    print(json.dumps(got, indent=1), flush=True)
    print("\n| | main | this tree | ratio |\n| --- | --- | --- | --- |")
    a, b = got["main"], got["this tree"]
    print(
        f"| one search with the bomb: peak RSS growth | {a['bomb_one']:.0f} MiB | {b['bomb_one']:.0f} MiB "
        f"| **{a['bomb_one'] / max(b['bomb_one'], 1):.1f}x** |"
    )
    print(
        f"| two at once | {a['bomb_two']:.0f} MiB | {b['bomb_two']:.0f} MiB "
        f"| **{a['bomb_two'] / max(b['bomb_two'], 1):.1f}x** |"
    )
    print(
        f"| a {args.words:,}-word query | HTTP {a['attack_status']}, {a['attack_seconds']:.2f} s "
        f"| HTTP {b['attack_status']}, {b['attack_seconds'] * 1000:.0f} ms | |"
    )
    med = {n: (statistics.median(g["alone"]), statistics.median(g["during"])) for n, g in got.items()}
    print(f"| normal search alone, p50 | {med['main'][0] * 1000:.0f} ms | {med['this tree'][0] * 1000:.0f} ms | |")
    print(
        f"| normal search while the maximal query runs, p50 | {med['main'][1]:.2f} s "
        f"({a['maximal_chars']:,}-character query) | {med['this tree'][1]:.2f} s ({b['maximal_chars']:,} characters) "
        f"| **{med['main'][1] / med['this tree'][1]:.1f}x** |"
    )
    mx = {n: statistics.median(g["maximal_seconds"]) for n, g in got.items()}
    print(f"| the maximal query itself, p50 | {mx['main']:.2f} s | {mx['this tree']:.2f} s | |")
    print(
        f"| slow-down next to the maximal query | {med['main'][1] / med['main'][0]:.1f}x "
        f"| {med['this tree'][1] / med['this tree'][0]:.1f}x | |"
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        part = sys.argv[2]
        if part == "decode":
            res = child_decode(sys.argv[3])
        else:
            res = child_serve(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        print(json.dumps(res))
    else:
        main()
