"""OpenAIScorer against a real llama.cpp server (llama-cpp-python) serving a tiny GGUF converted at test
time from the same random weights HFScorer loads: served and local scores must agree."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from retllm.errors import EndpointError
from retllm.scorers.base import Candidate
from retllm.scorers.hf import HFScorer
from retllm.scorers.openai import OpenAIScorer
from retllm.scorers.retrace import RetraceConfig
from retllm.types import Query
from tests.fakes.llama_server import llama_cpp_version, llama_server, make_gguf
from tests.fakes.tiny_lm import build_tiny_qwen2_lm

pytestmark = [
    pytest.mark.compat,
    pytest.mark.slow,  # GGUF conversion and a llama.cpp server: CI's slow pass
    pytest.mark.skipif(llama_cpp_version() is None, reason="llama-cpp-python[server] is not installed"),
]

PAIRS = [
    ("a red circle", ["a red circle", "a blue square", "a green triangle", "two dogs in the snow"]),
    ("a yellow star", ["purple orange", "a yellow star on a black background", "grey"]),
    ("which option matches the query", ["the option number", "A B C D", "a helpful assistant"]),
]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The checkpoint folder and its GGUF (f32, the same weights)."""
    root = tmp_path_factory.mktemp("tiny_lm")
    hf_dir = build_tiny_qwen2_lm(root / "hf")
    return hf_dir, make_gguf(hf_dir, root / "tiny.gguf", root / "converter")


@pytest.fixture(scope="module")
def served(tiny_lm: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    with llama_server(tiny_lm[1]) as url:
        yield url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="none", timeout=30.0)


def test_served_scores_equal_local_scores(tiny_lm: tuple[Path, Path], served: str) -> None:
    """Parity: two-way P(True) from llama.cpp's logprobs and from HFScorer's fp32 logits, |d| <= 1e-3.

    (The converted test tokenizer splits some digit runs differently from its original, " 1" -> "Ġ1" vs
    "Ġ", "1", so the prompts here have no digits: a different token sequence is a different question.)"""
    local = HFScorer.from_pretrained(str(tiny_lm[0]), device="cpu", retrace=RetraceConfig(enabled=False))
    vocab = len(local.tokenizer)
    remote = OpenAIScorer(client(served), "tiny", top_logprobs=vocab, revisit="off")  # both answers listed
    diffs = []
    for q, texts in PAIRS:
        cands = [Candidate(f"c{i}", text=t) for i, t in enumerate(texts)]
        mine, theirs = local.score(Query(text=q), cands), remote.score(Query(text=q), cands)
        assert [s.method for s in mine] == ["logits"] * len(cands)
        assert [s.method for s in theirs] == ["logprobs"] * len(cands)
        for a, b in zip(mine, theirs, strict=True):
            assert a.value is not None and b.value is not None
            diffs.append(abs(a.value - b.value))
            assert b.p_true == pytest.approx(a.p_true, rel=1e-2)
    assert max(diffs) <= 1e-3, diffs
    assert len({round(d, 9) for d in diffs}) > 1 and min(d for d in diffs) < 1e-3  # scores, not constants


def test_text_prompts_reach_the_model(tiny_lm: tuple[Path, Path]) -> None:
    """llama.cpp's chatml renders list content as nothing: every pair got the same score. Sent as a string,
    each pair's text reaches the model."""
    with llama_server(tiny_lm[1], "--chat_format", "chatml") as url:
        remote = OpenAIScorer(client(url), "tiny", top_logprobs=700, revisit="off")
        cands = [Candidate(f"c{i}", text=t) for i, t in enumerate(PAIRS[0][1])]
        out = remote.score(Query(text="a red circle"), cands)
    assert len({s.value for s in out}) == len(out)


def test_images_sent_to_a_text_only_server_fail_with_one_clear_line(served: str, candidate_images: list[Path]) -> None:
    remote = OpenAIScorer(client(served), "tiny", revisit="auto")
    with pytest.raises(EndpointError, match="ignored an image"):
        remote.score(Query(text="a red circle"), [Candidate("c0", image=str(candidate_images[0]))])


def test_the_revisit_turn_is_accepted_as_we_send_it(served: str) -> None:
    """The echoed assistant turn carries content "" (llama.cpp refuses null: a validation error, as a 500)."""
    remote = OpenAIScorer(client(served), "tiny", top_logprobs=700, revisit="off")
    call = {"id": "call_1", "type": "function", "function": {"name": "revisit_image", "arguments": "{}"}}

    def turn(content: str | None) -> list[dict]:
        return [
            {"role": "user", "content": "Does the image match the caption: <a red circle>?"},
            {"role": "assistant", "content": content, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Candidate c0 image, below."},
            {"role": "user", "content": "Please directly output True or False"},
        ]

    resp = remote._ask(turn(""), None)
    assert resp.choices[0].logprobs is not None
    with pytest.raises(EndpointError, match="HTTP 500"):  # not retried as a transient 500
        remote._ask(turn(None), None)


def test_tools_are_offered_only_where_the_template_shows_them(tiny_lm: tuple[Path, Path], served: str) -> None:
    tool = OpenAIScorer(client(served), "tiny")._tool("c0")
    plain = OpenAIScorer(client(served), "tiny", revisit="auto")
    assert plain._check_tools(tool, None) is False  # the model's own template ignores tools
    with llama_server(tiny_lm[1], "--chat_format", "chatml-function-calling") as url:
        fc = OpenAIScorer(client(url), "tiny", revisit="auto")
        assert fc._check_tools(tool, None) is True


def test_a_server_without_logits_reaches_the_verbalized_path(tiny_lm: tuple[Path, Path]) -> None:
    """llama-cpp-python without logits_all answers logprobs requests with a 500: not transient, not retried;
    the scorer asks for a plain answer (this random model's answers are not True/False, so they are
    reported as unparseable, per pair)."""
    with llama_server(tiny_lm[1], logits_all=False) as url:
        for concurrency in (1, 4):  # concurrent pairs refused at once all switch
            remote = OpenAIScorer(client(url), "tiny", revisit="off", concurrency=concurrency, retries=3)
            out = remote.score(Query(text="q"), [Candidate(f"c{i}", text=t) for i, t in enumerate("abcd")])
            assert remote._logprobs_ok is False
            assert all(s.method == "verbalized" or "unparseable answer" in (s.error or "") for s in out)
