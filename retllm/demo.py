"""A small demo collection generated on the spot: rendered scenes of coloured shapes with captions."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 60, 180),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS = {"white": (250, 250, 250), "grey": (150, 150, 150), "black": (20, 20, 20)}

DEMO_IMAGE_SIDE = 512  # the scenes are 224 px; one 512-px tile for tiling models
DEMO_QUERIES = ("a red circle", "a blue square on a black background", "a yellow star", "a green triangle")


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        pts = []
        for i in range(10):
            a = math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy - rr * math.sin(a)))
        d.polygon(pts, fill=fill)


def render_scene(shape: str, colour: str, background: str, size: int = 224, seed: int = 0) -> Image.Image:
    """One scene: a single coloured shape on a plain background, slightly jittered by ``seed``."""
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), BACKGROUNDS[background])
    r = size * rng.uniform(0.22, 0.32)
    cx = size / 2 + rng.uniform(-0.1, 0.1) * size
    cy = size / 2 + rng.uniform(-0.1, 0.1) * size
    _draw_shape(ImageDraw.Draw(im), shape, cx, cy, r, COLOURS[colour])
    return im


def build_demo_dataset(folder: Path, *, limit: int | None = None) -> Path:
    """Write the demo images and a JSONL manifest (image, caption, colour/shape/background fields).

    Returns:
        The manifest path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    n = 0
    for shape in SHAPES:
        for colour in COLOURS:
            for bg in BACKGROUNDS:
                if bg == "black" and colour == "purple":
                    continue
                name = f"{colour}_{shape}_{bg}.png"
                path = folder / name
                if not path.exists():
                    render_scene(shape, colour, bg, seed=n).save(path)
                rows.append(
                    {
                        "image": name,
                        "text": f"a {colour} {shape} on a {bg} background",
                        "colour": colour,
                        "shape": shape,
                        "background": bg,
                    }
                )
                n += 1
    rows = rows[:limit] if limit else rows
    manifest = folder / "demo.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
