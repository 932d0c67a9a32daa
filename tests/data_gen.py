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


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def rgba_bomb(side: int = 8000) -> bytes:
    """A ~256 KiB PNG that decodes to ``side`` x ``side`` half-transparent RGBA (8000: 64 MP, 244 MiB as RGBA),
    written row by row so that building it never holds the pixels."""
    import struct
    import zlib

    z = zlib.compressobj(9)
    row = b"\0" + bytes([200, 30, 30, 128]) * side
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


_PNG_TYPES = {"L": 0, "RGB": 2, "P": 3, "LA": 4, "RGBA": 6}


def png_every_filter(
    arr: np.ndarray, mode: str, *, palette: bytes | None = None, trns: bytes | None = None, bits: int = 8
) -> bytes:
    """A PNG of ``arr`` (rows x columns [x channels], uint8) whose rows use the five PNG filters in turn (row y:
    filter y % 5), so that any band boundary of a decoder meets every filter. ``bits`` < 8: packed grey/palette."""
    import struct
    import zlib

    h, w = arr.shape[:2]
    if bits < 8:
        per = 8 // bits
        a = arr.reshape(h, w).astype(np.uint16)
        pad = (-w) % per
        a = np.pad(a, ((0, 0), (0, pad)))
        shifts = (8 - bits * (np.arange(per) + 1)).astype(np.uint16)
        raw = (a.reshape(h, -1, per) << shifts).sum(-1).astype(np.uint8)
        bpp = 1
    else:
        raw = arr.reshape(h, -1).astype(np.uint8)
        bpp = raw.shape[1] // w
    cur = raw.astype(np.int16)
    up = np.vstack([np.zeros((1, cur.shape[1]), np.int16), cur[:-1]])
    left = np.hstack([np.zeros((h, bpp), np.int16), cur[:, :-bpp]])
    upleft = np.hstack([np.zeros((h, bpp), np.int16), up[:, :-bpp]])
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    preds = [np.zeros_like(cur), left, up, (left + up) // 2, paeth]
    kinds = np.arange(h) % 5
    filtered = np.empty_like(cur)
    for k, pred in enumerate(preds):
        filtered[kinds == k] = (cur - pred)[kinds == k]
    rows = np.hstack([kinds[:, None].astype(np.uint8), (filtered % 256).astype(np.uint8)])
    colour = 0 if mode == "1" else _PNG_TYPES[mode]
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, colour, 0, 0, 0))
    if palette is not None:
        out += _chunk(b"PLTE", palette)
    if trns is not None:
        out += _chunk(b"tRNS", trns)
    return out + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _chunk(b"IEND", b"")


EPS_BYTES = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\n"
    b"newpath 0 0 moveto 10 0 lineto 10 10 lineto closepath fill\nshowpage\n%%EOF\n"
)
"""A real (tiny) Encapsulated PostScript file: Pillow's EPS plugin would hand it to Ghostscript."""
