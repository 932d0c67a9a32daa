from __future__ import annotations

import os

# Tests must never reach the hub: a stray lookup hangs for minutes before failing.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.fakes.tiny_clip import build_tiny_clip  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def tiny_clip_spec(tiny_clip_dir: Path) -> str:
    return f"open_clip:local-dir:{tiny_clip_dir}"


@pytest.fixture(scope="session")
def embedder(tiny_clip_dir: Path):
    from retllm.embedders.open_clip import OpenClipEmbedder

    return OpenClipEmbedder.from_pretrained(f"local-dir:{tiny_clip_dir}", device="cpu", batch_size=8)


@pytest.fixture
def cli_env(tmp_path: Path, tiny_clip_spec: str) -> dict[str, str]:
    """Environment for running the real ``retllm`` CLI against a fresh data dir and the tiny model."""
    from tests.e2e.cli import retllm_env

    return retllm_env(
        tmp_path / "data", tiny_clip_spec, RETLLM_BATCH_SIZE="4", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
    )


@pytest.fixture(scope="session")
def tiny_vlm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Idefics3 (with and without tiling) and SmolVLM2 folders."""
    from tests.fakes.tiny_vlm import build_tiny_idefics3, build_tiny_qwen

    root = tmp_path_factory.mktemp("tiny_vlms")
    return {
        "qwen2_vl": build_tiny_qwen(root / "qwen2_vl", "qwen2_vl"),
        "qwen2_5_vl": build_tiny_qwen(root / "qwen2_5_vl", "qwen2_5_vl"),
        "qwen3_vl": build_tiny_qwen(root / "qwen3_vl", "qwen3_vl"),
        "idefics3": build_tiny_idefics3(root / "idefics3"),
        "idefics3_split": build_tiny_idefics3(root / "idefics3_split", split=True),
        "smolvlm": build_tiny_idefics3(root / "smolvlm", split=True, family="smolvlm"),  # SmolVLM2's classes
    }


@pytest.fixture(scope="session")
def candidate_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six small images of different sizes (so image-token counts and padding differ)."""
    import numpy as np
    from PIL import Image

    d = tmp_path_factory.mktemp("cands")
    out = []
    for i in range(6):
        arr = np.random.default_rng(100 + i).integers(0, 256, (28 + 9 * i, 40 + 5 * (i % 3), 3), dtype=np.uint8)
        p = d / f"cand_{i}.png"
        Image.fromarray(arr).save(p)
        out.append(p)
    return out
