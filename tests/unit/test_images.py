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


# --- bounded decoding (issue 18, item 3) ---------------------------------------------------------------------


def test_eps_named_png_is_refused_before_any_plugin_parses_it(tmp_path: Path) -> None:
    from retllm.images import image_mime
    from tests.data_gen import EPS_BYTES

    p = tmp_path / "x.png"
    p.write_bytes(EPS_BYTES)
    for attempt in (lambda: load_image(p), lambda: decode_image(EPS_BYTES)):
        with pytest.raises(BadItemError, match=r"accepted formats: JPEG, PNG, GIF, BMP, WEBP, TIFF") as e:
            attempt()
        assert "ghostscript" not in str(e.value).lower()
    assert image_mime(EPS_BYTES) == "application/octet-stream"  # never served as application/postscript


PEAK_RSS = """
import re
from pathlib import Path


def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text())[1]) / 1024


def reset_peak():
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
"""
"""Peak RSS (MiB) of this process from Linux's own counters (``ru_maxrss`` would carry the parent's peak)."""


def _peak_growth_mib(code: str) -> float:
    """Peak RSS growth (MiB) of running ``code`` in a fresh interpreter, past what its imports took."""
    import subprocess
    import sys

    script = (
        PEAK_RSS + "from retllm.images import ImageLimits, decode_image\n"
        "from tests.data_gen import rgba_bomb\n"
        "bomb = rgba_bomb()\n"
        "reset_peak()\n"
        "before = status('VmRSS')\n"
        f"{code}\n"
        "print(status('VmHWM') - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_rgba_bomb_checked_and_embedded_within_the_memory_target() -> None:
    # What a request does with a query image: check it decodes, then decode it for the embedder (CLIP: 224 px).
    growth = _peak_growth_mib(
        "ImageLimits().check(bomb)\nim = decode_image(bomb, min_side=224)\nassert im.width < 8000"
    )
    assert growth <= 200, f"decoding the 64 MP RGBA bomb took {growth:.0f} MiB (target 200 MiB)"


@pytest.mark.slow
@pytest.mark.parametrize("need", ["fit_side=2048", "min_pixels=1024 * 1024", "fit_side=256"])
def test_rgba_bomb_within_the_memory_target_for_every_model_input(need: str) -> None:
    # SmolVLM's tiles (the default scorer), a hosted scorer's pixel budget, a thumbnail
    growth = _peak_growth_mib(f"im = decode_image(bomb, {need})\nassert im.width < 8000")
    assert growth <= 200, f"decoding the 64 MP RGBA bomb ({need}) took {growth:.0f} MiB (target 200 MiB)"


def test_reduction_keeps_each_need_with_its_gap() -> None:
    from retllm.images import reduction

    assert reduction(8000, 6000) == 1  # no need: full size
    assert reduction(8000, 6000, min_side=224) == 17  # 6000 // 336: the shorter side stays >= 1.5 x 224
    assert reduction(8000, 6000, fit_side=2048) == 2  # 8000 // 3072
    assert reduction(8000, 6000, min_pixels=1024 * 1024) == 4  # isqrt(48e6 // 2359296) = isqrt(20)
    assert reduction(8000, 6000, min_side=224, fit_side=2048) == 2  # the strictest need wins
    assert reduction(100, 100, min_side=224) == 1  # never enlarged, never below 1


@pytest.mark.slow
def test_rgba_bomb_at_full_size_makes_no_full_size_alpha_copies() -> None:
    # The RGB result alone is 244 MiB (Pillow keeps RGB in 4 bytes); today's RGBA chain peaked at 1.2 GiB.
    growth = _peak_growth_mib("im = decode_image(bomb)\nassert im.size == (8000, 8000) and im.mode == 'RGB'")
    assert growth <= 300, f"decoding the 64 MP RGBA bomb at full size took {growth:.0f} MiB"


def _reference(data: bytes) -> Image.Image:
    """What the whole-frame conversion gives: Pillow's own decode, alpha composited on white, as RGB."""
    import io

    im = Image.open(io.BytesIO(data))
    im.load()
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA"):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")


def _tall(mode: str) -> bytes:
    """A PNG several decode bands tall in ``mode``, every PNG filter at every band boundary."""
    import numpy as np

    from retllm.images import BAND_BYTES
    from tests.data_gen import png_every_filter

    w = 48
    h = 3 * BAND_BYTES // (4 * w) + 7
    rng = np.random.default_rng(7)
    if mode == "1":
        return png_every_filter(rng.integers(0, 2, (h, w), dtype=np.uint8), "1", bits=1)
    if mode == "P":
        pal = rng.integers(0, 256, 16 * 3, dtype=np.uint8).tobytes()
        return png_every_filter(rng.integers(0, 16, (h, w), dtype=np.uint8), "P", palette=pal, trns=b"\x00\x80\xff")
    shape = {"L": (h, w), "LA": (h, w, 2), "RGB": (h, w, 3), "RGBA": (h, w, 4)}[mode]
    return png_every_filter(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "LA", "L", "P", "1"])
