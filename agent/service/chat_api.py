"""Chat over HTTP: the chat graph's turns as server-sent events, conversation threads, and an OpenAI-compatible
``/v1/chat/completions`` so existing chat front ends (Open WebUI, LibreChat, any OpenAI client) use retllm as a
"model" and show the ranked thumbnails as Markdown."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import anyio
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from retllm.agent.service.bodies import openapi_body, parse
from retllm.agent.service.models import (
    MAX_CONVERSATION_CHARS,
    MAX_MESSAGE_CHARS,
    ChatRequest,
    ThreadInfo,
    ThreadTurn,
)
from retllm.agent.service.security import watch_disconnect
from retllm.tools.schemas import SearchOut

from retllm.attachments import AttachmentStore
from retllm.errors import BadItemError, Cancelled, RetllmError
from retllm.images import image_mime

if TYPE_CHECKING:
    from retllm.agent.service.app import Service

log = logging.getLogger(__name__)

Emit = Callable[[str, Any], None]
KEEPALIVE_S = 10.0


def _message(e: Exception) -> str:
    from retllm.agent.service.app import upstream

    if isinstance(e, HTTPException):
        return str(e.detail)
    if isinstance(e, RetllmError | ValidationError):
        return str(e)
    if upstream(e):
        log.warning("a model server failed: %s: %s", type(e).__name__, e)
        return f"the chat model's server failed: {type(e).__name__}"
    log.exception("chat turn failed", exc_info=e)
    return f"internal error ({type(e).__name__})"


def stream(
    svc: Service,
    work: Callable[[Emit], None],
    fmt: Callable[[str, Any], bytes | None],
    finish: Callable[[], None] | None = None,
    *,
    request: Request | None = None,
    cancel: threading.Event | None = None,
) -> StreamingResponse:
    """Run ``work(emit)`` on a gated worker thread and stream what it emits, formatted by ``fmt``, as it comes.

    Admission happens before the response starts, so a full queue is a plain 503; an error inside becomes an
    ``error`` event; comments keep idle connections (proxies) open while the models work. ``finish`` runs when
    the work is over (also when the client went away first). ``cancel`` (the event ``work`` was handed) is set
    when the client goes while the work runs (``request`` is watched, and the stream's end is noticed), so the
    work drops what is left of it."""
    try:
        svc.gate.admit()
    except Exception:
        if finish is not None:
            finish()
        raise
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str | None, Any]] = asyncio.Queue()

    def emit(kind: str | None, data: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, data))
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            pass

    def guarded() -> None:
        try:
            work(emit)
        except Cancelled:
            log.info("a streamed request's client went away; its remaining model work was dropped")
        except Exception as e:
            emit("error", {"message": _message(e)})

    async def run() -> None:
        watch = None
        if request is not None and cancel is not None:
            watch = asyncio.ensure_future(watch_disconnect(request, cancel))
        try:
            await anyio.to_thread.run_sync(guarded, limiter=svc.gate.limiter)
        finally:
            if watch is not None:
                watch.cancel()
            svc.gate.release()
            if finish is not None:
                finish()
            queue.put_nowait((None, None))

    task = asyncio.ensure_future(run())

    async def body() -> AsyncIterator[bytes]:
        try:
            while True:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield b": working\n\n"
                    continue
                if kind is None:
                    break
                out = fmt(kind, data)
                if out:
                    yield out
        except BaseException:  # the response ended early (Starlette stops the body when the client disconnects)
            if cancel is not None:
                cancel.set()
            raise
        await task

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def sse(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def human(text: str, images: list[str]) -> Any:
    from langchain_core.messages import HumanMessage

    if not images:
        return HumanMessage(content=text)
    blocks: list[Any] = [{"type": "text", "text": text}]
    blocks += [{"type": "image_url", "image_url": {"url": u}} for u in images]
    return HumanMessage(content=blocks)


def inline(svc: Service, url: str, where: str) -> str:
    """An attached image as a data URL: an http(s) URL is fetched here, through the guard, so neither the chat
    model's server nor anyone else behind us ever fetches a caller's URL."""
    if url[:11].lower() == "data:image/":
        return url
    if not url.lower().startswith(("http://", "https://")):
        raise HTTPException(422, f"{where}: give a data:image/...;base64 URL or an http(s) URL")
    try:
        data = svc.settings.request_limits.read(url)
        svc.settings.image_limits.check(data)
    except BadItemError as e:
        raise HTTPException(400, f"{where}: {e}") from e
    return f"data:{image_mime(data)};base64," + base64.b64encode(data).decode()


def _check_scheme(url: str, where: str) -> None:
    if not (url[:11].lower() == "data:image/" or url.lower().startswith(("http://", "https://"))):
        raise HTTPException(422, f"{where}: give a data:image/...;base64 URL or an http(s) URL")


# --- threads ---------------------------------------------------------------------------------------------------


_NOTES = re.compile(r"^\[attached image \d+\]$|^\(\d+ image\(s\) attached: ")


def _text(content: Any) -> str:
    """The user's words of a message: its text parts without the notes :func:`slim_attachments` adds."""
    if isinstance(content, str):
        return content
    parts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    return "\n".join(p for p in parts if not _NOTES.match(p))


def thread_messages(svc: Service, thread_id: str) -> list[Any] | None:
    tup = svc.saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    if tup is None:
        return None
    return list(tup.checkpoint.get("channel_values", {}).get("messages", []))


def drop_thread(svc: Service, thread_id: str) -> bool:
    """Delete ``thread_id``'s checkpoints and attachments; whether there was any."""
    existed = thread_messages(svc, thread_id) is not None
    svc.saver.delete_thread(thread_id)
    return AttachmentStore.of(svc.settings).delete(thread_id) > 0 or existed


def list_threads(svc: Service, limit: int = 100) -> list[ThreadInfo]:
    with svc.saver.cursor(transaction=False) as cur:
        cur.execute(
            "SELECT thread_id FROM checkpoints WHERE checkpoint_ns = '' GROUP BY thread_id "
            "ORDER BY MAX(checkpoint_id) DESC LIMIT ?",
            (limit,),
        )
        ids = [row[0] for row in cur.fetchall()]
    out = []
    for tid in ids:
        tup = svc.saver.get_tuple({"configurable": {"thread_id": tid, "checkpoint_ns": ""}})
        msgs = list(tup.checkpoint.get("channel_values", {}).get("messages", [])) if tup else []
        first = next((_text(m.content) for m in msgs if m.type == "human"), "")
        updated = tup.checkpoint.get("ts") if tup else None
        out.append(ThreadInfo(thread_id=tid, title=first[:80] or "(empty)", updated=updated))
    return out


def history(svc: Service, request: Request, msgs: list[Any]) -> list[ThreadTurn]:
    turns = []
    for m in msgs:
        if m.type == "human":
            refs = (m.additional_kwargs or {}).get("retllm_attachments") or []
            turns.append(ThreadTurn(role="user", text=_text(m.content), images=len(refs)))
        elif m.type == "tool" and m.name == "multimodal_search" and m.status != "error" and m.artifact:
            search = svc.public(request, SearchOut.model_validate(m.artifact))
            turns.append(ThreadTurn(role="search", search=search))
        elif m.type == "ai" and not m.tool_calls and m.content:
            turns.append(ThreadTurn(role="assistant", text=_text(m.content)))
    return turns


def router(svc: Service) -> APIRouter:
    r = APIRouter(tags=["chat"])

    @r.post("/chat", openapi_extra=openapi_body(ChatRequest))
    async def chat(request: Request) -> StreamingResponse:
        """One user turn; server-sent events: ``thread`` (its id), ``progress`` (stage events), ``search`` (ranked
        results), ``search_error``, ``confirm`` (an action that waits for the user's yes: answer with
        ``{"thread_id", "confirm": true|false}``), ``answer`` (the reply), ``error``, and ``done`` last. History
        is kept per thread (SQLite) and survives restarts."""
        body = await parse(request, ChatRequest)
        for i, u in enumerate(body.images):
            _check_scheme(u, f"images[{i}]")
        thread = body.thread_id or uuid.uuid4().hex[:12]
        if thread in svc.busy_threads:  # two turns at once would both continue the same checkpoint
            raise HTTPException(409, f"conversation {thread!r} is still answering the previous message; retry after it")
        svc.busy_threads.add(thread)  # taken with the check, no await between them

        def admit() -> list[str]:
            """Before any event: the turn fits what the conversation waits for (409), its images are fetched."""
            from retllm.agent.chat import ConfirmationError, check_turn

            if body.thread_id is not None:
                try:
                    check_turn(svc.chat_graph(), thread, body.confirm)
                except ConfirmationError as e:
                    raise HTTPException(409, str(e)) from e
            return [inline(svc, u, f"images[{i}]") for i, u in enumerate(body.images)]

        try:
            images = await svc.gate.run(admit, request=request) if body.thread_id or body.images else []
        except BaseException:
            svc.busy_threads.discard(thread)
            raise
        messages = [human(body.message, images)] if body.message is not None else []

        cancel = threading.Event()

        def work(emit: Emit) -> None:
            from retllm.agent.chat import turn_events

            emit("thread", {"thread_id": thread})
            turn = turn_events(svc.chat_graph(), svc.deps, thread, messages, confirm=body.confirm, cancel=cancel)
            for kind, data in turn:
                if kind == "search":
                    data = svc.public(request, data)
                emit(kind, data)
            emit("done", {"thread_id": thread})

        return stream(svc, work, sse, finish=lambda: svc.busy_threads.discard(thread), request=request, cancel=cancel)

    @r.get("/chat/threads", response_model=list[ThreadInfo])
    async def threads(request: Request) -> list[ThreadInfo]:
        """Conversations, newest first (title: the first message)."""
        return await svc.gate.run(list_threads, svc, request=request)

    @r.get("/chat/threads/{thread_id}")
    async def thread(thread_id: str, request: Request) -> dict[str, Any]:
        """One conversation's turns (user, search, assistant), to resume it, and the actions that wait for the
        user's confirmation (``pending``: as the ``confirm`` events gave them)."""
        from retllm.agent.chat import pending_actions

        def read() -> tuple[list[Any] | None, list[dict[str, Any]]]:
            return thread_messages(svc, thread_id), pending_actions(svc.chat_graph(), thread_id)

        msgs, pending = await svc.gate.run(read, request=request)
        if msgs is None:
            raise HTTPException(404, f"no conversation {thread_id!r}")
        turns = [t.model_dump() for t in history(svc, request, msgs)]
        return {"thread_id": thread_id, "turns": turns, "pending": pending}

    @r.delete("/chat/threads/{thread_id}")
    async def delete_thread(thread_id: str, request: Request) -> dict[str, Any]:
        """Delete a conversation: its checkpoints and the images attached in it (404: no such conversation;
        409 while it answers a turn)."""
        if thread_id in svc.busy_threads:
            raise HTTPException(409, f"conversation {thread_id!r} is answering a message; delete it after that")
        svc.busy_threads.add(thread_id)  # no turn starts on it while it goes
        try:
            found = await svc.gate.run(drop_thread, svc, thread_id, request=request)
        finally:
            svc.busy_threads.discard(thread_id)
        if not found:
            raise HTTPException(404, f"no conversation {thread_id!r}")
        return {"thread_id": thread_id, "deleted": True}

    return r


# --- OpenAI-compatible -----------------------------------------------------------------------------------------


class ImageURL(BaseModel):
    url: str


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL | str  # the object form, or the bare URL some clients send

    @property
    def url(self) -> str:
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ...: ignored

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Part] | None = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, max_tokens, ...: accepted, the chat graph decides

    model: str = "retllm"
    messages: list[OpenAIMessage] = Field(min_length=1, max_length=200)
    stream: bool = False

    @model_validator(mode="after")
    def _bounded_text(self) -> CompletionRequest:
        """The chat model reads all of it: the same bound per message as ``/chat``, and one for the whole."""
        total = 0
        for i, m in enumerate(self.messages):
            parts = (
                [m.content]
                if isinstance(m.content, str)
                else [p.text for p in m.content or [] if isinstance(p, TextPart)]
            )
            n = sum(len(t) for t in parts)
            if n > MAX_MESSAGE_CHARS:
                raise ValueError(f"messages[{i}] has {n:,} characters of text; at most {MAX_MESSAGE_CHARS:,}")
            total += n
        if total > MAX_CONVERSATION_CHARS:
            raise ValueError(f"the messages hold {total:,} characters of text; at most {MAX_CONVERSATION_CHARS:,}")
        return self


MODEL_ID = "retllm"
MAX_IMAGES = 8  # as /chat takes per turn: every one is fetched and checked before the graph runs


def to_langchain(svc: Service, messages: list[OpenAIMessage]) -> list[Any]:
    """OpenAI chat messages as LangChain ones (runs on a worker: URL images are fetched through the guard).
    System messages are dropped (the graph has its own prompt); tool messages too (its tools are its own)."""
    from langchain_core.messages import AIMessage, HumanMessage

    parts = [p for m in messages if isinstance(m.content, list) for p in m.content if isinstance(p, ImagePart)]
    if len(parts) > MAX_IMAGES:
        raise HTTPException(422, f"messages: at most {MAX_IMAGES} images in a conversation (got {len(parts)})")
    out: list[Any] = []
    for i, m in enumerate(messages):
        if m.role == "user":
            content: Any = m.content or ""
            if isinstance(content, list):
                content = [
                    {"type": "text", "text": p.text}
                    if isinstance(p, TextPart)
                    else {"type": "image_url", "image_url": {"url": inline(svc, p.url, f"messages[{i}].content[{j}]")}}
                    for j, p in enumerate(content)
                ]
            out.append(HumanMessage(content=content))
        elif m.role == "assistant" and m.content:
            said = m.content if isinstance(m.content, str) else _text([p.model_dump() for p in m.content])
            out.append(AIMessage(content=said))
    if not out or out[-1].type != "human":
        raise HTTPException(422, "messages: the last message must be the user's")
    return out


