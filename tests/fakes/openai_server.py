"""A real local HTTP server speaking the OpenAI chat-completions API, with switches for failure modes.

Answers are deterministic: P(True) is derived from the first image in the conversation (or the text when
there is none), so tests can compute the expected score with :func:`expected_p_true`.

It can also stand in for a chat model driven by an agent: requests for a model in ``Switches.chat_models`` are
answered by ``Switches.chat_script`` (see :class:`ChatScript` and :func:`tool_call`), and any request with
``"stream": true`` is answered as OpenAI's server-sent events.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.local_http import running_server


@dataclass
class Switches:
    logprobs: bool = True  # include logprobs when asked (several real servers silently drop them)
    reject_logprobs: bool = False  # 400 when logprobs are requested
    tools: bool = True  # accept tools; False: 400 when tools are sent
    tool_call_first: bool = False  # first turn answers with a revisit_image call (with a zoom box)
    fail_5xx: int = 0  # the first N requests get 500
    rate_limit: int = 0  # the first N requests get 429 with Retry-After
    retry_after: float = 0.3
    delay: float = 0.0  # seconds before each answer
    garbage: bool = False  # answer text that is neither True nor False nor an option (and no logprobs)
    position_bias: bool = False  # listwise: always pick the first shown option, whatever it says
    slot_bias: float = 0.0  # listwise: added to the first shown option's log-preference
    reject_urls: bool = False  # 400 when an image is given as an http(s) URL (server cannot fetch)
    new_params_only: bool = False  # 400 for max_tokens and temperature, as OpenAI's reasoning models do
    api_key: str | None = None  # when set, any other bearer token gets OpenAI's 401
    models: list[str] | None = None  # when set, other model names get OpenAI's 404 (GET /models lists these)
    max_top_logprobs: int | None = None  # vLLM --max-logprobs: a larger top_logprobs gets vLLM's 400
    status: int | None = None  # every chat request answers this HTTP status (403, 422, ...)
    insufficient_quota: bool = False  # OpenAI's 429 for an exhausted quota (not transient)
    too_long_marker: str | None = None  # a pair whose text contains it gets a 400 about the context length
    too_long_status: int = 400  # ... with this status (413: nginx's body limit; 422: TGI)
    too_long_message: str = "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens."
    fail_code: int = 500  # the status of the first `fail_5xx` requests (408, 503, ...)
    sampled_only: bool = False  # top_logprobs ignored: only the sampled token comes back (some servers)
    text_only: bool = False  # a text-only server that drops images silently (llama.cpp chatml): not counted
    image_error_500: bool = False  # a text-only template that fails on list content with a 500
    ignore_tools: bool = False  # tools accepted and silently ignored: not rendered, never called (most GGUF templates)
    logprobs_500: bool = False  # llama-cpp-python without logits_all: 500 "logprobs is not supported"
    cap_style: str = "vllm"  # how max_top_logprobs is refused: "vllm" (400) or "tgi" (422, top_n_tokens)
    max_body: int | None = None  # a proxy's body limit (nginx: 1 MiB): larger requests get 413
    images_as_text: bool = False  # a template that prints the content list as text (Llama-3, Gemma)
    faults_hit_probes: bool = False  # fail_5xx / rate_limit also hit the scorer's capability probes
    fixed_prompt_tokens: int | None = None  # a gateway reporting this prompt_tokens for every request, whatever sent
    whole_prompt: bool = False  # P(True) from every image and all the text (image->text candidates differ)
    revisit_box: Any = field(default_factory=lambda: [0.0, 0.0, 0.5, 0.5])  # the zoom the fake asks for
    revisit_id: str | None = None  # the candidate id the fake's revisit call names (default: the offered one)
    revisit_arguments: str | None = None  # raw arguments text of the revisit call (e.g. not JSON at all)
    # Several calls in the first reply: (id, arguments) each; arguments as a dict (the offered candidate id is
    # filled in for "{cid}") or raw text. Ids may repeat, as some servers number calls per message.
    revisit_calls: list[tuple[str, Any]] | None = None
    revisit_forever: bool = False  # every scoring request answers with a revisit_image call, tools offered or not
    chat_models: list[str] = field(default_factory=lambda: ["chat-model"])  # served by chat_script, not the scorer
    chat_script: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # request body -> assistant message


@dataclass
class FakeOpenAI:
    switches: Switches = field(default_factory=Switches)
    requests: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""
    crop_checks: list[bool] = field(default_factory=list)  # per revisit: did the image show the asked region?
    forever_calls: int = 0  # revisit_image calls answered under the revisit_forever switch
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _served: int = 0

    @property
    def pair_requests(self) -> list[dict[str, Any]]:
        """The requests that scored pairs, without the scorer's one-time capability probes (nor chat requests)."""
        return [b for b in self.requests if not is_probe(b) and b.get("model") not in self.switches.chat_models]

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        """The requests for a chat model (``Switches.chat_models``), answered by ``Switches.chat_script``."""
        return [b for b in self.requests if b.get("model") in self.switches.chat_models]


EXHAUSTED = "(script exhausted)"
_call_ids = itertools.count()


def tool_call(name: str, args: dict[str, Any], id: str | None = None) -> dict[str, Any]:
    """A tool call as an assistant message carries it (``arguments`` is a JSON string)."""
    return {
        "id": id or f"call_{name}_{next(_call_ids)}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)},
    }


def as_message(step: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
    """An assistant message dict from a message dict, a bare :func:`tool_call` or a list of them."""
    if isinstance(step, list):
        return {"content": None, "tool_calls": step}
    if step.get("type") == "function" and "function" in step:
        return {"content": None, "tool_calls": [step]}
    return dict(step)


Step = Callable[[dict[str, Any]], dict[str, Any]] | dict[str, Any] | list[dict[str, Any]]


class ChatScript:
    """A scripted chat model for ``Switches.chat_script``: each request (one model turn) gets the next step.

    A step is an assistant message dict (``{"content": ..., "tool_calls": [...]}``), a bare :func:`tool_call`
    or a list of them (a message with just those calls), or a function from the request body to any of these.
    Once the steps run out, the answer is :data:`EXHAUSTED`. ``bodies`` holds every request body the script saw,
    in order. Requests refused by a fault switch never reach the script, so a client's retry gets the step the
    failed request would have got.
    """

    def __init__(self, steps: Iterable[Step]) -> None:
        self.steps = list(steps)
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            turn = len(self.bodies)
            self.bodies.append(body)
        if turn >= len(self.steps):
            return {"content": EXHAUSTED}
        step = self.steps[turn]
        return as_message(step(body) if callable(step) else step)

    @property
    def exhausted(self) -> bool:
        return len(self.bodies) >= len(self.steps)


def _first_image_bytes(messages: list[dict[str, Any]]) -> bytes | None:
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    if url.startswith("data:"):
                        return base64.b64decode(url.split(",", 1)[1])
                    return url.encode()
    return None


def expected_p_true(key: bytes) -> float:
    """The fake's P(True) for a conversation whose first image (or text) is ``key``."""
    h = int(hashlib.sha256(key).hexdigest()[:8], 16) / 0xFFFFFFFF
    return 0.05 + 0.9 * h


def _key(messages: list[dict[str, Any]]) -> bytes:
    img = _first_image_bytes(messages)
    if img is not None:
        return img
    return json.dumps(messages[0]["content"], sort_keys=True).encode()


def _images(messages: list[dict[str, Any]]) -> list[bytes]:
    out = []
    for m in messages:
        if isinstance(m.get("content"), list):
            for part in m["content"]:
                if part.get("type") == "image_url" and part["image_url"]["url"].startswith("data:"):
                    out.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
    return out


def crop_matches(original: bytes, view: bytes, box: list[float]) -> bool:
    """Whether ``view`` shows ``box`` (fractions) of ``original``: same aspect ratio, same 8x8 thumbnail."""
    import io

    import numpy as np
    from PIL import Image

    a = Image.open(io.BytesIO(original)).convert("RGB")
    v = Image.open(io.BytesIO(view)).convert("RGB")
    x0, y0, x1, y1 = box
    region = a.crop((round(x0 * a.width), round(y0 * a.height), round(x1 * a.width), round(y1 * a.height)))
    if abs(region.width / region.height - v.width / v.height) > 0.1 * region.width / region.height:
        return False
    ra = np.asarray(region.resize((8, 8), Image.Resampling.BILINEAR), np.float64)
    rv = np.asarray(v.resize((8, 8), Image.Resampling.BILINEAR), np.float64)
    return float(np.abs(ra - rv).mean()) < 12.0


def _prompt_tokens(messages: list[dict[str, Any]], *, count_images: bool, as_text: bool = False) -> int:
    """A stand-in token count: 4 characters of text per token, 64 tokens per image (none if dropped; its
    data URL's length / 4 if the template prints images as text)."""
    n = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            n += len(content) // 4 + 1
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    n += len(part.get("text", "")) // 4 + 1
                elif part.get("type") == "image_url" and as_text:
                    n += len(part["image_url"]["url"]) // 4
                elif part.get("type") == "image_url" and count_images:
                    n += 64
    return n


def is_probe(body: dict[str, Any]) -> bool:
    """Whether a request is one of the scorer's one-time capability probes (vision, tools)."""
    return "Capability check from the retllm scorer" in json.dumps(body.get("messages"))


def option_preference(text: str) -> float:
    """The fake's (order-independent) log-preference for a listwise option's text."""
    return 4.0 * int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def _listwise(body: dict[str, Any], text: str, sw: Switches) -> dict[str, Any]:
    import re

    opts = re.findall(r"^(\d)\. <(.*)>$", text, flags=re.M)
    prefs = [100.0 if (sw.position_bias and i == 0) else option_preference(t) for i, (_, t) in enumerate(opts)]
    prefs[0] += sw.slot_bias
    m = max(prefs)
    z = math.log(sum(math.exp(p - m) for p in prefs)) + m
    top = [{"token": lab, "logprob": p - z, "bytes": None} for (lab, _), p in zip(opts, prefs, strict=True)]
    best = max(top, key=lambda t: t["logprob"])
    logprobs = None
    if body.get("logprobs") and sw.logprobs:
        logprobs = {"content": [{**best, "top_logprobs": top[: body.get("top_logprobs") or 0]}], "refusal": None}
    return {
        "index": 0,
        "message": {"role": "assistant", "content": best["token"]},
        "finish_reason": "length",
        "logprobs": logprobs,
    }


def _chat(body: dict[str, Any], fake: FakeOpenAI) -> dict[str, Any]:
    """The choice for a chat-model request: the scripted assistant message."""
    script = fake.switches.chat_script
    msg = as_message(script(body)) if script is not None else {"content": "(no chat_script set)"}
    calls = msg.get("tool_calls") or None
    out: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
    if calls:
        out["tool_calls"] = calls
    return {"index": 0, "message": out, "finish_reason": "tool_calls" if calls else "stop", "logprobs": None}


def _offered_candidate(body: dict[str, Any]) -> Any:
    """The first candidate id in an offered tool schema's enum (as ``tool_call_first`` picks it), or None."""
    for tool in body.get("tools") or []:
        enum = tool.get("function", {}).get("parameters", {}).get("properties", {}).get("candidate_id", {}).get("enum")
        if enum:
            return enum[0]
    return None


def _last_called_candidate(messages: list[dict[str, Any]]) -> Any:
    """The candidate id of the last tool call in the conversation's assistant messages, or None."""
    cid = None
    for m in messages:
        if m.get("role") != "assistant":
            continue
        for call in m.get("tool_calls") or []:
            try:
                cid = json.loads(call["function"]["arguments"]).get("candidate_id", cid)
            except (KeyError, TypeError, ValueError, AttributeError):
                pass
    return cid


def _forever(body: dict[str, Any], fake: FakeOpenAI) -> dict[str, Any]:
    """A revisit_image call, whatever the request: the candidate from the offered schema, else the last call."""
    messages = body["messages"]
    cid = _offered_candidate(body)
    if cid is None:
        cid = _last_called_candidate(messages)
    if cid is None:
        cid = "unknown"
    with fake._lock:
        fake.forever_calls += 1
    call = {
        "id": f"call_{len(messages)}",
        "type": "function",
        "function": {
            "name": "revisit_image",
            "arguments": json.dumps({"candidate_id": cid, "box": fake.switches.revisit_box}),
        },
    }
    msg = {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"index": 0, "message": msg, "finish_reason": "tool_calls", "logprobs": None}


def _garbage() -> dict[str, Any]:
    """The ``garbage`` switch's answer: no logprobs, and a word that is no label the scorer asked for."""
    msg = {"role": "assistant", "content": "Maybe"}
    return {"index": 0, "message": msg, "finish_reason": "length", "logprobs": None}


def _completion(body: dict[str, Any], fake: FakeOpenAI) -> dict[str, Any]:
    sw = fake.switches
    messages = body["messages"]
    if body.get("model") in sw.chat_models:
        return _chat(body, fake)
    if sw.revisit_forever and not is_probe(body):
        return _forever(body, fake)
    first = messages[0]["content"]
    last_text = first if isinstance(first, str) else [p.get("text", "") for p in first if isinstance(p, dict)][-1]
    if "Answer with the option number only" in last_text:
        return _garbage() if sw.garbage else _listwise(body, last_text, sw)
    tools = body.get("tools")
    revisited = any(m.get("role") == "tool" for m in messages)
    if tools and not sw.ignore_tools and sw.tool_call_first and not revisited and not is_probe(body):
        cid = sw.revisit_id or tools[0]["function"]["parameters"]["properties"]["candidate_id"]["enum"][0]
        specs = sw.revisit_calls or [
            (f"call_{len(messages)}", sw.revisit_arguments or {"candidate_id": cid, "box": sw.revisit_box})
        ]
        calls = []
        for call_id, args in specs:
            if isinstance(args, dict):
                args = json.dumps({k: (cid if v == "{cid}" else v) for k, v in args.items()})
            calls.append({"id": call_id, "type": "function", "function": {"name": "revisit_image", "arguments": args}})
        msg = {"role": "assistant", "content": None, "tool_calls": calls}
        return {"index": 0, "message": msg, "finish_reason": "tool_calls", "logprobs": None}
    if sw.garbage:
        return _garbage()
    key = json.dumps(messages, sort_keys=True).encode() if sw.whole_prompt else _key(messages)
    if revisited and sw.tool_call_first:  # the answer depends on seeing the region that was asked for
        imgs = _images(messages)
        box = sw.revisit_box
        numbers = isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)
        well_formed = numbers and box[0] < box[2] and box[1] < box[3]
        ok = len(imgs) >= 2 and well_formed and crop_matches(imgs[0], imgs[-1], box)
        with fake._lock:
            fake.crop_checks.append(ok)
        if not ok:
            key = b"the revisit showed the wrong region"
    p = expected_p_true(key)
    answer = "True" if p >= 0.5 else "False"
    lt, lf = math.log(p * 0.9), math.log((1 - p) * 0.9)
    top: list[dict[str, Any]] = [
        {"token": "True", "logprob": lt, "bytes": None},
        {"token": "False", "logprob": lf, "bytes": None},
        {"token": " true", "logprob": math.log(0.05), "bytes": None},
        {"token": "Yes", "logprob": math.log(0.05), "bytes": None},
    ]
    n = body.get("top_logprobs") or 0
    logprobs = None
    if body.get("logprobs") and sw.logprobs:
        first = {
            "token": answer,
            "logprob": lt if answer == "True" else lf,
            "bytes": None,
            "top_logprobs": [] if sw.sampled_only else sorted(top, key=lambda t: -t["logprob"])[:n],
        }
        logprobs = {"content": [first], "refusal": None}
    return {
        "index": 0,
        "message": {"role": "assistant", "content": answer},
        "finish_reason": "length",
        "logprobs": logprobs,
    }


