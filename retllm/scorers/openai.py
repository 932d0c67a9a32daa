"""Scorer for any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp, Ollama, ...).

Each pair is one chat request with ``max_tokens=1`` and ``logprobs``; the two-way P(True) comes from the
answer position's top logprobs. Endpoints that drop logprobs get a strictly parsed verbalised answer.
Where the endpoint accepts tools, the model may call ``revisit_image`` to see the candidate image (or a
zoomed crop) again before answering: the hosted counterpart of visual retracing.

Requests run concurrently, at most ``concurrency`` in flight per endpoint across the whole process
(every scorer and every concurrent query share the limit). Errors are sorted by what can fix them:

- transient (timeouts, connection errors, 429, 5xx): retried (``Retry-After`` honoured); a pair that
  still fails falls back (``method="coarse"``, the error recorded) and the other pairs are scored;
- the pair itself (an unparseable answer, an unreadable image, a prompt over the context length): that
  pair falls back;
- the configuration (401 wrong key, 403, 404 unknown model, any other 4xx): :class:`EndpointError`, the
  search fails with one actionable line. Request features an endpoint lacks (tools, logprobs, a
  ``top_logprobs`` cap, ``max_tokens``, ``temperature``, image URLs) are detected and dropped instead.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from retllm.errors import Cancelled, EndpointError, ScoringError
from retllm.images import ImageLimits, is_url
from retllm.prompting import Rendered, load_prompt, prompt_for, render
from retllm.scorers.base import DEFAULT_MAX_QUERY_TOKENS, Candidate, Score, Scorer
from retllm.scorers.chat import (
    crop_for_revisit,
    image_data_url,
    logprobs_cap,
    logsumexp,
    parse_logprobs,
    parse_verbalized,
    png_data_url,
)
from retllm.scorers.endpoint import (
    CLIENT_ERROR_IN_500,
    NOT_SUPPORTED,
    PAIR_PROBLEM,
    TRANSIENT_STATUS,
    Stopped,
    Unsupported,
    has_http_image,
    one_line,
    request_slots,
    retry_after,
)
from retllm.scorers.probes import EndpointProbes
from retllm.scorers.turns import BOX_DESCRIPTION, REVISIT_DESCRIPTION, REVISIT_TOOL, ToolCall, Turn, query_key
from retllm.types import ImageSource, Query

log = logging.getLogger(__name__)

MIN_PIXEL_BUDGET = 256 * 256


class OpenAIScorer(EndpointProbes, Scorer):
    """Pointwise scores from an OpenAI-compatible chat endpoint.

    Args:
        client: An ``openai.OpenAI`` client (its own retries are turned off; this class retries).
        model: The model name the endpoint serves.
        concurrency: Requests in flight at once.
        retries: Retries per request on 429, 5xx, timeouts and connection errors.
        revisit: ``auto`` offers the revisit tool until the endpoint rejects tools; ``on``/``off`` force it.
        max_revisits: Revisit calls allowed per pair.
        send_image_urls: Send http(s) image URLs as URLs instead of inlining the bytes.
        probe: Check the endpoint's capabilities once (:mod:`retllm.scorers.probes`); ``False`` assumes images
            reach a vision encoder and, with ``revisit="auto"``, offers no tool.
        max_query_tokens: Query text past about this many tokens (estimated: :func:`estimated_cut`) is cut.
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
        limits: ImageLimits | None = None,
        probe: bool = True,
        max_query_tokens: int | None = DEFAULT_MAX_QUERY_TOKENS,
    ) -> None:
        self.client = client.with_options(max_retries=0)
        self.max_query_tokens = max_query_tokens
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
        self.limits = limits or ImageLimits()
        self.probe = probe
        # auto: probed once; without probes (a gateway whose usage counts mislead) no tool unless asked for
        self._tools_state: bool | None = {"on": True, "off": False}.get(revisit, None if probe else False)
        self._vision_state: bool | None = None
        self._probe_lock = threading.Lock()
        self._logprobs_ok = True
        self._temperature_ok = True
        self._token_param = "max_tokens"
        self._models: list[str] | None = None
        self._lock = threading.Lock()
        self.usage = {"prompt": 0, "completion": 0, "requests": 0}
        """Tokens the endpoint reported as used (``usage`` of each answered request) and requests answered."""
        self.endpoint = str(getattr(self.client, "base_url", "openai"))
        self._slots = request_slots(self.endpoint, concurrency)

    @classmethod
    def from_settings(cls, model: str, settings: Any) -> OpenAIScorer:
        """Build from :class:`retllm.settings.Settings` (base URL, key, concurrency, timeouts, revisits)."""
        import openai

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed"
        client = openai.OpenAI(base_url=settings.openai_base_url, api_key=key, timeout=settings.openai_timeout)
        return cls(
            client,
            model,
            concurrency=settings.openai_concurrency,
            retries=settings.openai_retries,
            revisit=settings.revisit,
            max_revisits=settings.max_revisits,
            send_image_urls=settings.send_image_urls,
            limits=settings.image_limits,
            probe=settings.openai_probe != "off",
            max_query_tokens=settings.max_query_tokens,
        )

    # --- requests --------------------------------------------------------------------------------

    def _create(self, stop: threading.Event | None = None, retries: int | None = None, **kwargs: Any) -> Any:
        delay = self.backoff_base
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            if stop is not None and stop.is_set():
                raise Stopped("the query already failed")
            self._slots.acquire(stop)  # one process-wide bound per endpoint; a failed query leaves the queue
            try:
                resp = self.client.chat.completions.create(**kwargs)
            except Exception as e:
                # Decided while the slot is held, so a query that fails here stops before a queued pair of it
                # takes the slot; a transient error returns and is waited out after the slot is given back.
                self._classify(e, kwargs, attempt == retries, stop)
                error = e
            else:
                self._count(resp)
                return resp
            finally:
                self._slots.release()
            delay = self._backoff(error, delay, stop)
        raise AssertionError("unreachable")

    def _count(self, resp: Any) -> None:
        """Adds a reply's reported token usage to :attr:`usage` (servers that report none add only the request)."""
        u = getattr(resp, "usage", None)
        with self._lock:
            self.usage["requests"] += 1
            self.usage["prompt"] += int(getattr(u, "prompt_tokens", 0) or 0)
            self.usage["completion"] += int(getattr(u, "completion_tokens", 0) or 0)

    def _classify(self, e: Exception, kwargs: dict[str, Any], last: bool, stop: threading.Event | None) -> None:
        """Raise what ``e`` means, or return when it is transient and tries are left."""
        import openai

        try:
            if isinstance(e, openai.BadRequestError):
                raise self._bad_request(e, kwargs) from e
            if isinstance(e, openai.RateLimitError):
                if "insufficient_quota" in (str(getattr(e, "code", "")), str(getattr(e, "type", ""))):
                    raise EndpointError(f"{self.endpoint}: quota exhausted (HTTP 429): {one_line(e)}") from e
            elif isinstance(e, openai.InternalServerError):
                if CLIENT_ERROR_IN_500.search(f"{e} {one_line(e)}"):  # servers that answer a bad request with 500
                    raise self._bad_request(e, kwargs) from e
            elif isinstance(e, openai.APIStatusError) and e.status_code < 500 and e.status_code not in TRANSIENT_STATUS:
                if e.status_code == 413:  # the body (its images) is over the server's limit: send smaller images
                    raise Unsupported("body_size", one_line(e)) from e
                if e.status_code == 422:  # validation errors (TGI): read like a 400
                    raise self._bad_request(e, kwargs) from e
                raise self._config_error(e) from e
            elif not isinstance(e, (openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError)):
                raise e
            if last:
                raise e
        except EndpointError:
            if stop is not None:
                stop.set()
            raise

    def _backoff(self, e: Exception, delay: float, stop: threading.Event | None) -> float:
        """Wait before the next try (``Retry-After`` when given; cut short when the query fails meanwhile);
        returns the next exponential delay."""
        wait = retry_after(e)
        nxt = delay
        if wait is None:
            wait = delay * (1 + random.random() * 0.25)
            nxt = min(delay * 2, self.backoff_max)
        log.info("retrying after %s (%.2fs)", type(e).__name__, wait)
        if (stop or threading.Event()).wait(min(wait, self.max_wait)):
            raise Stopped("the query already failed")
        return nxt

    def _bad_request(self, e: Any, kwargs: dict[str, Any]) -> Exception:
        """What a 400 (or 422) means: a feature to drop, a problem with this pair's input, or a configuration
        error (a server without vision refusing images is one: it must not pass as per-pair failures)."""
        msg = one_line(e)
        raw = f"{e} {msg}"
        text = raw.lower()
        code = getattr(e, "status_code", 400)
        # Decided by what this request sent, not by the shared flag: concurrent pairs learn it at once.
        if ("url" in text or "fetch" in text) and has_http_image(kwargs):
            return Unsupported("image_urls", raw)
        if "max_tokens" in text and "max_tokens" in kwargs:
            return Unsupported("max_tokens", raw)
        if "temperature" in text and "temperature" in kwargs:
            return Unsupported("temperature", raw)
        if "tool" in text and "tools" in kwargs:
            return Unsupported("tools", raw)
        if ("logprob" in text or "top_n_tokens" in text) and kwargs.get("logprobs"):
            cap = logprobs_cap(raw, int(kwargs.get("top_logprobs") or 0))
            return Unsupported("top_logprobs", raw, cap) if cap is not None else Unsupported("logprobs", raw)
        if PAIR_PROBLEM.search(msg) and not NOT_SUPPORTED.search(msg):
            return ScoringError(f"the endpoint refused this pair (HTTP {code}): {msg}")
        return self._config_error(e)

    def _config_error(self, e: Any) -> EndpointError:
        """One actionable line for a 4xx that no retry can fix."""
        code, msg = getattr(e, "status_code", "?"), one_line(e)
        if code == 401:
            return EndpointError(
                f"{self.endpoint} rejected the API key (HTTP 401: {msg}); set OPENAI_API_KEY "
                "(or RETLLM_OPENAI_API_KEY) to a key this endpoint accepts"
            )
        if code == 403:
            return EndpointError(f"{self.endpoint} refused access (HTTP 403: {msg}); check the key's permissions")
        if code == 404:
            models = self._available_models()
            hint = (
                f"available: {', '.join(models[:20])}; set RETLLM_SCORER=openai:<one of them>"
                if models
                else "check RETLLM_SCORER=openai:<model> and RETLLM_OPENAI_BASE_URL (it usually ends in /v1)"
            )
            return EndpointError(f"model {self.model!r} not found at {self.endpoint} (HTTP 404: {msg}); {hint}")
        return EndpointError(f"{self.endpoint} rejected the request for {self.model!r} (HTTP {code}: {msg})")

    def _available_models(self) -> list[str]:
        """The served models, listed once per scorer: every in-flight pair of a search meets the same 404."""
        if self._models is None:
            try:
                self._models = sorted(m.id for m in self.client.with_options(timeout=5.0).models.list())
            except Exception:  # the listing is a hint only
                self._models = []
        return self._models

    def _ask(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        stop: threading.Event | None = None,
        *,
        retries: int | None = None,
    ) -> Any:
        """One request, adapted to what the endpoint refuses (each refused feature is dropped once, for good:
        the next request leaves it out, so this never loops on a refusal)."""
        while True:
            kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
            if self._temperature_ok:
                kwargs["temperature"] = 0
            if self._logprobs_ok:
                kwargs.update(logprobs=True, top_logprobs=self.top_logprobs)
            if tools and self._tools_state is not False:
                kwargs.update(tools=tools, tool_choice="auto")
                kwargs[self._token_param] = 64
            else:
                kwargs[self._token_param] = 1
            try:
                return self._create(stop, retries=retries, **kwargs)
            except Unsupported as e:
                if e.feature in ("image_urls", "body_size"):  # the messages must change: the pair's caller
                    raise
                with self._lock:
                    if e.feature == "top_logprobs" and e.value is not None:  # vLLM --max-logprobs, OpenAI's 20
                        log.warning("endpoint caps top_logprobs; asking for %d: %s", e.value, e)
                        self.top_logprobs = min(self.top_logprobs, e.value)
                    elif e.feature == "max_tokens":  # newer OpenAI models take max_completion_tokens only
                        self._token_param = "max_completion_tokens"
                    elif e.feature == "temperature":  # reasoning models fix their own temperature
                        self._temperature_ok = False
                    elif e.feature == "tools":
                        log.warning("endpoint rejects tools; revisits off: %s", e)
                        self._tools_state = False
                    elif e.feature in ("logprobs", "top_logprobs"):  # concurrent pairs may all learn it at once
                        if self._logprobs_ok:
                            log.warning("endpoint rejects logprobs; using verbalised answers: %s", e)
                        self._logprobs_ok = False
                    else:
                        raise EndpointError(f"{self.endpoint} refuses a request feature: {e}") from e

    # --- messages --------------------------------------------------------------------------------

    @property
    def prefers_urls(self) -> bool:
        return self.send_image_urls

    def _image_part(self, src: ImageSource, data: bytes | None) -> dict[str, Any]:
        if self.send_image_urls and is_url(src):
            return {"type": "image_url", "image_url": {"url": str(src)}}
        if data is None:  # fetched while URLs were still sent; a concurrent pair has switched to data URLs
            data = self.limits.read(src)
        return {
            "type": "image_url",
            "image_url": {"url": image_data_url(data, self.pixel_budget, self.limits)},
        }

    def _content(self, r: Rendered, images: dict[str, tuple[ImageSource, bytes | None]]) -> str | list[dict[str, Any]]:
        """Message content: a plain string when there is no image (several servers' chat templates drop or
        mangle a list of text parts), else the parts in order."""
        if not r.image_roles:
            return "".join(v for _, v in r.parts)
        return [self._image_part(*images[v]) if k == "image" else {"type": "text", "text": v} for k, v in r.parts]

    def _tool(self, cid: str) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": REVISIT_TOOL,
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
                            "description": BOX_DESCRIPTION,
                        },
                    },
                    "required": ["candidate_id"],
                },
            },
        }

    def _fetch(self, src: ImageSource) -> bytes | None:
        if self.send_image_urls and is_url(src):
            return None
        return self.limits.read(src)

    # --- scoring: the step of retllm.scorers.turns --------------------------------------------------

    def step(self, turns: Sequence[Turn], *, cancel: threading.Event | None = None) -> None:
        """One request per ready turn, concurrently: a turn ends scored (or fallen back), or waits on the
        ``revisit_image`` calls of the model's reply. A configuration error stops the other requests and raises;
        so does ``cancel`` (:class:`~retllm.errors.Cancelled`): requests on the wire finish, no other starts."""
        ready = [t for t in turns if t.ready]
        if not ready:
            return
        q_imgs: dict[object, tuple[ImageSource, bytes | None] | None] = {}
        for t in ready:  # each query image is read once per step, before any request (an unreadable one raises)
            key = query_key(t.query)
            if key not in q_imgs:
                img = t.query.image
                q_imgs[key] = (img, self._fetch(img)) if img is not None else None
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(ready))))
        stop = threading.Event()
        try:
            futures = [pool.submit(self._step_turn, t, q_imgs[query_key(t.query)], stop) for t in ready]
            while True:
                done, left = wait(futures, timeout=0.05 if cancel is not None else None, return_when=FIRST_EXCEPTION)
                failed = next((f.exception() for f in done if f.exception() is not None), None)
                if failed is not None:  # an EndpointError: no other pair can succeed; stop the rest at once
                    raise failed
                if not left:
                    break
                Cancelled.check(cancel)  # leaving sets stop: queued pairs and retries never send
        finally:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def _step_turn(self, t: Turn, q_img: tuple[ImageSource, bytes | None] | None, stop: threading.Event) -> None:
        t0 = time.perf_counter()
        t.steps += 1
        budget = self.pixel_budget
        score: Score | None
        try:
            try:
                score = self._advance(t, q_img, stop)
            except Unsupported as e:
                q_img = self._adapt(e, budget, q_img, t.candidate)
                try:
                    score = self._advance(t, q_img, stop)
                except Unsupported as again:
                    what = "HTTP 413, " if again.feature == "body_size" else ""
                    raise ScoringError(f"the endpoint still refuses this pair ({what}{again})") from again
        except EndpointError:
            raise  # no other pair can succeed either: the search fails with this one line
        except Exception as e:  # a transient fault or a problem with this pair: the other pairs go on
            log.info("pair %s not scored: %s", t.candidate.id, e)
            score = Score.fallback(f"{type(e).__name__}: {e}")
        t.latency_s += time.perf_counter() - t0
        if score is not None:
            t.finish(score)

    def _adapt(
        self, e: Unsupported, budget: int, q_img: tuple[ImageSource, bytes | None] | None, c: Candidate
    ) -> tuple[ImageSource, bytes | None] | None:
        """Change how images are sent after a refusal that concerns them; returns the query image to use."""
        if e.feature == "body_size" and q_img is None and c.image is None:
            raise ScoringError(f"the request is too large for the endpoint (HTTP 413): {e}") from e
        if e.feature == "body_size":  # over the server's body limit: smaller images from now on
            with self._lock:  # a quarter of what this pair sent, unless another pair went lower already
                smaller = max(MIN_PIXEL_BUDGET, budget // 4)
                if smaller < self.pixel_budget:
                    self.pixel_budget = smaller
                    log.warning("endpoint refused a request as too large (%s); images at %d px", e, self.pixel_budget)
        elif self.send_image_urls:  # the endpoint cannot fetch image URLs: inline the bytes from now on
            log.warning("endpoint rejects image URLs; sending data URLs: %s", e)
            self.send_image_urls = False
        if q_img is not None and q_img[1] is None:
            q_img = (q_img[0], self.limits.read(q_img[0]))
        return q_img

    def _advance(
        self, t: Turn, q_img: tuple[ImageSource, bytes | None] | None, stop: threading.Event | None = None
    ) -> Score | None:
        """One request for the turn: its score, or ``None`` when the model asked to revisit (``t.pending``)."""
        c = t.candidate
        spec = prompt_for(t.query.modality, c.modality)
        words = spec.answer_words
        r = render(
            spec,
            query_text=t.query.text,
            query_image=q_img is not None,
            candidate_text=c.text,
            candidate_image=c.image is not None,
        )
        images: dict[str, tuple[ImageSource, bytes | None]] = {}
        if q_img is not None:
            images["query"] = q_img
        if c.image is not None:
            images["candidate"] = (c.image, self._fetch(c.image))
        if images:
            self._check_vision(stop)
        messages = self._messages(t, r, images, words)
        allowed = min(self.max_revisits - t.revisits, self.max_revisits + 1 - t.steps)  # views left, steps left
        tool = self._tool(c.id) if c.image is not None and allowed > 0 else None
        tools = [tool] if tool is not None and self._check_tools(tool, stop) else None
        resp = self._ask(messages, tools, stop)
        choice = resp.choices[0]
        calls = getattr(choice.message, "tool_calls", None) or []
        if calls and tools:
            echoed, seen = [], set()
            for tc in calls:  # ids must be unique within the turn: some servers repeat or omit them
                d = tc.model_dump(exclude_none=True)
                while not d.get("id") or d["id"] in seen:  # alphanumeric, 9 characters: what Mistral templates take
                    d["id"] = uuid.uuid4().hex[:9]
                seen.add(d["id"])
                echoed.append(d)
            t.transcript.append(
                {
                    "role": "assistant",
                    "content": choice.message.content or "",  # servers reject null content in an echoed turn
                    "tool_calls": echoed,
                }
            )
            t.pending = [
                ToolCall(id=d["id"], name=d["function"]["name"], arguments=d["function"].get("arguments") or "{}")
                for d in echoed[:allowed]
            ]
            for d in echoed[allowed:]:  # past the bound: answered, never shown (the requests put them in call order)
                t.transcript.append(
                    {"role": "tool", "tool_call_id": d["id"], "content": "error: no revisits left; answer now"}
                )
            return None
        try:
            return self._parse(choice, words)
        except ScoringError as e:
            if calls:  # tools were not offered (bound reached, or off) and the model still called one
                raise ScoringError(
                    f"the model asked to revisit the image again after {t.revisits} revisit(s), the bound "
                    f"(RETLLM_MAX_REVISITS={self.max_revisits}), instead of answering"
                ) from e
            raise

    def _messages(
        self, t: Turn, r: Rendered, images: dict[str, tuple[ImageSource, bytes | None]], words: tuple[str, str]
    ) -> list[dict[str, Any]]:
        """The request's messages: the prompt, then the turn's transcript with each run of tool answers followed
        by one user message that shows the views asked for (OpenAI tool messages carry text only)."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": self._content(r, images)}]
        views: list[dict[str, Any]] = []

        def flush() -> None:
            if views:
                ask = f"Please directly output {words[0]} or {words[1]}"
                messages.append({"role": "user", "content": [*views, {"type": "text", "text": ask}]})
                views.clear()

        for entry in _in_call_order(t.transcript):
            if entry["role"] != "tool":
                flush()
                messages.append(entry)
                continue
            messages.append({"role": "tool", "tool_call_id": entry["tool_call_id"], "content": entry["content"]})
            if "view" in entry:
                box = None if entry["view"] == "all" else entry["view"]
                src, data = images["candidate"]
                data = data if data is not None else self.limits.read(src)
                view = crop_for_revisit(data, box, self.pixel_budget, self.limits)
                views.append({"type": "text", "text": entry["content"].removesuffix(": shown below.")})
                views.append({"type": "image_url", "image_url": {"url": png_data_url(view)}})
        flush()
        return messages

    def _parse(self, choice: Any, words: tuple[str, str]) -> Score:
        lp = getattr(choice, "logprobs", None)
        content = getattr(lp, "content", None) if lp is not None else None
        if content:
            first = content[0]
            top = [(t.token, t.logprob) for t in (first.top_logprobs or [])] or [(first.token, first.logprob)]
            try:
                return parse_logprobs(top, *words)
            except ScoringError:
                pass  # fall through to the text answer
        return parse_verbalized(choice.message.content, *words)

    def _option_logprobs(self, query: Query, shown: list[str]) -> tuple[list[float], str]:
        q_img = (query.image, self._fetch(query.image)) if query.image is not None else None
        spec = load_prompt("listwise")
        r = render(spec, query_text=query.text, query_image=q_img is not None, options=shown)
        images = {"query": q_img} if q_img is not None else {}
        choice = self._ask([{"role": "user", "content": self._content(r, images)}], None).choices[0]
        labels = list(spec.option_labels[: len(shown)])
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        if content:
            top = [(t.token.strip(), t.logprob) for t in (content[0].top_logprobs or [])]
            found = [logsumexp([lp for tok, lp in top if tok == lab]) for lab in labels]
            if any(f is not None for f in found):
                floor = min(lp for _, lp in top)
                return [f if f is not None else floor for f in found], "logprobs"
        answer = (choice.message.content or "").strip().rstrip(".")
        if answer not in labels:
            raise ScoringError(f"unparseable option answer {choice.message.content!r}")
        return [0.0 if lab == answer else -math.inf for lab in labels], "verbalized"

    def close(self) -> None:
        self.client.close()


def _in_call_order(transcript: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The transcript with each round's tool answers in the order of the calls they answer (strict chat templates
    pair them by position; calls past the bound are answered before the others are)."""
    out: list[dict[str, Any]] = []
    rank: dict[str, int] = {}
    answers: list[dict[str, Any]] = []

    def close_round() -> None:
        out.extend(sorted(answers, key=lambda e: rank.get(e.get("tool_call_id", ""), len(rank))))
        answers.clear()

    for entry in transcript:
        if entry["role"] == "tool":
            answers.append(entry)
            continue
        close_round()
        out.append(entry)
        rank = {tc["id"]: i for i, tc in enumerate(entry.get("tool_calls") or [])}
    close_round()
    return out
