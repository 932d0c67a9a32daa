"""Ready configurations for ``retllm eval --preset NAME``: the paper's settings and one for small hardware.

A preset sets the settings that decide the numbers (embedder, scorer, k, retracing); an option given on the
command line (``--k``) wins over the preset, and the preset wins over the environment, so that
``--preset paper`` means the same run on every machine. The applied values are recorded in ``results.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from retllm.errors import ConfigError
from retllm.settings import Settings


@dataclass(frozen=True)
class Preset:
    """A named evaluation configuration: settings fields, the coarse pool size, and what it is for."""

    name: str
    description: str
    k: int
    settings: dict[str, Any] = field(default_factory=dict)


PAPER = Preset(
    "paper",
    "RetLLM's evaluation (METHOD.md §4): CLIP ViT-L/14@336 coarse stage, Qwen2.5-VL-7B-Instruct scoring the top 5 "
    "with 256-512 visual tokens per image and visual retracing as in the research code (all embedding rows, no "
    "final norm, layers 6-15, 0.75, 0.12). "
    "Needs a GPU with ~20 GB (bf16 there; fp32 on CPU is ~30 GB and slow).",
    k=5,
    settings={
        "embedder": "open_clip:ViT-L-14-336@openai",
        "scorer": "hf:Qwen/Qwen2.5-VL-7B-Instruct",
        "scorer_min_image_tokens": 256,  # the research code's processor: 256-512 visual tokens per image
        "scorer_max_image_tokens": 512,
        "scorer_image_side": None,
        "retrace": {
            "enabled": True,
            "start": 5,
            "end": 16,
            "threshold": 0.75,
            "ratio": 0.12,
            "top_k": 10,
            "v_rows": "all",
            "final_norm": False,
        },
    },
)

SMALL = Preset(
    "small",
    "Laptop / CPU: CLIP ViT-B/32 (LAION-2B) coarse stage, SmolVLM-256M-Instruct scoring the top 5, images capped "
    "at 512 px for the scorer. Minutes per thousand queries on a GPU, hours on a few CPU cores: use --limit.",
    k=5,
    settings={
        "embedder": "open_clip:ViT-B-32@laion2b_s34b_b79k",
        "scorer": "hf:HuggingFaceTB/SmolVLM-256M-Instruct",
        "scorer_image_side": 512,
    },
)

PRESETS = {p.name: p for p in (PAPER, SMALL)}


def apply_preset(name: str, settings: Settings) -> tuple[Settings, Preset]:
    """``settings`` with the preset's fields set (validated as settings are), and the preset.

    Raises:
        ConfigError: Unknown preset (the valid names listed).
    """
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    data = settings.model_dump()
    for key, value in preset.settings.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return Settings.model_validate(data), preset
