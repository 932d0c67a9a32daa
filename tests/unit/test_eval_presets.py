from __future__ import annotations

from pathlib import Path

import pytest

from retllm.errors import ConfigError
from retllm.eval.presets import PRESETS, apply_preset
from retllm.settings import Settings


def test_paper_preset_is_the_papers_configuration_over_the_environment(tmp_path: Path) -> None:
    mine = Settings(
        data_dir=tmp_path,
        embedder="open_clip:local-dir:/x",
        scorer="openai:gpt",
        retrace={"enabled": False, "ratio": 0.5},
        scorer_batch_size=3,
        scorer_max_image_tokens=16384,
        scorer_image_side=224,
    )
    s, p = apply_preset("paper", mine)
    assert (p.name, p.k) == ("paper", 5)
    assert s.embedder == "open_clip:ViT-L-14-336@openai" and s.scorer == "hf:Qwen/Qwen2.5-VL-7B-Instruct"
    r = s.retrace
    assert (r.enabled, r.start, r.end, r.threshold, r.ratio, r.top_k, r.v_rows, r.final_norm) == (
        True, 5, 16, 0.75, 0.12, 10, "all", False
    )  # fmt: skip
    assert (s.scorer_min_image_tokens, s.scorer_max_image_tokens, s.scorer_image_side) == (256, 512, None)
    assert s.data_dir == tmp_path and s.scorer_batch_size == 3  # what the preset does not name stays the user's
    assert mine.scorer == "openai:gpt"  # the caller's settings are not modified


def test_small_preset_and_unknown_names() -> None:
    s, p = apply_preset("small", Settings())
    assert p.k == 5 and s.scorer == "hf:HuggingFaceTB/SmolVLM-256M-Instruct" and s.scorer_image_side == 512
    assert s.embedder == "open_clip:ViT-B-32@laion2b_s34b_b79k"
    with pytest.raises(ConfigError, match="unknown preset 'Paper'; valid: paper, small"):
        apply_preset("Paper", Settings())
    assert set(PRESETS) == {"paper", "small"}
