"""Local vs. served scores for the same weights: HFScorer (fp32 logits) against llama.cpp's server
(llama-cpp-python, f32 GGUF converted from the same checkpoint) on text pairs; prints a Markdown table.

    .venv/bin/python bench/served_parity.py
"""

from __future__ import annotations

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
from tests.fakes.tiny_lm import build_tiny_qwen2_lm  # noqa: E402

PAIRS = [
    ("a red circle", ["a red circle", "a blue square", "a green triangle", "two dogs in the snow"]),
    ("a yellow star", ["purple orange", "a yellow star on a black background", "grey"]),
    ("which option matches the query", ["the option number", "A B C D", "a helpful assistant"]),
]


def main() -> None:
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


if __name__ == "__main__":
    main()
