"""A tiny random-weight open_clip model saved as a ``local-dir:`` folder, as a user's folder would be."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_tiny_clip(folder: Path, *, cfg: dict | None = None, seed: int = 0) -> Path:
    """Create a random-init open_clip model from a custom config and save config + weights to ``folder``."""
    import open_clip
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    cfg = cfg or TINY_CLIP_CFG
    torch.manual_seed(seed)
    model = CLIP(**cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": cfg,
                "preprocess_cfg": {
                    "mean": list(open_clip.OPENAI_DATASET_MEAN),
                    "std": list(open_clip.OPENAI_DATASET_STD),
                },
            }
        )
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder
