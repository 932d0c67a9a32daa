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


def _train_tokenizer(specials: list[str], words: list[str], vocab_size: int = 600, corpus: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator((corpus or CORPUS) * 20, trainer)
    # Answer words must be single tokens, as they are in the real vocabularies.
    tok.add_tokens(words)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def _sharpen(model: torch.nn.Module) -> None:
    """Scale the random LM head so answer distributions are peaked and entropies differ between inputs."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40.0)  # type: ignore[union-attr]


TINY_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
)
TINY_VISION = {
    "qwen2_vl": dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2),
    "qwen2_5_vl": dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        window_size=56,
        fullatt_block_indexes=[1],
    ),
    "qwen3_vl": dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=16,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0, 1],
    ),
}


def make_qwen(
    family: str = "qwen2_vl",
    *,
    layers: int = 4,
    text: dict | None = None,
    vision: dict | None = None,
    vocab_size: int | None = None,
    tie: bool = False,
    sharpen: bool = True,
    pixels: tuple[int, int] = (56 * 56, 112 * 112),
    seed: int = 0,
    device: str | None = None,
    dtype: torch.dtype | None = None,
):
    """A random-init Qwen2-VL / Qwen2.5-VL / Qwen3-VL model and processor in memory (any shape; tiny by default)."""
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tok = _train_tokenizer(QWEN_SPECIALS, ["True", "False"])
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    tok.chat_template = QWEN_CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text_cfg = dict(TINY_TEXT, **(text or {}))
    text_cfg.update(
        vocab_size=vocab_size or len(tok),
        num_hidden_layers=layers,
        max_position_embeddings=32768,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_cfg = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    vision_cfg.update(TINY_VISION[family])
    vision_cfg.update(vision or {})
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )
    if family == "qwen3_vl":
        text_cfg["head_dim"] = text_cfg["hidden_size"] // text_cfg["num_attention_heads"]
        text_cfg["rope_parameters"] = dict(text_cfg["rope_parameters"], mrope_interleaved=True)
    prefix = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL", "qwen3_vl": "Qwen3VL"}[family]
    config = getattr(transformers, f"{prefix}Config")(text_config=text_cfg, vision_config=vision_cfg, **common)
    torch.manual_seed(seed)
    model_cls = getattr(transformers, f"{prefix}ForConditionalGeneration")
    with torch.device(device or "cpu"):
        model = model_cls._from_config(config, dtype=dtype or torch.float32).eval()
    if sharpen:
        _sharpen(model)
    proc_cls = getattr(transformers, f"{prefix}Processor")
    patch = vision_cfg["patch_size"]
    processor = proc_cls(
        image_processor=Qwen2VLImageProcessor(min_pixels=pixels[0], max_pixels=pixels[1], patch_size=patch),
        tokenizer=tok,
        video_processor=getattr(transformers, f"{prefix}VideoProcessor", Qwen2VLVideoProcessor)(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    return model, processor


def build_tiny_qwen(folder: Path, family: str = "qwen2_vl", *, layers: int = 4, seed: int = 0) -> Path:
    """A tiny Qwen2-VL or Qwen2.5-VL checkpoint folder (model, tokenizer, processor), saved for from_pretrained."""
    model, processor = make_qwen(family, layers=layers, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def make_idefics3(
    *,
    layers: int = 4,
    text: dict | None = None,
    vision: dict | None = None,
    vocab_size: int | None = None,
    scale_factor: int = 1,
    tile: int = 28,
    longest_edge: int | None = None,
    sharpen: bool = True,
    seed: int = 0,
    family: str = "idefics3",
):
    """A random-init Idefics3 (SmolVLM layout) model and processor in memory (any shape; tiny by default).

    ``family="smolvlm"`` builds SmolVLM2's classes (model_type ``smolvlm``) with the same layout.

    Images are resized to ``longest_edge`` and, when that exceeds ``tile``, cut into ``tile``-px tiles plus a
    global view (SmolVLM's image splitting); each tile becomes (tile / patch)^2 / scale_factor^2 image tokens.
    """
    import transformers

    prefix = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[family]
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
    text_cfg = dict(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
    )
    text_cfg.update(text or {})
    text_cfg.update(vocab_size=vocab_size or len(tok), num_hidden_layers=layers, pad_token_id=tok.pad_token_id)
    vision_cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=14)
    vision_cfg.update(vision or {})
    vision_cfg["image_size"] = tile
    config = getattr(transformers, f"{prefix}Config")(
        text_config=text_cfg,
        vision_config=vision_cfg,
        image_token_id=image_id,
        scale_factor=scale_factor,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config).eval()
    if sharpen:
        _sharpen(model)
    edge = longest_edge or tile
    img_proc = getattr(transformers, f"{prefix}ImageProcessor")(
        do_image_splitting=edge > tile, size={"longest_edge": edge}, max_image_size={"longest_edge": tile}
    )
    seq = (tile // vision_cfg["patch_size"]) ** 2 // scale_factor**2
    extra = {"video_processor": transformers.SmolVLMVideoProcessor()} if family == "smolvlm" else {}
    processor = getattr(transformers, f"{prefix}Processor")(
        image_processor=img_proc, tokenizer=tok, image_seq_len=seq, chat_template=IDEFICS_CHAT_TEMPLATE, **extra
    )
    return model, processor


def build_tiny_idefics3(
    folder: Path, *, layers: int = 4, seed: int = 0, split: bool = False, family: str = "idefics3"
) -> Path:
    """A tiny Idefics3 checkpoint folder, 4 image tokens per 28x28 tile.

    ``split``: images are resized to a longest edge of 56 and cut into up to 2x2 tiles plus a global view
    (SmolVLM's image splitting); otherwise one 28-px view per image.
    """
    model, processor = make_idefics3(layers=layers, seed=seed, longest_edge=56 if split else 28, family=family)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
