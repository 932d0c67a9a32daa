"""A tiny random-weight text-only causal LM (Qwen2 architecture) with the test BPE tokenizer and the Qwen
chat template, saved as a checkpoint folder: loaded locally by HFScorer and, converted to GGUF, served by
llama.cpp, so the same weights can be scored both ways."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.fakes.tiny_vlm import CORPUS, QWEN_CHAT_TEMPLATE, QWEN_SPECIALS, _train_tokenizer

# Without the answer words, BPE learns no " True"/" False" merges: each answer has one spelling, as the
# local scorer reads it, so local and served scores can be compared exactly.
LM_CORPUS = [line.replace("True", "").replace("False", "") for line in CORPUS]


def build_tiny_qwen2_lm(folder: Path, *, layers: int = 4, seed: int = 0, sharpen: float = 8.0) -> Path:
    """Save a tiny Qwen2ForCausalLM and its tokenizer (with chat template) in ``folder``; returns it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = _train_tokenizer(QWEN_SPECIALS, ["True", "False"], corpus=LM_CORPUS)
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = tok.get_vocab()
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)  # peaked, input-dependent answer distributions
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