def test_png_decoded_by_bands_equals_the_whole_frame(mode: str) -> None:
    data = _tall(mode)
    ref = _reference(data)
    assert decode_image(data).tobytes() == ref.tobytes()
    small = decode_image(data, min_side=6)  # reduced while decoding: 48 px wide, at least 1.5 x 6 px kept
    f = next(f for f in range(1, 49) if ref.reduce(f).size == small.size)
    assert f >= 2 and min(small.size) >= 9
    assert small.tobytes() == ref.reduce(f).tobytes()


def test_jpeg_is_scaled_in_the_decoder() -> None:
    import io

    import numpy as np

    arr = np.kron(np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8), np.ones((100, 100, 1)))
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=92)
    full = decode_image(buf.getvalue())
    small = decode_image(buf.getvalue(), min_side=224)
    assert full.size == (4000, 3000)
    assert min(small.size) >= 1.5 * 224 and small.width <= 1000  # JPEG's 1/8 scale (then reduced to fit)
    ref = np.asarray(full.resize(small.size, Image.Resampling.BOX), np.float32)
    assert np.abs(np.asarray(small, np.float32) - ref).mean() < 4  # the same picture


def test_a_decode_over_the_budget_is_refused_naming_the_setting() -> None:
    import io

    buf = io.BytesIO()
    Image.new("RGBA", (2000, 2000), (10, 20, 30, 40)).save(
        buf, "WEBP", lossless=True
    )  # decoded whole: ~88 MiB with libwebp's buffers
    with pytest.raises(BadItemError, match=r"over the decode budget of 8 MiB \(RETLLM_DECODE_BUDGET_MB\)"):
        ImageLimits(decode_budget_mb=8).decode(buf.getvalue())
    assert ImageLimits(decode_budget_mb=128).decode(buf.getvalue()).size == (2000, 2000)


def test_decodes_wait_for_room_in_the_process_budget() -> None:
    import threading
    import time

    from retllm.images import DecodeBudget

    budget = DecodeBudget(100)
    order: list[str] = []
    with budget.hold(70, "first"):

        def second() -> None:
            with budget.hold(50, "second"):
                order.append("second")

        t = threading.Thread(target=second)
        t.start()
        for _ in range(500):  # bounded: until the second decode waits
            if budget.waiting:
                break
            time.sleep(0.01)
        assert budget.waiting == 1 and budget.used == 70
        order.append("first done")
    t.join(10)
    assert order == ["first done", "second"] and budget.used == 0


def test_only_regular_files_are_read_and_a_callers_file_is_bounded_before_reading(tmp_path) -> None:
    """A FIFO named x.png used to hang a worker thread for good (open waits for a writer), and a 1 GiB sparse
    file in the roots was read whole before any size check."""
    import os

    from retllm.errors import BadItemError
    from retllm.images import ImageLimits

    os.mkfifo(tmp_path / "fifo.png")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG")
    os.truncate(big, 2**30)
    confined = ImageLimits(file_roots=(tmp_path,), max_bytes=2**20)
    for limits in (confined, ImageLimits()):  # a trusted (stored) path is never a FIFO either
        with pytest.raises(BadItemError, match="not a regular file"):
            limits.read(str(tmp_path / "fifo.png"))
    with pytest.raises(BadItemError, match=r"file over 1 MiB \(RETLLM_MAX_URL_BYTES\)"):
        confined.read(str(big))
    with pytest.raises(BadItemError, match="Is a directory"):
        confined.read(str(tmp_path))


def test_a_webp_bomb_is_costed_as_libwebp_decodes_it_and_refused_past_the_budget() -> None:
    """A 38-byte lossless 8000x8000 WebP took ~990 MiB per request, past RETLLM_DECODE_BUDGET_MB, because its
    cost was estimated as one frame: libwebp decodes into buffers of its own first."""
    import io

    from PIL import Image

    from retllm.errors import BadItemError
    from retllm.images import decode_image

    buf = io.BytesIO()
    Image.new("RGBA", (6000, 6000), (10, 20, 30, 128)).save(buf, "WEBP", lossless=True)
    with pytest.raises(BadItemError, match=r"6000x6000 WEBP image \(RGBA\) needs about 5\d\d MiB to decode"):
        decode_image(buf.getvalue(), min_side=224)