def markdown(search: dict[str, Any]) -> str:
    """Ranked results as Markdown thumbnails (what chat front ends render)."""
    if not search["hits"]:
        return ""
    how = f"re-ranked by {search['scorer']}" if search["scorer"] else "coarse order"
    lines = [f"**Results** ({search['collection']}, {how}):", ""]
    for h in search["hits"]:
        score = f"{h['score']:.3f}" if h.get("score") is not None else f"similarity {h['coarse_score']:.3f}"
        badge = ", ".join(
            x
            for x in (
                h.get("method"),
                f"coarse #{h['coarse_rank']}" if h.get("coarse_rank") else None,
                f"retraced L{h['retraced']}" if h.get("retraced") is not None else None,
                f"{h['revisits']} revisit(s)" if h.get("revisits") else None,
            )
            if x
        )
        pic = f"![result {h['rank']}](<{h['thumbnail']}>) " if h.get("thumbnail") else ""
        text = f" — {md_escape(h['text'][:80])}" if h.get("text") else ""
        lines.append(f"{h['rank']}. {pic}{md_escape(h['id'])} **{score}** ({badge}){text}")
    return "\n".join(lines)


_MD = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def md_escape(text: str) -> str:
    """``text`` shown literally in Markdown (item ids and texts are data, not markup: no links, no images)."""
    return _MD.sub(r"\\\1", " ".join(text.split()))


