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
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETLLM_")}
    env.update(
        RETLLM_DATA_DIR=str(tmp_path / "data"),
        RETLLM_EMBEDDER=tiny_clip_spec,
        RETLLM_DEVICE="cpu",
        RETLLM_BATCH_SIZE="4",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env
