"""Scorer for any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

Each pair is one chat request with ``max_tokens=1`` and ``logprobs``; the two-way P(True) comes from the
answer position's top logprobs. Endpoints that drop logprobs get a strictly parsed verbalised answer.
Where the endpoint accepts tools, the model may call ``revisit_image`` to see the candidate image (or a
zoomed crop) again before answering: the hosted counterpart of visual retracing. Requests run
concurrently (bounded), with timeouts and retries that honour ``Retry-After``; a pair that still fails
falls back to its coarse score with ``method="coarse"`` and the error recorded.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from retllm.errors import ScoringError
from retllm.images import decode_image, is_url, read_image_bytes
from retllm.prompting import Rendered, load_prompt, prompt_for, render
from retllm.scorers.base import Candidate, Score, Scorer, two_way
from retllm.types import ImageSource, Query

log = logging.getLogger(__name__)

REVISIT_DESCRIPTION = (
    "Look at the candidate image again before answering, optionally zoomed into a region. Call this when "
    "a detail (small object, text, colour, count) decides whether the candidate matches. Returns the image."
)
_WEB_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}


class _Unsupported(Exception):
    """The endpoint rejected a request feature (tools or logprobs)."""

    def __init__(self, feature: str, detail: str) -> None:
        super().__init__(detail)
        self.feature = feature


def _retry_after(exc: Any) -> float | None:
    resp = getattr(exc, "response", None)
    value = resp.headers.get("retry-after") if resp is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _has_http_image(kwargs: dict[str, Any]) -> bool:
    return any(
        isinstance(part, dict) and part.get("type") == "image_url" and is_url(part["image_url"]["url"])
        for m in kwargs.get("messages", [])
        if isinstance(m.get("content"), list)
        for part in m["content"]
    )


def _logsumexp(xs: list[float]) -> float | None:
    if not xs:
        return None
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def parse_logprobs(top: list[tuple[str, float]], positive: str = "true", negative: str = "false") -> Score:
    """Two-way P(True) from the answer position's top logprobs (token variants like ' True' summed).

    If only one answer appears in the top list, the other's logprob is bounded by the smallest listed one.
    The entropy covers the listed tokens plus the unlisted mass as one bucket (a lower bound).
    """
    lt = _logsumexp([lp for t, lp in top if t.strip().lower() == positive])
    lf = _logsumexp([lp for t, lp in top if t.strip().lower() == negative])
    if lt is None and lf is None:
        raise ScoringError("neither answer token among the returned top logprobs")
    floor = min(lp for _, lp in top)
    probs = [math.exp(lp) for _, lp in top]
    rest = max(0.0, 1.0 - sum(probs))
    entropy = -sum(p * math.log(p) for p in probs if p > 0) - (rest * math.log(rest) if rest > 0 else 0.0)
    return Score(
        value=two_way(lt if lt is not None else floor, lf if lf is not None else floor),
        p_true=math.exp(lt) if lt is not None else None,
        entropy=entropy,
        method="logprobs",
    )


def parse_verbalized(text: str | None) -> Score:
    """Strict: the whole answer must be True or False (case-insensitive, trailing punctuation allowed)."""
    answer = (text or "").strip().strip("\"'`").rstrip(".!").strip().lower()
    if answer not in ("true", "false"):
        raise ScoringError(f"unparseable answer {text!r}: expected True or False")
    v = 1.0 if answer == "true" else 0.0
    return Score(value=v, p_true=None, entropy=None, method="verbalized")


def image_data_url(data: bytes, max_pixels: int) -> str:
    """A data URL for encoded image bytes; re-encoded as PNG when the format is not web-safe or too large."""
    im = decode_image(data, max_pixels=64_000_000)
    fmt = Image.open(io.BytesIO(data)).format or ""
    if fmt in _WEB_FORMATS and im.width * im.height <= max_pixels:
        return f"data:{_WEB_FORMATS[fmt]};base64,{base64.b64encode(data).decode()}"
    return _png_data_url(_fit(im, max_pixels))


def _png_data_url(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def _fit(im: Image.Image, max_pixels: int, max_upscale: float = 1.0) -> Image.Image:
    scale = min(math.sqrt(max_pixels / (im.width * im.height)), max_upscale)
    if abs(scale - 1.0) < 1e-3:
        return im
    return im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)


def crop_for_revisit(data: bytes, box: Any, max_pixels: int) -> Image.Image:
    """The revisited view: the whole image, or a crop ``[x0, y0, x1, y1]`` (fractions) upscaled up to 4x."""
    im = decode_image(data, max_pixels=64_000_000)
    if box is None:
        return _fit(im, max_pixels)
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
        raise ScoringError(f"box must be [x0, y0, x1, y1] fractions, got {box!r}")
    x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box)
    if x1 - x0 < 0.01 or y1 - y0 < 0.01:
        raise ScoringError(f"box {box!r} is empty")
    crop = im.crop((round(x0 * im.width), round(y0 * im.height), round(x1 * im.width), round(y1 * im.height)))
    return _fit(crop, max_pixels, max_upscale=4.0)


class OpenAIScorer(Scorer):
    """Pointwise scores from an OpenAI-compatible chat endpoint.

    Args:
        client: An ``openai.OpenAI`` client (its own retries are turned off; this class retries).
        model: The model name the endpoint serves.
        concurrency: Requests in flight at once.
        retries: Retries per request on 429, 5xx, timeouts and connection errors.
        revisit: ``auto`` offers the revisit tool until the endpoint rejects tools; ``on``/``off`` force it.
        max_revisits: Revisit calls allowed per pair.
        send_image_urls: Send http(s) image URLs as URLs instead of inlining the bytes.
    """

    def __init__(
        self,
        client: Any,
        model: str,
        *,
        concurrency: int = 16,
        retries: int = 3,
        revisit: str = "auto",
        max_revisits: int = 1,
        send_image_urls: bool = False,
        top_logprobs: int = 20,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_wait: float = 60.0,
        pixel_budget: int = 1024 * 1024,
    ) -> None:
        self.client = client.with_options(max_retries=0)
        self.model = model
        self.id = f"openai:{model}"
        self.concurrency = concurrency
        self.retries = retries
        self.revisit = revisit
        self.max_revisits = max_revisits if revisit != "off" else 0
        self.send_image_urls = send_image_urls
        self.top_logprobs = top_logprobs
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_wait = max_wait
        self.pixel_budget = pixel_budget
        self._tools_ok = revisit != "off"
        self._logprobs_ok = True
        self._temperature_ok = True
        self._token_param = "max_tokens"
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, model: str, settings: Any) -> OpenAIScorer:
        """Build from :class:`retllm.settings.Settings` (base URL, key, concurrency, timeouts, revisits)."""
        import openai

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
        client = openai.OpenAI(base_url=settings.openai_base_url, api_key=key, timeout=settings.openai_timeout)
        s = cls(
            client,
            model,
            concurrency=settings.openai_concurrency,
            retries=settings.openai_retries,
            revisit=settings.revisit,
            max_revisits=settings.max_revisits,
            send_image_urls=settings.send_image_urls,
        )
        s.max_image_pixels, s.url_timeout = settings.max_image_pixels, settings.url_timeout
        return s

    # --- requests --------------------------------------------------------------------------------

    def _create(self, **kwargs: Any) -> Any:
        import openai

        delay = self.backoff_base
        for attempt in range(self.retries + 1):
            try:
                return self.client.chat.completions.create(**kwargs)
            except openai.BadRequestError as e:
                text = str(e).lower()
                if self.send_image_urls and ("url" in text or "fetch" in text) and _has_http_image(kwargs):
                    raise _Unsupported("image_urls", str(e)) from e
                if "max_tokens" in text and "max_tokens" in kwargs:
                    raise _Unsupported("max_tokens", str(e)) from e
                if "temperature" in text and "temperature" in kwargs:
                    raise _Unsupported("temperature", str(e)) from e
                if "tool" in text and "tools" in kwargs:
                    raise _Unsupported("tools", str(e)) from e
                if "logprob" in text and kwargs.get("logprobs"):
                    raise _Unsupported("logprobs", str(e)) from e
                raise
            except (
                openai.RateLimitError,
                openai.InternalServerError,
                openai.APITimeoutError,
                openai.APIConnectionError,
            ) as e:
                if attempt == self.retries:
                    raise
                wait = _retry_after(e)
                if wait is None:
                    wait = delay * (1 + random.random() * 0.25)
                    delay = min(delay * 2, self.backoff_max)
                log.info("retrying after %s (%.2fs)", type(e).__name__, wait)
                time.sleep(min(wait, self.max_wait))
            except openai.APIStatusError as e:
                if e.status_code < 500 or attempt == self.retries:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
        raise AssertionError("unreachable")

    def _ask(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Any:
        while True:
            kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
            if self._temperature_ok:
                kwargs["temperature"] = 0
            if self._logprobs_ok:
                kwargs.update(logprobs=True, top_logprobs=self.top_logprobs)
            if tools and self._tools_ok:
                kwargs.update(tools=tools, tool_choice="auto")
                kwargs[self._token_param] = 64
            else:
                kwargs[self._token_param] = 1
            try:
                return self._create(**kwargs)
            except _Unsupported as e:
                if e.feature == "image_urls":
                    raise
                with self._lock:
                    if e.feature == "max_tokens":  # newer OpenAI models take max_completion_tokens only
                        self._token_param = "max_completion_tokens"
                    elif e.feature == "temperature":  # reasoning models fix their own temperature
                        self._temperature_ok = False
                    elif e.feature == "tools":
                        log.warning("endpoint rejects tools; revisits off: %s", e)
                        self._tools_ok = False
                    else:
                        log.warning("endpoint rejects logprobs; using verbalised answers: %s", e)
                        self._logprobs_ok = False

    # --- messages --------------------------------------------------------------------------------

    @property
    def prefers_urls(self) -> bool:
        return self.send_image_urls

    def _image_part(self, src: ImageSource, data: bytes | None) -> dict[str, Any]:
        if self.send_image_urls and is_url(src):
            return {"type": "image_url", "image_url": {"url": str(src)}}
        assert data is not None
        return {"type": "image_url", "image_url": {"url": image_data_url(data, self.pixel_budget)}}

    def _content(self, r: Rendered, images: dict[str, tuple[ImageSource, bytes | None]]) -> list[dict[str, Any]]:
        return [self._image_part(*images[v]) if k == "image" else {"type": "text", "text": v} for k, v in r.parts]

    def _tool(self, cid: str) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": "revisit_image",
                "description": REVISIT_DESCRIPTION,
                "parameters": {
                    "type": "object",
                    "properties": {
                        "candidate_id": {"type": "string", "enum": [cid]},
                        "box": {
                            "type": "array",
                            "items": {"type": "number"},
                            "minItems": 4,
                            "maxItems": 4,
                            "description": "Optional zoom region [x0, y0, x1, y1] as fractions of width and height.",
                        },
                    },
                    "required": ["candidate_id"],
                },
            },
        }

    def _fetch(self, src: ImageSource) -> bytes | None:
        if self.send_image_urls and is_url(src):
            return None
        return read_image_bytes(src, timeout=self.url_timeout)

    # --- scoring ---------------------------------------------------------------------------------

    def _score_pair(self, query: Query, q_img: tuple[ImageSource, bytes | None] | None, c: Candidate) -> Score:
        t0 = time.perf_counter()
        try:
            try:
                s = self._score_pair_once(query, q_img, c)
            except _Unsupported as e:  # the endpoint cannot fetch image URLs: inline the bytes from now on
                log.warning("endpoint rejects image URLs; sending data URLs: %s", e)
                self.send_image_urls = False
                if q_img is not None and q_img[1] is None:
                    q_img = (q_img[0], read_image_bytes(q_img[0], timeout=self.url_timeout))
                s = self._score_pair_once(query, q_img, c)
        except Exception as e:  # one failing pair never fails the query
            log.warning("pair %s fell back to its coarse score: %s", c.id, e)
            s = Score(value=c.coarse_score, method="coarse", error=f"{type(e).__name__}: {e}")
        s.latency_s = time.perf_counter() - t0
        return s

    def _score_pair_once(self, query: Query, q_img: tuple[ImageSource, bytes | None] | None, c: Candidate) -> Score:
        r = render(
            prompt_for(query.modality, c.modality),
            query_text=query.text,
            query_image=q_img is not None,
            candidate_text=c.text,
            candidate_image=c.image is not None,
        )
        images: dict[str, tuple[ImageSource, bytes | None]] = {}
        if q_img is not None:
            images["query"] = q_img
        if c.image is not None:
            images["candidate"] = (c.image, self._fetch(c.image))
        messages: list[dict[str, Any]] = [{"role": "user", "content": self._content(r, images)}]
        tools = [self._tool(c.id)] if c.image is not None and self.max_revisits > 0 else None
        revisits = 0
        while True:
            resp = self._ask(messages, tools if revisits < self.max_revisits else None)
            choice = resp.choices[0]
            calls = getattr(choice.message, "tool_calls", None) or []
            if not calls:
                break
            messages.append(
                {
                    "role": "assistant",
                    "content": choice.message.content,
                    "tool_calls": [tc.model_dump() for tc in calls],
                }
            )
            for tc in calls:
                revisits += 1
                messages.extend(self._revisit(tc, c, images.get("candidate")))
        s = self._parse(choice)
        s.revisits = revisits
        return s

    def _revisit(self, tc: Any, c: Candidate, img: tuple[ImageSource, bytes | None] | None) -> list[dict[str, Any]]:
        try:
            args = json.loads(tc.function.arguments or "{}")
            if tc.function.name != "revisit_image" or img is None:
                raise ScoringError(f"unknown tool {tc.function.name!r}")
            data = img[1] if img[1] is not None else read_image_bytes(img[0], timeout=self.url_timeout)
            view = crop_for_revisit(data, args.get("box"), self.pixel_budget)
        except Exception as e:  # bad arguments, unknown tool, unreadable image: tell the model
            return [{"role": "tool", "tool_call_id": tc.id, "content": f"error: {e}"}]
        note = f"Candidate {c.id} image" + (f", zoomed to {args['box']}" if args.get("box") else "") + ", below."
        return [
            {"role": "tool", "tool_call_id": tc.id, "content": note},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _png_data_url(view)}},
                    {"type": "text", "text": "Please directly output True or False"},
                ],
            },
        ]

    def _parse(self, choice: Any) -> Score:
        lp = getattr(choice, "logprobs", None)
        content = getattr(lp, "content", None) if lp is not None else None
        if content:
            first = content[0]
            top = [(t.token, t.logprob) for t in (first.top_logprobs or [])] or [(first.token, first.logprob)]
            try:
                return parse_logprobs(top)
            except ScoringError:
                pass  # fall through to the text answer
        return parse_verbalized(choice.message.content)

    def _option_logprobs(self, query: Query, shown: list[str]) -> tuple[list[float], str]:
        q_img = (query.image, self._fetch(query.image)) if query.image is not None else None
        r = render(load_prompt("listwise"), query_text=query.text, query_image=q_img is not None, options=shown)
        images = {"query": q_img} if q_img is not None else {}
        choice = self._ask([{"role": "user", "content": self._content(r, images)}], None).choices[0]
        labels = [str(i) for i in range(len(shown))]
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content:
            top = [(t.token.strip(), t.logprob) for t in (content[0].top_logprobs or [])]
            found = [_logsumexp([lp for tok, lp in top if tok == lab]) for lab in labels]
            if any(f is not None for f in found):
                floor = min(lp for _, lp in top)
                return [f if f is not None else floor for f in found], "logprobs"
        answer = (choice.message.content or "").strip().rstrip(".")
        if answer not in labels:
            raise ScoringError(f"unparseable option answer {choice.message.content!r}")
        return [0.0 if lab == answer else -math.inf for lab in labels], "verbalized"

    def score(self, query: Query, candidates: Sequence[Candidate]) -> list[Score]:
        q_img = (query.image, self._fetch(query.image)) if query.image is not None else None
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(candidates)))) as pool:
            return list(pool.map(lambda c: self._score_pair(query, q_img, c), candidates))

    def close(self) -> None:
        self.client.close()
