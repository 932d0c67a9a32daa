"""Model-family constants for local MLLMs, in one table keyed by ``config.model_type``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from retllm.errors import ConfigError


@dataclass(frozen=True)
class Family:
    """What differs between model families.

    Attributes:
        name: Human name.
        answer_prefix: Prepended to the prompt file's answer words to get the first generated token after
            the generation prompt (SmolVLM's prompt ends in ``Assistant:``, so its answers carry a space).
        text_model: Attribute path from the top model to the decoder stack (with ``layers`` and ``norm``).
        vision_cache: Whether per-image vision outputs can be injected through ``mm_encoder_outputs``.
        deepstack: Whether vision outputs carry per-layer deepstack features (Qwen3-VL).
        tiled: Whether the processor resizes every image to a fixed longest edge and cuts it into tiles
            (Idefics3/SmolVLM), so the image size the model sees is set on the processor, not the image.
        token_budget: Whether the processor sizes each image by a visual-token budget (Qwen: ``size`` with
            ``shortest_edge``/``longest_edge`` in pixels, one token per ``(patch_size * merge_size)**2`` pixels).
        text_only: A causal LM without vision (loaded with ``AutoModelForCausalLM`` and its tokenizer): it
            scores text pairs, so that text collections and served GGUF weights can be compared locally.
    """

    name: str
    answer_prefix: str
    text_model: str
    vision_cache: bool
    deepstack: bool = False
    tiled: bool = False
    token_budget: bool = False
    text_only: bool = False


FAMILIES: dict[str, Family] = {
    "qwen2_vl": Family("Qwen2-VL", "", "model.language_model", vision_cache=True, token_budget=True),
    "qwen2_5_vl": Family("Qwen2.5-VL", "", "model.language_model", vision_cache=True, token_budget=True),
    "qwen3_vl": Family("Qwen3-VL", "", "model.language_model", vision_cache=True, deepstack=True, token_budget=True),
    # Idefics3/SmolVLM: per-image tiles are found from the expanded prompt (see HFScorer._idefics_tiles).
    "idefics3": Family("Idefics3", " ", "model.text_model", vision_cache=True, tiled=True),
    "smolvlm": Family("SmolVLM", " ", "model.text_model", vision_cache=True, tiled=True),
    # Text-only causal LMs (chat templates end in a newline after the assistant header).
    "qwen2": Family("Qwen2 (text)", "", "model", vision_cache=False, text_only=True),
    "qwen3": Family("Qwen3 (text)", "", "model", vision_cache=False, text_only=True),
    "llama": Family("Llama (text)", "", "model", vision_cache=False, text_only=True),
    "mistral": Family("Mistral (text)", "", "model", vision_cache=False, text_only=True),
}


def family_of(model: Any) -> Family:
    """The family entry for a loaded model, or a ConfigError listing the supported ones."""
    mt = getattr(model.config, "model_type", None)
    if mt not in FAMILIES:
        raise ConfigError(f"model type {mt!r} is not supported; supported: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[mt]


def resolve_attr(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def answer_token_ids(tokenizer: Any, family: Family, words: tuple[str, ...]) -> list[int]:
    """Token ids of the answer words (from a prompt file) as this family answers them; each must be one token."""
    out = []
    for w in words:
        ids = tokenizer.encode(family.answer_prefix + w, add_special_tokens=False)
        if len(ids) != 1:
            raise ConfigError(
                f"answer {family.answer_prefix + w!r} is {len(ids)} tokens in this {family.name} tokenizer; "
                "need exactly one"
            )
        out.append(int(ids[0]))
    return out


def mlp_gate_weight(mlp: torch.nn.Module) -> torch.Tensor:
    """The weight whose mean |.| scales V in visual retracing (gate_proj; else the MLP's first linear)."""
    for name in ("gate_proj", "up_proj", "fc1", "w1"):
        lin = getattr(mlp, name, None)
        if isinstance(lin, torch.nn.Linear):
            return lin.weight
    for m in mlp.modules():
        if isinstance(m, torch.nn.Linear):
            return m.weight
    raise ConfigError(f"cannot find a linear layer in MLP {type(mlp).__name__} for visual retracing")
