"""Reading and normalising images: every accepted image becomes an RGB ``PIL.Image``.

CMYK, 16-bit, palette+alpha and animated images are converted (first frame, alpha composited on
white); empty, truncated, corrupt, oversized and unsupported inputs raise :class:`BadItemError`.

Decoding is bounded (see :func:`decode_image`): only :data:`ACCEPTED_FORMATS` are opened, a caller that needs
a bounded size gets the image reduced while it is decoded, conversions run band by band, and the bytes of
images being decoded at once are held from a process-wide :class:`DecodeBudget`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from PIL import Image, UnidentifiedImageError

from retllm.errors import BadItemError
from retllm.types import ImageSource
from retllm.urlguard import MAX_URL_BYTES, IPNetwork, fetch_url

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
"""The formats of :data:`IMAGE_EXTENSIONS`, the only plugins an image is tried with, whatever its name (camera
JPEGs with a second frame come back from the JPEG plugin as MPO): anything else (EPS, which Pillow hands to
Ghostscript; PDF, PSD, ...) is refused before a plugin reads more than its first bytes."""

# We enforce our own pixel limit before decoding; PIL's bomb check would otherwise fire first.
Image.MAX_IMAGE_PIXELS = None


SCHEME_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
"""A string that names a scheme (``file://``, ``ftp://``, ...): a URL, never a path (``C:\\`` has no ``//``)."""


def is_url(src: object) -> TypeGuard[str]:
    """True for http(s) URLs given as strings."""
    return isinstance(src, str) and src[:8].lower().startswith(("http://", "https://"))


def shown(src: object, n: int = 120) -> str:
    """A source as error messages show it: cut to ``n`` characters (a data URL or a huge path stays readable)."""
    text = str(src)
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def read_image_bytes(src: ImageSource, *, timeout: float = 10.0) -> bytes:
    """The encoded bytes of an image source (path, URL or bytes), read as a default :class:`ImageLimits` reads."""
    return ImageLimits(url_timeout=timeout).read(src)


def keep_bytes(folder: Path, data: bytes) -> str:
    """Keep ``data`` in ``folder`` under its SHA-256 (written once, atomically, safe across threads); the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / hashlib.sha256(data).hexdigest()
    if not path.exists():
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path)


_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation -> the transpose that shows the picture upright (as ``ImageOps.exif_transpose``)."""

_STRETCHED = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def _to_rgb(im: Image.Image, extrema: tuple[float, float] | None = None) -> Image.Image:
    """``im`` as RGB: 16/32-bit grey scaled from ``extrema`` (the whole image's, for a band) into 8 bits instead
    of clipped, palettes expanded, alpha composited on white."""
    if im.mode in _STRETCHED:
        lo, hi = extrema if extrema is not None else _extrema(im)
        span = max(hi - lo, 1e-12)
        im = (im if im.mode == "F" else im.convert("I")).point(lambda v: (v - lo) * 255 / span).convert("L")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in _ALPHA:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return im.convert("RGB") if im.mode != "RGB" else im


def _extrema(im: Image.Image) -> tuple[float, float]:
    lo, hi = (im if im.mode in ("I", "F") else im.convert("I")).getextrema()  # type: ignore[misc]
    return float(lo), float(hi)  # type: ignore[arg-type]


# --- decoding within a memory budget ---------------------------------------------------------------------------

DEFAULT_DECODE_BUDGET_MB = 512
BAND_BYTES = 2 * 2**20
"""About how many bytes (as RGBA) one band of rows takes: conversions, alpha and PNG decoding go band by band."""
REDUCING_GAP = 1.5
"""A reduced decode keeps at least this many times the size the caller asked for (Pillow's ``reducing_gap``), so
the caller's own resize still shrinks by that much and looks close to one from the full image. 1.5 rather than
Pillow's 2 keeps a 64 MP image under 200 MiB for a 2,048-px tiled MLLM (SmolVLM)."""
_BAND_WORK = 6
"""Copies of one band alive at once while it is converted (raw rows, stream, band, crop, composite, RGB)."""


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


class DecodeBudget:
    """The bytes of images being decoded at once across the process: a decode holds its estimated bytes and
    waits for room; one that needs more than the whole budget is refused."""

    def __init__(self, capacity: int, *, patience: float = 60.0) -> None:
        self.capacity = capacity
        self.patience = patience  # seconds a decode waits for room before it is refused
        self.used = 0
        self.waiting = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, n: int, what: str) -> Iterator[None]:
        """Hold ``n`` bytes while the block runs (``what``: the image, as the refusal names it)."""
        if n > self.capacity:
            raise BadItemError(
                f"{what} needs about {_mib(n)} MiB to decode, over the decode budget of {_mib(self.capacity)} MiB "
                "(RETLLM_DECODE_BUDGET_MB): send a smaller image"
            )
        with self._cond:
            self.waiting += 1
            try:
                if not self._cond.wait_for(lambda: self.used + n <= self.capacity, timeout=self.patience):
                    raise BadItemError(
                        f"{what}: the decode budget (RETLLM_DECODE_BUDGET_MB) stayed full for {self.patience:g} s; "
                        "retry later"
                    )
            finally:
                self.waiting -= 1
            self.used += n
        try:
            yield
        finally:
            with self._cond:
                self.used -= n
                self._cond.notify_all()


