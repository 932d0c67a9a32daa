"""OpenAIScorer against a real llama.cpp server (llama-cpp-python) serving a tiny random-weight Qwen2-VL /
Qwen2.5-VL with its projector, both converted at test time from the checkpoint HFScorer loads: served and
local scores of image pairs must agree (see tests/fakes/llama_vl.py for what the tiny model must be)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from retllm.scorers.hf import HFScorer
from retllm.scorers.openai import OpenAIScorer
from retllm.scorers.retrace import RetraceConfig
from tests.fakes.llama_server import llama_cpp_version

pytestmark = [
    pytest.mark.compat,
    pytest.mark.slow,  # GGUF conversion and a llama.cpp server: CI's slow pass
    pytest.mark.skipif(llama_cpp_version() is None, reason="llama-cpp-python[server] is not installed"),
]

# Measured on 2 CPU cores, llama-cpp-python 0.3.36, default server settings (f16 KV cache), these 14 pairs:
# max 9.8e-5 (Qwen2-VL) and 1.0e-4 (Qwen2.5-VL); 4.1e-5 and 7.1e-5 with an f32 KV cache. The bound leaves
# 5x for other CPUs and thread counts and still catches each defect found on the way (Qwen2-VL pairs:
# rms_norm_eps 1e-5, which llama.cpp ignores, 1.3e-3 to 2.7e-3; the qwen2.5-vl chat handler's lost
# newline, 0.18 to 0.38).
BOUND = 5e-4


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def served_vl(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.fakes.llama_vl import build_tiny_qwen_vl, llama_vl_server, make_vl_ggufs, parity_images

    root = tmp_path_factory.mktemp(request.param)
    hf_dir = build_tiny_qwen_vl(root / "hf", request.param)
    converter = tmp_path_factory.getbasetemp() / "llama_converter"  # fetched once for both families
    lm, mmproj = make_vl_ggufs(hf_dir, root / "gguf", converter)
    with llama_vl_server(lm, mmproj) as url:
        yield hf_dir, url, parity_images(root / "images")


def test_served_image_pair_scores_equal_local_scores(served_vl: tuple[Path, str, list[Path]]) -> None:
    """Parity on image pairs: two-way P(True) from llama.cpp's logprobs (mtmd encoder + f32 GGUFs) and from
    HFScorer's fp32 logits, over text->image, image->text and image->image pairs, |d| <= BOUND."""
    from tests.fakes.llama_vl import IMAGE_TOKENS, parity_pairs

    hf_dir, url, images = served_vl
    local = HFScorer.from_pretrained(
        str(hf_dir), device="cpu", retrace=RetraceConfig(enabled=False), image_tokens=IMAGE_TOKENS
    )
    client = openai.OpenAI(base_url=url, api_key="none", timeout=60.0)
    remote = OpenAIScorer(client, "tiny", top_logprobs=len(local.tokenizer), revisit="off")
    diffs, values = [], []
    for q, cands in parity_pairs(images):
        mine, theirs = local.score(q, cands), remote.score(q, cands)
        assert [s.method for s in mine] == ["logits"] * len(cands), [s.error for s in mine]
        assert [s.method for s in theirs] == ["logprobs"] * len(cands), [s.error for s in theirs]
        for a, b in zip(mine, theirs, strict=True):
            assert a.value is not None and b.value is not None
            diffs.append(abs(a.value - b.value))
            values.append(a.value)
    assert len(diffs) == 14
    assert max(diffs) <= BOUND, diffs
    # the images reach both models: scores move with the image by far more than the two sides differ
    assert max(values) - min(values) > 100 * BOUND
