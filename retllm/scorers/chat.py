"""What chat endpoints need around a request: answers read from logprobs or text, images as data URLs.

Shared by every chat-endpoint scorer; nothing here sends a request.
"""

from __future__ import annotations

import base64
import io
import math
import re
from typing import Any

from PIL import Image

from retllm.errors import ScoringError
from retllm.images import ACCEPTED_FORMATS, ImageLimits
from retllm.scorers.base import Score, two_way

_WEB_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}

_CAP = re.compile(
    r"(?:max(?:imum)?(?: value)?(?: allowed)?(?: is| of)?:?|<=|at most|between 0 and|up to)\s*(\d+)", re.IGNORECASE
)


def logprobs_cap(message: str, asked: int) -> int | None:
    """The top_logprobs value to retry with after an endpoint refused ``asked`` (vLLM ``--max-logprobs``,
    OpenAI's 20), or None when logprobs themselves are refused or too few are left to read two answers."""
    text = message.lower()
    if not any(k in text for k in ("top_logprobs", "sample logprobs", "max allowed", "top_n_tokens")):
        return None
    caps = [int(m) for m in _CAP.findall(message) if int(m) < asked]
    n = max(caps) if caps else asked // 2
    return n if n >= 2 else None


SPELLINGS = 4
"""Single-token spellings an answer word may have in a vocabulary: True/true, with and without a space."""


def logsumexp(xs: list[float]) -> float | None:
    if not xs:
        return None
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def parse_logprobs(top: list[tuple[str, float]], positive: str = "True", negative: str = "False") -> Score:
    """Two-way P(True) from the answer position's top logprobs (token variants like ' True' summed).

    If only one answer appears in the top list, the other's mass is bounded from above: each of its
    ``SPELLINGS`` single-token spellings lies below the smallest listed token, and all of it lies in the
    unlisted rest (sound while the list is the top of the distribution, also when the server returns fewer
    than asked). The score then errs towards the missing answer. With nothing else listed there is no
    bound, and :class:`ScoringError` sends the caller to the text answer.
    The entropy covers the listed tokens plus the unlisted mass as one bucket (a lower bound).
    """
    top = [(t, lp) for t, lp in top if math.isfinite(lp)]  # -inf and NaN say nothing
    pos, neg = positive.strip().lower(), negative.strip().lower()
    lt = logsumexp([lp for t, lp in top if t.strip().lower() == pos])
    lf = logsumexp([lp for t, lp in top if t.strip().lower() == neg])
    if lt is None and lf is None:
        raise ScoringError("neither answer token among the returned top logprobs")
    others = [lp for t, lp in top if t.strip().lower() not in (pos, neg)]
    if (lt is None or lf is None) and not others:
        raise ScoringError("only one answer among the top logprobs and nothing to bound the other")
    floor = min(lp for _, lp in top)
    probs = [math.exp(lp) for _, lp in top]
    rest = max(0.0, 1.0 - sum(probs))
    entropy = -sum(p * math.log(p) for p in probs if p > 0) - (rest * math.log(rest) if rest > 0 else 0.0)
    # An unlisted answer's mass: each of its spellings is below every listed token, and all of it fits in the
    # unlisted rest of the distribution.
    missing = min(max(rest, 1e-6), SPELLINGS * math.exp(floor))  # never claim exactly 0: no hard 1.0
    bound = math.log(missing) if missing > 0 else -math.inf
    return Score(
        value=two_way(lt if lt is not None else bound, lf if lf is not None else bound),
        p_true=math.exp(lt) if lt is not None else None,
        entropy=entropy,
        method="logprobs",
    )


def parse_verbalized(text: str | None, positive: str = "True", negative: str = "False") -> Score:
    """Strict: the whole answer must be one of the two words (case-insensitive, trailing punctuation allowed)."""
    answer = (text or "").strip().strip("\"'`").rstrip(".!").strip().lower()
    if answer not in (positive.lower(), negative.lower()):
        raise ScoringError(f"unparseable answer {text!r}: expected {positive} or {negative}")
    v = 1.0 if answer == positive.lower() else 0.0
    return Score(value=v, p_true=None, entropy=None, method="verbalized")


def image_data_url(data: bytes, max_pixels: int, limits: ImageLimits | None = None) -> str:
    """A data URL for encoded image bytes; re-encoded when the format is not web-safe or over ``max_pixels``
    (the budget sent), from a decode reduced towards that budget; what ``limits`` refuses raises."""
    lim = limits or ImageLimits()
    try:
        head = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        fmt, pixels = head.format or "", head.width * head.height
    except Exception:  # the decode below says what is wrong with it
        fmt, pixels = "", 0
    if fmt in _WEB_FORMATS and pixels <= max_pixels:
        lim.check(data)  # sent as it is, once it decodes
        return f"data:{_WEB_FORMATS[fmt]};base64,{base64.b64encode(data).decode()}"
    return compact_data_url(_fit(lim.decode(data, min_pixels=max_pixels), max_pixels))


def compact_data_url(im: Image.Image) -> str:
    """The smaller of a PNG and a quality-90 JPEG of ``im`` (a photo as PNG can be 3x the JPEG)."""
    png, jpg = io.BytesIO(), io.BytesIO()
    im.save(png, "PNG")
    im.convert("RGB").save(jpg, "JPEG", quality=90)
    kind, buf = ("png", png) if png.tell() <= jpg.tell() else ("jpeg", jpg)
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode()}"


def png_data_url(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _fit(im: Image.Image, max_pixels: int, max_upscale: float = 1.0) -> Image.Image:
    scale = min(math.sqrt(max_pixels / (im.width * im.height)), max_upscale)
    if abs(scale - 1.0) < 1e-3:
        return im
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)


def crop_for_revisit(data: bytes, box: Any, max_pixels: int, limits: ImageLimits | None = None) -> Image.Image:
    """The revisited view: the whole image, or a crop ``[x0, y0, x1, y1]`` (fractions) upscaled up to 4x; the image
    is decoded reduced as far as the view's ``max_pixels`` allow."""
    lim = limits or ImageLimits()
    if box is None:
        return _fit(lim.decode(data, min_pixels=max_pixels), max_pixels)
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
        raise ScoringError(f"box must be [x0, y0, x1, y1] fractions, got {box!r}")
    x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
    if x1 - x0 < 0.01 or y1 - y0 < 0.01:
        raise ScoringError(f"box {box!r} is empty")
    im = lim.decode(data, min_pixels=math.ceil(max_pixels / ((x1 - x0) * (y1 - y0))))  # the crop keeps the budget
    crop = im.crop((round(x0 * im.width), round(y0 * im.height), round(x1 * im.width), round(y1 * im.height)))
    return _fit(crop, max_pixels, max_upscale=4.0)
