"""Test images made on the spot: good ones in several modes, and the bad ones ingest must skip."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def write_good_images(folder: Path, n: int = 6, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, size=(24 + i, 32, 3), dtype=np.uint8)
        p = folder / f"img_{i:03d}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def write_odd_modes(folder: Path) -> dict[str, Path]:
    """Images ingest must convert, not reject: CMYK, 16-bit, palette+alpha, animated."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))
    out["cmyk"] = folder / "cmyk.jpg"
    cmyk.save(out["cmyk"])
    arr16 = np.arange(400, dtype=np.uint16).reshape(20, 20) * 150
    out["16bit"] = folder / "gray16.png"
    Image.fromarray(arr16).save(out["16bit"])
    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    out["palette_alpha"] = folder / "palette_alpha.png"
    pal.save(out["palette_alpha"], transparency=0)
    frames = [Image.new("RGB", (20, 20), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    out["animated"] = folder / "animated.gif"
    frames[0].save(out["animated"], save_all=True, append_images=frames[1:], duration=50, loop=0)
    return out


def write_bad_files(folder: Path) -> dict[str, Path]:
    """Inputs ingest must skip with a reason."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    out["zero"] = folder / "zero.png"
    out["zero"].write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    out["truncated"] = folder / "truncated.jpg"
    out["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["corrupt"] = folder / "corrupt.png"
    out["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    out["unsupported"] = folder / "doc.pdf"
    out["unsupported"].write_bytes(b"%PDF-1.4 not an image")
    out["latin1"] = folder / "latin1.txt"
    out["latin1"].write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    return out


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()
