"""Reading and normalising images: every accepted image becomes an RGB ``PIL.Image``.

CMYK, 16-bit, palette+alpha and animated images are converted (first frame, alpha composited on
white); empty, truncated, corrupt, oversized and unsupported inputs raise :class:`BadItemError`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from PIL import Image, ImageOps, UnidentifiedImageError

from retllm.errors import BadItemError
from retllm.types import ImageSource
from retllm.urlguard import MAX_URL_BYTES, IPNetwork, fetch_url

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})

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


def _stretch_to_8bit(im: Image.Image) -> Image.Image:
    lo, hi = (float(x) for x in im.getextrema())  # type: ignore[arg-type,union-attr]
    span = max(hi - lo, 1e-12)
    return im.point(lambda v: (v - lo) * 255 / span).convert("L")


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale the actual range into 8 bits instead of clipping.
        im = _stretch_to_8bit(im.convert("I"))
    elif mode == "F":
        im = _stretch_to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return im.convert("RGB") if im.mode != "RGB" else im


def decode_image(data: bytes, *, max_pixels: int = 64_000_000) -> Image.Image:
    """Decode encoded image bytes into an RGB image, or raise :class:`BadItemError` with the reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise BadItemError("not a supported image format (or corrupt header)") from e
    except Exception as e:  # PIL raises many types for broken headers
        raise BadItemError(f"corrupt image header: {e}") from e
    w, h = im.size
    if w * h > max_pixels:
        raise BadItemError(f"image too large: {w}x{h} = {w * h:,} pixels > limit {max_pixels:,}")
    if w == 0 or h == 0:
        raise BadItemError("image has zero width or height")
    try:
        if getattr(im, "is_animated", False):
            im.seek(0)
        im.load()
        return _to_rgb(ImageOps.exif_transpose(im) or im)
    except OSError as e:
        raise BadItemError(f"truncated or corrupt image data: {e}") from e
    except (ValueError, SyntaxError) as e:
        raise BadItemError(f"corrupt image data: {e}") from e


def load_image(src: ImageSource, *, max_pixels: int = 64_000_000, timeout: float = 10.0) -> Image.Image:
    """Read and decode an image source into RGB, as a default :class:`ImageLimits` reads."""
    return ImageLimits(max_pixels=max_pixels, url_timeout=timeout).load(src)


def decode_text(data: bytes) -> str:
    """Decode text bytes strictly as UTF-8 (a BOM is allowed)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadItemError(f"text is not valid UTF-8 (byte {e.start}): re-save it as UTF-8") from e
    if not text.strip():
        raise BadItemError("text is empty")
    return text


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
    """

    max_pixels: int = 64_000_000
    url_timeout: float = 10.0
    max_bytes: int = MAX_URL_BYTES
    allow_private: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    file_roots: tuple[Path, ...] | None = None

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
                data = path.read_bytes()
            except FileNotFoundError as e:
                raise BadItemError(f"file not found: {shown(src)}") from e
            except OSError as e:
                raise BadItemError(f"cannot read {shown(src)}: {e.strerror or e}") from e
            except ValueError as e:  # a NUL byte in the path
                raise BadItemError(f"invalid path ({e}): {shown(src)}") from e
        if not data:
            raise BadItemError("empty file (0 bytes)")
        return data

    def load(self, src: ImageSource) -> Image.Image:
        """``src`` decoded to RGB, or :class:`BadItemError` with the reason."""
        return decode_image(self.read(src), max_pixels=self.max_pixels)

    def confined(self, path: Path) -> Path:
        """``path`` as read: its real path when ``file_roots`` confines reading (outside them: BadItemError)."""
        if self.file_roots is None:
            return path
        try:
            real = path.resolve()  # symlinks followed and ".." resolved, so neither can lead out of a root
        except (OSError, RuntimeError, ValueError) as e:  # a symlink loop, a NUL byte, ...
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
        fmt = Image.open(io.BytesIO(data)).format
    except (UnidentifiedImageError, OSError, ValueError):
        return "application/octet-stream"
    return Image.MIME.get(fmt or "", "application/octet-stream")
