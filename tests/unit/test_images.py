from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from retllm.errors import BadItemError
from retllm.images import ImageLimits, decode_image, decode_text, load_image, read_image_bytes
from tests.data_gen import png_bytes, solid, write_bad_files, write_odd_modes
from tests.fakes.http_files import serve_folder


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("zero", "empty file"), ("truncated", "truncated"), ("corrupt", "corrupt"), ("unsupported", "not a supported")],
)
def test_bad_images_raise_specific_reasons(tmp_path: Path, kind: str, reason: str) -> None:
    bad = write_bad_files(tmp_path)
    with pytest.raises(BadItemError, match=reason):
        load_image(bad[kind])


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    solid((1, 2, 3), (300, 200)).save(p)
    with pytest.raises(BadItemError, match="too large: 300x200"):
        load_image(p, max_pixels=300 * 200 - 1)
    assert load_image(p, max_pixels=300 * 200).size == (300, 200)


def test_missing_file_is_reported() -> None:
    with pytest.raises(BadItemError, match="file not found"):
        read_image_bytes("/nonexistent/x.png")


@pytest.mark.parametrize("kind", ["cmyk", "16bit", "palette_alpha", "animated"])
def test_odd_modes_are_converted_to_rgb(tmp_path: Path, kind: str) -> None:
    im = load_image(write_odd_modes(tmp_path)[kind])
    assert im.mode == "RGB"
    assert im.size == (20, 20)


def test_sixteen_bit_keeps_its_range(tmp_path: Path) -> None:
    im = load_image(write_odd_modes(tmp_path)["16bit"])
    lo, hi = im.convert("L").getextrema()
    assert lo == 0 and hi == 255  # scaled, not clipped to white


def test_palette_alpha_is_composited_on_white(tmp_path: Path) -> None:
    im = load_image(write_odd_modes(tmp_path)["palette_alpha"])
    assert im.getpixel((0, 0)) == (255, 0, 0)
    pal = Image.new("P", (2, 1), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    im2 = decode_image(png_bytes_transparent(pal))
    assert im2.getpixel((0, 0)) == (255, 255, 255)  # transparent index 0 → white background
    assert im2.getpixel((1, 0)) == (255, 0, 0)


def png_bytes_transparent(pal: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=0)
    return buf.getvalue()


def test_animated_uses_first_frame(tmp_path: Path) -> None:
    im = load_image(write_odd_modes(tmp_path)["animated"])
    assert im.getpixel((5, 5)) == (255, 0, 0)


def test_bytes_and_url_sources(tmp_path: Path) -> None:
    im = solid((0, 0, 255))
    assert decode_image(png_bytes(im)).getpixel((0, 0)) == (0, 0, 255)
    im.save(tmp_path / "blue.png")
    local = ImageLimits(allow_private=True)  # the file server is on loopback
    with serve_folder(tmp_path) as base:
        assert local.load(f"{base}/blue.png").getpixel((1, 1)) == (0, 0, 255)
        with pytest.raises(BadItemError, match="HTTP 404"):
            local.load(f"{base}/missing.png")


def test_unreachable_url_is_a_bad_item() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(BadItemError, match="unreachable"):
        ImageLimits(url_timeout=2, allow_private=True).read(f"http://127.0.0.1:{port}/x.png")


def test_text_must_be_utf8() -> None:
    with pytest.raises(BadItemError, match="not valid UTF-8"):
        decode_text("caf\xe9".encode("latin-1"))
    with pytest.raises(BadItemError, match="empty"):
        decode_text(b"   \n")
    assert decode_text("\ufeffhello".encode()) == "hello"
