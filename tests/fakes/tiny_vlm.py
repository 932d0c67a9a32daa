"""Tiny random-weight VLMs (Qwen2-VL, Qwen2.5-VL, Idefics3) built from configs, saved, and reloaded by users' path.

The tokenizer is a small byte-level BPE trained with ``tokenizers`` on prompt-like text, wrapped as
the model's tokenizer with its special tokens and a chat template; processors come from class
defaults (image sizes shrunk so a test image is a handful of tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "Does the image match the caption: <a red circle on a white background>? Please directly output True or False",
    "Query image. Candidate image. Does the candidate match the query? Answer True or False.",
    "Does the text match the query text? True False True False yes no",
    "You are a helpful assistant. system user assistant Assistant: User:",
    "a blue square a green triangle a yellow star purple orange black grey",
    "Which option matches? Answer with the option number. 0 1 2 3 4 5 6 7 8 9 A B C D",
]

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IDEFICS_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
]

IDEFICS_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def _train_tokenizer(specials: list[str], words: list[str], vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    # Answer words must be single tokens, as they are in the real vocabularies.
    tok.add_tokens(words)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _sharpen(model: torch.nn.Module) -> None:
    """Scale the random LM head so answer distributions are peaked and entropies differ between inputs."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)  # type: ignore[union-attr]


def build_tiny_qwen(folder: Path, family: str = "qwen2_vl", *, layers: int = 4, seed: int = 0) -> Path:
    """A tiny Qwen2-VL or Qwen2.5-VL checkpoint folder (model, tokenizer, processor)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tok = _train_tokenizer(QWEN_SPECIALS, ["True", "False"])
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    img_proc = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

        vision = dict(
            depth=1,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **common)
        model_cls, proc_cls = Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    elif family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        model_cls, proc_cls = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    else:
        raise ValueError(family)
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    _sharpen(model)
    processor = proc_cls(
        image_processor=img_proc,
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_idefics3(folder: Path, *, layers: int = 4, seed: int = 0) -> Path:
    """A tiny Idefics3 (SmolVLM layout) checkpoint folder; no image splitting, 2 image tokens per image."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    tok = _train_tokenizer(IDEFICS_SPECIALS, [" True", " False"])
    tok.add_special_tokens(
        {
            "eos_token": "<end_of_utterance>",
            "pad_token": "<|endoftext|>",
            "additional_special_tokens": ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"],
        }
    )
    tok.chat_template = IDEFICS_CHAT_TEMPLATE
    image_id = tok.convert_tokens_to_ids("<image>")
    text = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = Idefics3Config(
        text_config=text,
        vision_config=vision,
        image_token_id=image_id,
        scale_factor=1,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    _sharpen(model)
    img_proc = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": 28}, max_image_size={"longest_edge": 28}
    )
    processor = Idefics3Processor(
        image_processor=img_proc, tokenizer=tok, image_seq_len=4, chat_template=IDEFICS_CHAT_TEMPLATE
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
