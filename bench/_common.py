"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_DIR = Path("/tmp/retllm-bench-imgs")


def random_image(name: str, size: tuple[int, int], rng: np.random.Generator, cells: tuple[int, int] = (16, 16)) -> str:
    """A blocky random picture of ``size`` (width, height) saved as ``IMAGE_DIR/name.png``; returns its path."""
    IMAGE_DIR.mkdir(exist_ok=True)
    p = IMAGE_DIR / f"{name}.png"
    Image.fromarray(rng.integers(0, 256, (cells[1], cells[0], 3), dtype=np.uint8)).resize(size).save(p)
    return str(p)