def openai_router(svc: Service) -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["openai"])

    @r.get("/models")
    async def models() -> dict[str, Any]:
        """The one model this endpoint serves: ``retllm`` (the chat graph over the configured collection)."""
        return {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "retllm"}]}

    @r.post("/chat/completions", openapi_extra=openapi_body(CompletionRequest))
    async def completions(request: Request) -> Any:
        """Runs the chat graph over the conversation sent (stateless: clients send the history each time); the
        reply is the answer followed by the ranked results as Markdown thumbnails. ``stream: true`` gives SSE
        chunks as OpenAI sends them."""
        body = await parse(request, CompletionRequest)
        messages = await svc.gate.run(to_langchain, svc, body.messages, request=request)
        created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:24]}"
        cancel = threading.Event()

        def reply(emit: Emit | None = None) -> str:
            from retllm.agent.chat import turn_events

            answer, results = "", []
            graph = svc.chat_graph(stateless=True)
            for kind, data in turn_events(graph, svc.deps, None, messages, cancel=cancel):
                if kind == "search":
                    results.append(markdown(svc.public(request, data)))
                elif kind == "answer":
                    answer = data
                elif kind == "search_error":
                    results.append(f"_search refused: {data}_")
            text = "\n\n".join(x for x in (answer, *results[-1:]) if x)
            if emit is not None:
                emit("content", text)
            return text

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(obj)}\n\n".encode()

        if body.stream:

            def fmt(kind: str, data: Any) -> bytes | None:
                if kind == "content":
                    return chunk({"role": "assistant", "content": data}) + chunk({}, "stop") + b"data: [DONE]\n\n"
                if kind == "error":
                    err = {"error": {"message": data["message"], "type": "server_error"}}
                    return f"data: {json.dumps(err)}\n\ndata: [DONE]\n\n".encode()
                return None

            def work(emit: Emit) -> None:
                reply(emit)

            return stream(svc, work, fmt, request=request, cancel=cancel)
        text = await svc.gate.run(reply, request=request, cancel=cancel)  # errors: the app's handlers (4xx, 502)
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }

    return r
