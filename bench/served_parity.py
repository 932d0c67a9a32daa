"""Local vs. served scores for the same weights: HFScorer (fp32 logits) against llama.cpp's server
(llama-cpp-python, f32 GGUF converted from the same checkpoint) on text pairs, then on image pairs with a
tiny Qwen2-VL and Qwen2.5-VL served with their projector (mmproj GGUF); prints Markdown tables.

    .venv/bin/python bench/served_parity.py            # text and image pairs
    .venv/bin/python bench/served_parity.py --images   # image pairs only
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from retllm.scorers.base import Candidate  # noqa: E402
from retllm.scorers.hf import HFScorer  # noqa: E402
from retllm.scorers.openai import OpenAIScorer  # noqa: E402
from retllm.scorers.retrace import RetraceConfig  # noqa: E402
from retllm.types import Query  # noqa: E402
from tests.fakes.llama_server import llama_cpp_version, llama_server, make_gguf  # noqa: E402
from tests.fakes.llama_vl import (  # noqa: E402
    IMAGE_TOKENS,
    build_tiny_qwen_vl,
    label,
    llama_vl_server,
    make_vl_ggufs,
    parity_images,
    parity_pairs,
)
from tests.fakes.tiny_lm import build_tiny_qwen2_lm  # noqa: E402

PAIRS = [
    ("a red circle", ["a red circle", "a blue square", "a green triangle", "two dogs in the snow"]),
    ("a yellow star", ["purple orange", "a yellow star on a black background", "grey"]),
    ("which option matches the query", ["the option number", "A B C D", "a helpful assistant"]),
]


def text_pairs() -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        hf_dir = build_tiny_qwen2_lm(root / "hf")
        gguf = make_gguf(hf_dir, root / "tiny.gguf", root / "converter")
        local = HFScorer.from_pretrained(str(hf_dir), device="cpu", retrace=RetraceConfig(enabled=False))
        with llama_server(gguf) as url:
            client = openai.OpenAI(base_url=url, api_key="none", timeout=30)
            served = OpenAIScorer(client, "tiny", top_logprobs=len(local.tokenizer), revisit="off")
            print(f"llama-cpp-python {llama_cpp_version()}, tiny Qwen2 (4 layers, hidden 64), f32 GGUF\n")
            print("| query | candidate | local two-way P(True) | served | abs. difference |")
            print("| --- | --- | --- | --- | --- |")
            diffs = []
            for q, texts in PAIRS:
                cands = [Candidate(f"c{i}", text=t) for i, t in enumerate(texts)]
                for t, a, b in zip(
                    texts, local.score(Query(text=q), cands), served.score(Query(text=q), cands), strict=True
                ):
                    assert a.value is not None and b.value is not None
                    diffs.append(abs(a.value - b.value))
                    print(f"| {q} | {t} | {a.value:.6f} | {b.value:.6f} ({b.method}) | {diffs[-1]:.1e} |")
            print(f"\nmax |local - served| = {max(diffs):.1e} over {len(diffs)} pairs (target <= 1e-3)")


def image_pairs(family: str, root: Path) -> None:
    """One family: the per-pair table at the server's defaults, then the max with an f32 KV cache."""
    hf_dir = build_tiny_qwen_vl(root / family / "hf", family)
    lm, mmproj = make_vl_ggufs(hf_dir, root / family / "gguf", root / "converter")
    images = parity_images(root / "images")
    local = HFScorer.from_pretrained(
        str(hf_dir), device="cpu", retrace=RetraceConfig(enabled=False), image_tokens=IMAGE_TOKENS
    )
    mine = [(q, c, local.score(q, c)) for q, c in parity_pairs(images)]
    print(f"\n{family}: llama-cpp-python {llama_cpp_version()}, --chat_format mtmd, f32 GGUF + f32 mmproj\n")
    print("| query | candidate | local two-way P(True) | served | abs. difference |")
    print("| --- | --- | --- | --- | --- |")
    for kv, args in (("f16 KV cache (default)", ()), ("f32 KV cache", ("--type_k", "0", "--type_v", "0"))):
        with llama_vl_server(lm, mmproj, *args) as url:
            client = openai.OpenAI(base_url=url, api_key="none", timeout=60)
            served = OpenAIScorer(client, "tiny", top_logprobs=len(local.tokenizer), revisit="off")
            diffs = []
            for q, cands, scores in mine:
                for c, a, b in zip(cands, scores, served.score(q, cands), strict=True):
                    assert a.value is not None and b.value is not None, (a.error, b.error)
                    diffs.append(abs(a.value - b.value))
                    if not args:
                        row = f"| {label(q)} | {label(c)} | {a.value:.6f} | {b.value:.6f} ({b.method}) |"
                        print(f"{row} {diffs[-1]:.1e} |")
        print(f"\n{family}, {kv}: max |local - served| = {max(diffs):.1e} over {len(diffs)} pairs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", action="store_true", help="image pairs only")
    args = ap.parse_args()
    if not args.images:
        text_pairs()
    with tempfile.TemporaryDirectory() as d:
        for family in ("qwen2_vl", "qwen2_5_vl"):
            image_pairs(family, Path(d))


if __name__ == "__main__":
    main()