_BUDGETS: dict[int, DecodeBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def decode_budget(mb: int) -> DecodeBudget:
    """The process-wide budget of ``mb`` MiB: every decode with the same setting (RETLLM_DECODE_BUDGET_MB, read
    once per process) shares it."""
    with _BUDGETS_LOCK:
        return _BUDGETS.setdefault(mb, DecodeBudget(mb * 2**20))


def reduction(
    width: int,
    height: int,
    *,
    min_side: int | None = None,
    fit_side: int | None = None,
    min_pixels: int | None = None,
    gap: float = REDUCING_GAP,
) -> int:
    """The largest integer factor an image may be reduced by while it keeps ``gap`` times each need: its shorter
    side ``min_side``, its longer side ``fit_side``, its area ``min_pixels`` (``gap**2`` times). No need: 1."""
    f = max(width, height)
    if min_side is not None:
        f = min(f, int(min(width, height) // (gap * max(1, min_side))))
    if fit_side is not None:
        f = min(f, int(max(width, height) // (gap * max(1, fit_side))))
    if min_pixels is not None:
        f = min(f, math.isqrt(int(width * height // (gap * gap * max(1, min_pixels)))))
    if min_side is None and fit_side is None and min_pixels is None:
        return 1
    return max(1, f)


def _pixel_bytes(mode: str) -> int:
    """Bytes per pixel as Pillow holds ``mode`` in memory (RGB takes 4)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def _open(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as e:
        raise BadItemError(
            f"not a supported image format (or corrupt header); accepted formats: {', '.join(ACCEPTED_FORMATS)}"
        ) from e
    except Exception as e:  # PIL raises many types for broken headers
        raise BadItemError(f"corrupt image header: {e}") from e


def decode_image(
    data: bytes,
    *,
    max_pixels: int = 64_000_000,
    min_side: int | None = None,
    fit_side: int | None = None,
    min_pixels: int | None = None,
    budget_mb: int = DEFAULT_DECODE_BUDGET_MB,
) -> Image.Image:
    """Decode encoded image bytes into an RGB image, or raise :class:`BadItemError` with the reason.

    Args:
        max_pixels: Larger images are refused before decoding.
        min_side: The shorter side (px) the caller resizes to (CLIP); ``fit_side``: the longer side it fits the
            image into (thumbnails, tiled MLLMs); ``min_pixels``: the area it resizes to (a pixel budget). Given
            any, the image may come back reduced by an integer factor that keeps :data:`REDUCING_GAP` times each
            (JPEG: scaled in the decoder; PNG: reduced band by band as it is decoded). None: full size.
        budget_mb: The process-wide :class:`DecodeBudget` (MiB) this decode holds its bytes from.
    """
    im = _open(data)
    w, h = im.size
    if w * h > max_pixels:
        raise BadItemError(f"image too large: {w}x{h} = {w * h:,} pixels > limit {max_pixels:,}")
    if w == 0 or h == 0:
        raise BadItemError("image has zero width or height")
    f = reduction(w, h, min_side=min_side, fit_side=fit_side, min_pixels=min_pixels)
    try:
        cost, run = _plan(im, data, f)
        with decode_budget(budget_mb).hold(cost, f"a {w}x{h} {im.format} image ({im.mode})"):
            return run()
    except BadItemError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise BadItemError(f"truncated or corrupt image data: {e}") from e
    except (ValueError, SyntaxError, struct.error) as e:
        raise BadItemError(f"corrupt image data: {e}") from e


def _plan(im: Image.Image, data: bytes, f: int) -> tuple[int, Callable[[], Image.Image]]:
    """(estimated bytes, how to decode) for ``im`` reduced ``f`` times: the cheapest way its format allows."""
    w, h = im.size
    rows = max(1, BAND_BYTES // (4 * w))
    f = min(f, rows)  # a band holds whole reduction blocks
    turn = _ORIENT.get(_orientation(im))
    if im.format in ("JPEG", "MPO") and f > 1:
        drafted = im.draft(im.mode, (-(-w // f), -(-h // f)))  # DCT scaling, by at most f
        if drafted is not None:
            f = max(1, f // round(w / drafted[1][2]))
    fw, fh = im.size
    out = -(-fw // f) * -(-fh // f) * 4
    band = _BAND_WORK * min(fh, rows) * fw * 4
    extra = out if turn is not None else 0  # transposing copies the result
    if _banded_png(im):
        return out + band + extra, lambda: _png_bands(im, data, f, rows, turn)
    frame = fw * fh * _pixel_bytes(im.mode) * _FRAME_COPIES.get(im.format or "", 1)
    copy = 0 if im.mode == "RGB" and f == 1 else out
    return frame + copy + band + extra, lambda: _whole(im, f, rows, turn)


_FRAME_COPIES = {"WEBP": 4, "TIFF": 2}
"""Frames a whole-frame decode holds at its peak beyond Pillow's own (measured on 64 MP images: libwebp decodes
into its own buffers first, so a 38-byte lossless WebP took ~990 MiB; TIFF strips and planes about one more)."""


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation, read without decoding (a PNG's is known before its pixels only if stored there)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # PngImageFile.getexif() would decode the whole image to look for it after the pixels
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block: shown as stored, as a viewer would
        return 1


def _finish(out: Image.Image, turn: Image.Transpose | None) -> Image.Image:
    return out.transpose(turn) if turn is not None else out


def _whole(im: Image.Image, f: int, rows: int, turn: Image.Transpose | None) -> Image.Image:
    """Decode the whole first frame, then convert (and reduce) it band by band into the RGB result."""
    if getattr(im, "is_animated", False):
        im.seek(0)
    im.load()
    w, h = im.size
    if im.mode == "RGB" and f == 1:
        return _finish(im._new(im.im), turn)  # the frame is the result (no copy)
    extrema = None
    if im.mode in _STRETCHED:  # one scale for the whole image, found band by band
        parts = [_extrema(im.crop((0, y, w, min(h, y + rows)))) for y in range(0, h, rows)]
        extrema = (min(p[0] for p in parts), max(p[1] for p in parts))
    out = Image.new("RGB", (-(-w // f), -(-h // f)))
    step = max(f, rows // f * f)
    for y in range(0, h, step):
        band = _to_rgb(im.crop((0, y, w, min(h, y + step))), extrema)
        out.paste(band.reduce(f) if f > 1 else band, (0, y // f))
    return _finish(out, turn)


_PNG_ROWS = {"1": 1, "L": 8, "P": 8, "LA": 16, "RGB": 24, "RGBA": 32}
"""Bits per pixel of the PNG layouts decoded band by band: those whose rows Pillow writes back exactly."""


def _banded_png(im: Image.Image) -> bool:
    if im.format != "PNG" or im.info.get("interlace") or getattr(im, "is_animated", False):
        return False
    tile: list[Any] = getattr(im, "tile", None) or []
    exact = im.mode != "1" or im.width % 8 == 0  # a 1-bit row's padding bits are not ours to rewrite
    return len(tile) == 1 and tile[0][3] == im.mode and im.mode in _PNG_ROWS and exact


def _idat(data: bytes) -> Iterator[bytes]:
    """The image data chunks of a PNG, in order."""
    pos = 8
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            yield data[pos + 8 : pos + 8 + n]
        elif kind == b"IEND":
            return
        pos += 12 + n


def _png_bands(im: Image.Image, data: bytes, f: int, rows: int, turn: Image.Transpose | None) -> Image.Image:
    """Decode a non-interlaced PNG a band of rows at a time into the RGB result, reduced ``f`` times.

    Each band's filtered rows are inflated from the file's zlib stream (bounded), then decoded by Pillow's own PNG
    row decoder behind the previous band's last row (unfiltered, written back as filter type None), which the
    first rows' Up/Average/Paeth filters refer to."""
    w, h = im.size
    mode = im.mode
    line = (w * _PNG_ROWS[mode] + 7) // 8 + 1
    step = max(f, rows // f * f)
    out = Image.new("RGB", (-(-w // f), -(-h // f)))
    z = zlib.decompressobj()
    chunks = _idat(data)
    pending = bytearray()
    prev = b""
    for y in range(0, h, step):
        n = min(step, h - y)
        while len(pending) < n * line:
            if z.unconsumed_tail:
                more = z.decompress(z.unconsumed_tail, n * line - len(pending))
            else:
                chunk = next(chunks, None)
                if chunk is None:
                    raise OSError(f"image file is truncated (row {y + len(pending) // line} of {h})")
                more = z.decompress(chunk, n * line - len(pending))
            pending += more
        stream = zlib.compress(prev + bytes(pending[: n * line]), 0)
        del pending[: n * line]
        top = 1 if prev else 0
        band = Image.frombytes(mode, (w, n + top), stream, "zip", mode)
        if top:
            band = band.crop((0, 1, w, n + 1))
        prev = b"\0" + band.crop((0, n - 1, w, n)).tobytes("raw", mode)
        if mode == "P":
            assert im.palette is not None
            band.putpalette(im.palette.palette, im.palette.rawmode or im.palette.mode)
        if "transparency" in im.info:
            band.info["transparency"] = im.info["transparency"]
        rgb = _to_rgb(band)
        out.paste(rgb.reduce(f) if f > 1 else rgb, (0, y // f))
    return _finish(out, turn)


def load_image(
    src: ImageSource, *, max_pixels: int = 64_000_000, timeout: float = 10.0, fit_side: int | None = None
) -> Image.Image:
    """Read and decode an image source into RGB, as a default :class:`ImageLimits` reads."""
    return ImageLimits(max_pixels=max_pixels, url_timeout=timeout).load(src, fit_side=fit_side)


def decode_text(data: bytes) -> str:
    """Decode text bytes strictly as UTF-8 (a BOM is allowed)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadItemError(f"text is not valid UTF-8 (byte {e.start}): re-save it as UTF-8") from e
    if not text.strip():
        raise BadItemError("text is empty")
    return text


def _read_file(path: Path, src: object, limit: int | None) -> bytes:
    """A regular file's bytes: a FIFO, a device or a folder is refused without blocking on it, and a file over
    ``limit`` bytes (a caller's path: RETLLM_MAX_URL_BYTES) before it is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise BadItemError(f"cannot read {shown(src)}: not a regular file")
        if limit is not None and st.st_size > limit:
            raise BadItemError(f"file over {limit / 2**20:g} MiB (RETLLM_MAX_URL_BYTES): {shown(src)}")
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:  # grew while being read
        raise BadItemError(f"file over {limit / 2**20:g} MiB (RETLLM_MAX_URL_BYTES): {shown(src)}")
    return data


@dataclass(frozen=True)
class ImageLimits:
    """How images are read everywhere (ingest, query, fine stage): one object, built from the settings.

    The defaults are the safe ones: public http(s) addresses only (see :mod:`retllm.urlguard`), any path.

    Attributes:
        max_pixels: Larger images are refused before decoding.
        url_timeout: Seconds to fetch one image URL, in total (DNS, connects, redirects, the whole body).
        max_bytes: Larger URL bodies are refused (by Content-Length, or once the bytes read pass it).
        allow_private: Fetch URLs on loopback, private, link-local and CGNAT addresses too (never the cloud
            metadata addresses: those only when listed one by one in ``allowed_networks``).
        allowed_networks: Networks fetched even though not public (``urlguard.parse_networks``).
        file_roots: When set, a path is read only if its real path (symlinks and ``..`` resolved) lies in
            one of these folders; None reads any path (stored, trusted references).
        decode_budget_mb: The process-wide :class:`DecodeBudget` decodes hold their bytes from.
    """

    max_pixels: int = 64_000_000
    url_timeout: float = 10.0
    max_bytes: int = MAX_URL_BYTES
    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    file_roots: tuple[Path, ...] | None = None
    decode_budget_mb: int = DEFAULT_DECODE_BUDGET_MB

    def read(self, src: ImageSource) -> bytes:
        """The encoded bytes of ``src`` (path, URL or bytes), or :class:`BadItemError` with the reason."""
        if isinstance(src, bytes):
            data = src
        elif isinstance(src, str) and (m := SCHEME_URL.match(src)):
            if m[1].lower() not in ("http", "https"):
                raise BadItemError(f"only http(s) URLs are fetched: {shown(src)}")
            data = fetch_url(
                src,
                timeout=self.url_timeout,
                max_bytes=self.max_bytes,
                allow_private=self.allow_private,
                allowed_networks=self.allowed_networks,
                where=shown(src),
            )
        else:
            path = self.confined(Path(src))
            try:
                data = _read_file(path, src, self.max_bytes if self.file_roots is not None else None)
            except FileNotFoundError as e:
                raise BadItemError(f"file not found: {shown(src)}") from e
            except OSError as e:
                raise BadItemError(f"cannot read {shown(src)}: {e.strerror or e}") from e
            except ValueError as e:  # a NUL byte in the path
                raise BadItemError(f"invalid path ({e}): {shown(src)}") from e
        if not data:
            raise BadItemError("empty file (0 bytes)")
        return data

    def load(
        self,
        src: ImageSource,
        *,
        min_side: int | None = None,
        fit_side: int | None = None,
        min_pixels: int | None = None,
    ) -> Image.Image:
        """``src`` decoded to RGB, reduced as far as the caller's needs allow (see :func:`decode_image`), or
        :class:`BadItemError` with the reason."""
        return self.decode(self.read(src), min_side=min_side, fit_side=fit_side, min_pixels=min_pixels)

    def decode(
        self, data: bytes, *, min_side: int | None = None, fit_side: int | None = None, min_pixels: int | None = None
    ) -> Image.Image:
        """Encoded bytes decoded to RGB within these limits (see :func:`decode_image` for the needs)."""
        return decode_image(
            data,
            max_pixels=self.max_pixels,
            min_side=min_side,
            fit_side=fit_side,
            min_pixels=min_pixels,
            budget_mb=self.decode_budget_mb,
        )

    def check(self, data: bytes) -> None:
        """Refuse (:class:`BadItemError`) what :meth:`decode` would refuse, keeping nothing: every byte is decoded,
        at the smallest size the format allows."""
        self.decode(data, min_side=1)

    def confined(self, path: Path) -> Path:
        """``path`` as read: its real path when ``file_roots`` confines reading (outside them: BadItemError)."""
        if self.file_roots is None:
            return path
        try:  # symlinks followed and ".." resolved, so neither can lead out of a root; a symlink loop is no error
            real = Path(os.path.realpath(path))  # here (Path.resolve's is), so one outside reads as "outside" too
        except (OSError, ValueError) as e:  # a NUL byte, ...
            raise BadItemError(f"cannot resolve {shown(path)}: {e}") from e
        if any(real.is_relative_to(root.resolve()) for root in self.file_roots):
            return real
        raise BadItemError(f"path is outside the allowed folders (RETLLM_FILE_ROOTS): {shown(path)}")


def encode_thumbnail(im: Image.Image, size: int) -> tuple[bytes, str]:
    """``im`` shrunk to fit ``size`` px (never enlarged), as JPEG or PNG, whichever is smaller; (bytes, MIME)."""
    im = im.copy()
    im.thumbnail((size, size))
    best: tuple[bytes, str] | None = None
    for fmt, mime, opts in (("JPEG", "image/jpeg", {"quality": 85}), ("PNG", "image/png", {})):
        buf = io.BytesIO()
        im.save(buf, fmt, **opts)
        if best is None or len(buf.getvalue()) < len(best[0]):
            best = (buf.getvalue(), mime)
    assert best is not None
    return best


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their content (``application/octet-stream`` if unknown)."""
    try:
        fmt = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS).format
    except (UnidentifiedImageError, OSError, ValueError):
        return "application/octet-stream"
    return Image.MIME.get(fmt or "", "application/octet-stream")