def _pieces(text: str, n: int) -> list[str]:
    """``text`` cut into at most ``n`` non-empty pieces of about equal length."""
    size = max(1, math.ceil(len(text) / n))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _chunks(base: dict[str, Any], choice: dict[str, Any], usage: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """A completion ``choice`` as OpenAI streams it: role, content pieces (logprobs on the first), tool calls
    (id, type and name first, then argument pieces), the finish reason, then ``usage`` if given."""

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        c = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        return {**base, "object": "chat.completion.chunk", "choices": [c]}

    msg = choice["message"]
    yield chunk({"role": "assistant", "content": ""})
    content = msg.get("content") or ""
    words = re.findall(r"\s*\S+\s*", content) or ([content] if content else [])
    for i, piece in enumerate(words):
        yield chunk({"content": piece}, logprobs=choice.get("logprobs") if i == 0 else None)
    for i, call in enumerate(msg.get("tool_calls") or []):
        head = {"index": i, "id": call["id"], "type": "function"}
        yield chunk({"tool_calls": [{**head, "function": {"name": call["function"]["name"], "arguments": ""}}]})
        for piece in _pieces(call["function"]["arguments"], 3):
            yield chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
    yield chunk({}, finish=choice["finish_reason"])
    if usage is not None:
        yield {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _stream(self, events: Iterable[dict[str, Any]]) -> None:
            """Server-sent events, ended by ``[DONE]``; the body ends when the connection closes (HTTP/1.0)."""
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/").endswith("/models"):
                names = fake.switches.models or ["fake-vlm"]
                return self._send(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})
            self._send(404, {"error": {"message": "not found"}})

        def _refusal(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
            """The configuration and request errors of real servers, worded as they word them."""
            sw = fake.switches
            key = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if sw.api_key is not None and key != sw.api_key:
                msg = f"Incorrect API key provided: {key[:3]}***. You can find your API key at https://example/keys."
                return 401, {"error": {"message": msg, "type": "invalid_request_error", "code": "invalid_api_key"}}
            if sw.models is not None and body.get("model") not in sw.models:
                msg = f"The model `{body.get('model')}` does not exist or you do not have access to it."
                return 404, {"error": {"message": msg, "type": "invalid_request_error", "code": "model_not_found"}}
            if sw.status is not None:
                return sw.status, {"error": {"message": f"refused with {sw.status}", "type": "invalid_request_error"}}
            if sw.insufficient_quota:
                msg = "You exceeded your current quota, please check your plan and billing details."
                return 429, {"error": {"message": msg, "type": "insufficient_quota", "code": "insufficient_quota"}}
            asked = body.get("top_logprobs") or 0
            if sw.max_top_logprobs is not None and body.get("logprobs") and asked > sw.max_top_logprobs:
                if sw.cap_style == "tgi":
                    msg = f"Input validation error: `top_n_tokens` must be >= 0 and <= {sw.max_top_logprobs}"
                    return 422, {"error": msg, "error_type": "validation", "message": msg}
                msg = f"Requested sample logprobs of {asked}, which is greater than max allowed: {sw.max_top_logprobs}"
                return 400, {"error": {"message": msg, "type": "BadRequestError", "code": 400}}
            text = json.dumps(body.get("messages"))
            if sw.too_long_marker is not None and sw.too_long_marker in text:
                err = {"message": sw.too_long_message, "type": "invalid_request_error", "code": "too_long"}
                return sw.too_long_status, {"error": err}
            return None

        def do_POST(self) -> None:  # noqa: N802
            size = int(self.headers["Content-Length"])
            body = json.loads(self.rfile.read(size))
            if fake.switches.max_body is not None and size > fake.switches.max_body:
                with fake._lock:
                    fake.requests.append(body)
                return self._send(413, {"error": {"message": "Request Entity Too Large"}})
            sw = fake.switches
            with fake._lock:
                fake.requests.append(body)
                fake.times.append(time.monotonic())
                spared = is_probe(body) and not sw.faults_hit_probes  # faults by switch hit pair requests
                n = fake._served if not spared else 10**9
                fake._served += 0 if spared else 1
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                if sw.delay:
                    time.sleep(sw.delay)
                if n < sw.rate_limit:
                    return self._send(
                        429,
                        {"error": {"message": "rate limited", "type": "rate_limit"}},
                        {"Retry-After": str(sw.retry_after)},
                    )
                if n < sw.rate_limit + sw.fail_5xx:
                    return self._send(sw.fail_code, {"error": {"message": "boom", "type": "server_error"}})
                refusal = self._refusal(body)
                if refusal is not None:
                    return self._send(*refusal)
                if sw.reject_urls and b"http" in (_first_image_bytes(body["messages"]) or b"")[:4]:
                    return self._send(400, {"error": {"message": "failed to fetch image url"}})
                if sw.new_params_only and "max_tokens" in body:
                    msg = "Unsupported parameter: 'max_tokens'. Use 'max_completion_tokens' instead."
                    return self._send(400, {"error": {"message": msg}})
                if sw.new_params_only and "temperature" in body:
                    return self._send(400, {"error": {"message": "Unsupported value: 'temperature' must be 1"}})
                if body.get("tools") and not sw.tools:
                    return self._send(400, {"error": {"message": "tools are not supported by this model"}})
                has_image = _first_image_bytes(body["messages"]) is not None
                if has_image and sw.image_error_500:
                    msg = 'can only concatenate str (not "list") to str'
                    return self._send(500, {"error": {"message": msg, "type": "internal_server_error"}})
                if body.get("logprobs") and sw.logprobs_500:
                    return self._send(500, {"error": {"message": "logprobs is not supported", "type": "server_error"}})
                if body.get("logprobs") and sw.reject_logprobs:
                    return self._send(400, {"error": {"message": "logprobs is not supported"}})
                choice = _completion(body, fake)
                n_prompt = _prompt_tokens(body["messages"], count_images=not sw.text_only, as_text=sw.images_as_text)
                if body.get("tools") and not sw.ignore_tools:  # the template renders the tool schemas
                    n_prompt += len(json.dumps(body["tools"])) // 4
                if sw.fixed_prompt_tokens is not None:
                    n_prompt = sw.fixed_prompt_tokens
                n_out = 1
                if body.get("model") in sw.chat_models:
                    n_out = len(json.dumps(choice["message"])) // 4 + 1
                usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
                base = {"id": f"cmpl-{n}", "created": 0, "model": body["model"]}
                if body.get("stream"):
                    with_usage = (body.get("stream_options") or {}).get("include_usage")
                    return self._stream(_chunks(base, choice, usage if with_usage else None))
                self._send(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            finally:
                with fake._lock:
                    fake.in_flight -= 1

    return H


@contextmanager
def fake_openai(switches: Switches | None = None) -> Iterator[FakeOpenAI]:
    """Run the fake on 127.0.0.1; ``fake.url`` is the ``base_url`` (ends in /v1)."""
    fake = FakeOpenAI(switches or Switches())
    with running_server(_handler(fake), daemon_threads=True) as server:
        fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        yield fake
