"""HFScorer on a text-only causal LM (tiny random-weight Qwen2): text pairs, the same contract as a VLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from retllm.errors import ConfigError
from retllm.scorers.base import Candidate
from retllm.scorers.hf import HFScorer
from retllm.scorers.retrace import RetraceConfig
from retllm.types import Query
from tests.fakes.tiny_lm import build_tiny_qwen2_lm


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_lm(tmp_path_factory.mktemp("tiny_lm") / "hf")


TEXTS = ["a red circle", "a blue square on white", "two dogs", "grey", "a green triangle and a star"]


@pytest.mark.parametrize("retrace", [RetraceConfig(enabled=False), RetraceConfig(start=0, end=3, threshold=-1.0)])
def test_text_pairs_batched_equal_one_by_one(lm_dir: Path, retrace: RetraceConfig) -> None:
    s = HFScorer.from_pretrained(str(lm_dir), device="cpu", retrace=retrace, batch_size=8)
    assert s.family.text_only and s.vision_cache is None
    cands = [Candidate(f"t{i}", text=t) for i, t in enumerate(TEXTS)]
    batched = s.score(Query(text="a red circle"), cands)
    single = [s.score(Query(text="a red circle"), [c])[0] for c in cands]
    assert all(b.method == "logits" for b in batched) and len({b.value for b in batched}) == len(cands)
    assert max(abs(a.value - b.value) for a, b in zip(batched, single, strict=True)) <= 1e-5  # type: ignore[operator]
    assert [b.retraced for b in batched] == [(2 if retrace.enabled else None)] * len(cands)


def test_the_prompt_is_one_string_in_the_models_template(lm_dir: Path) -> None:
    """A text model's chat template expects string content; a list would be rendered as its repr."""
    from retllm.prompting import prompt_for, render

    s = HFScorer.from_pretrained(str(lm_dir), device="cpu")
    r = render(prompt_for("text", "text"), query_text="a red circle", query_image=False, candidate_text="grey")
    text = s._chat_text(r)
    assert "Query: <a red circle>\\nCandidate: <grey>" in text.replace("\n", "\\n") and "'type'" not in text
    assert text.endswith("<|im_start|>assistant\n")


def test_image_pairs_are_refused_with_a_clear_error(lm_dir: Path, candidate_images: list[Path]) -> None:
    s = HFScorer.from_pretrained(str(lm_dir), device="cpu")
    with pytest.raises(ConfigError, match="text-only model .* scores text pairs only"):
        s.score(Query(text="a red circle"), [Candidate("c0", image=str(candidate_images[0]))])
    with pytest.raises(ConfigError, match="text-only"):
        s.score(Query(image=str(candidate_images[0])), [Candidate("t", text="words")])


def test_image_row_retracing_is_refused_for_a_text_model(lm_dir: Path) -> None:
    with pytest.raises(ConfigError, match="V_ROWS=all"):
        HFScorer.from_pretrained(str(lm_dir), device="cpu", retrace=RetraceConfig(v_rows="image"))


def test_a_tokenizer_without_a_pad_token_still_batches(tmp_path: Path) -> None:
    """Llama and Mistral tokenizers ship no pad token: batched text pairs must still be scored."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = build_tiny_qwen2_lm(tmp_path / "qwen")
    tok = AutoTokenizer.from_pretrained(src)
    tok.pad_token = None
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    assert AutoTokenizer.from_pretrained(tmp_path / "llama").pad_token is None  # as shipped
    s = HFScorer.from_pretrained(str(tmp_path / "llama"), device="cpu", retrace=RetraceConfig(enabled=False))
    cands = [Candidate(f"t{i}", text=t) for i, t in enumerate(TEXTS)]
    out = s.score(Query(text="a red circle"), cands)
    assert s.family.name == "Llama (text)" and [o.method for o in out] == ["logits"] * len(cands)
    single = [s.score(Query(text="a red circle"), [c])[0] for c in cands]
    assert max(abs(a.value - b.value) for a, b in zip(out, single, strict=True)) <= 1e-5  # type: ignore[operator]
