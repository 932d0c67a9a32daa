"""The conversational graph: a chat model that calls ``multimodal_search`` and answers, refining across turns.

Built with LangChain's ``create_agent`` (a ``MessagesState`` graph: model -> tools -> model ...). Earlier results
and attached images are read from the conversation state by the tools, never from the model's memory of ids.
Conversations persist in SQLite (``chat.sqlite`` in the data dir), one thread id per conversation.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict
from retllm.agent.context import Context
from retllm.tools.deps import Deps, default_deps
from retllm.tools.langchain_tools import Deletes, build_tools

from retllm.attachments import AttachmentStore
from retllm.errors import BadItemError, Cancelled, ConfigError, MissingDependencyError, RetllmError
from retllm.settings import Settings


class SystemPrompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    system: str


def system_prompt(name: str = "chat_system") -> str:
    """A system prompt file from ``retllm.prompts`` (strictly parsed)."""
    text = resources.files("retllm.prompts").joinpath(f"{name}.yaml").read_text("utf-8")
    return SystemPrompt.model_validate(yaml.safe_load(text)).system


def make_chat_model(settings: Settings) -> Any:
    """The chat model named by ``RETLLM_CHAT_MODEL`` (``provider:model``), built by LangChain's ``init_chat_model``."""
    from langchain.chat_models import init_chat_model

    spec = settings.chat_model
    provider, sep, _ = spec.partition(":")
    if not sep:
        raise ConfigError(f"RETLLM_CHAT_MODEL {spec!r} must look like provider:model, e.g. openai:gpt-4o-mini")
    kwargs: dict[str, Any] = {}
    if settings.chat_base_url:
        kwargs["base_url"] = settings.chat_base_url
    if settings.chat_api_key is not None:
        kwargs["api_key"] = settings.chat_api_key.get_secret_value()
    elif settings.chat_base_url and provider == "openai":
        import os

        kwargs["api_key"] = os.environ.get("OPENAI_API_KEY") or "not-needed"  # local servers take any key
    try:
        return init_chat_model(spec, **kwargs)
    except ImportError as e:
        raise MissingDependencyError(
            f"RETLLM_CHAT_MODEL={spec}: {e}; install the provider's package, e.g. pip install langchain-{provider}"
        ) from e
    except ValueError as e:
        raise ConfigError(f"RETLLM_CHAT_MODEL={spec}: {e}") from e


def open_checkpointer(path: Path) -> Any:
    """A SQLite checkpointer at ``path`` (conversations survive restarts); close it with ``.conn.close()``."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteSaver(sqlite3.connect(str(path), check_same_thread=False))


def chat_db(settings: Settings) -> Path:
    return settings.data_dir / "chat.sqlite"


ATTACHED_NOTE = "(I attached an image; search with image='attached' to use it.)"


def slim_attachments(messages: list[Any], deps: Deps, thread: str | None = None) -> list[Any]:
    """User messages whose inline images (data URLs, base64 blocks) are kept on disk by content, in ``thread``'s
    folder of the attachment store (:mod:`retllm.attachments`), and replaced, in place, by a ``[attached image N]``
    text block; every image of the message, inline or URL, is listed in order in
    ``additional_kwargs["retllm_attachments"]`` (what ``image='attached'`` / ``'attached:N'`` read). URL image
    blocks and other blocks (text, files) stay as they are, so the chat model still sees them; checkpoints hold a
    path per inline image instead of megabytes of base64. Same message ids; only changed messages return.
    """
    from langchain_core.messages import HumanMessage
    from retllm.tools import ops
    from retllm.tools.langchain_tools import block_image, keep_attachment

    out = []
    for m in messages:
        if not isinstance(m, HumanMessage) or not isinstance(m.content, list):
            continue
        if (m.additional_kwargs or {}).get("retllm_attachments"):
            continue  # already slimmed (or attached by reference)
        blocks: list[Any] = []
        refs: list[str] = []
        inline = False
        for block in m.content:
            try:
                found = block_image(block)
            except ops.ToolInputError as e:
                blocks.append({"type": "text", "text": f"[an attached image that could not be read: {e}]"})
                inline = True
                continue
            if isinstance(found, bytes):
                try:
                    refs.append(keep_attachment(deps, thread, found))
                except (ops.ToolInputError, BadItemError) as e:
                    blocks.append({"type": "text", "text": f"[an attached image that could not be read: {e}]"})
                else:
                    blocks.append({"type": "text", "text": f"[attached image {len(refs)}]"})
                inline = True
            elif isinstance(found, str):
                refs.append(found)
                blocks.append(block)  # a URL: the model sees it
                blocks.append({"type": "text", "text": f"[attached image {len(refs)}]"})
            else:
                blocks.append(block)
        if inline or refs:
            kwargs = {**m.additional_kwargs, "retllm_attachments": refs}
            note = (
                f"({len(refs)} image(s) attached: search with image='attached:N' for image N, 'attached' for the last.)"
            )
            tail = [{"type": "text", "text": note}] if refs else []
            out.append(HumanMessage(content=[*blocks, *tail], additional_kwargs=kwargs, id=m.id))
    return out


def prepare_messages(messages: list[Any], deps: Deps, thread: str | None = None) -> list[Any]:
    """``messages`` with inline images kept by reference (:func:`slim_attachments`): front ends call this before
    ``invoke`` so that not even the run's first checkpoint holds the base64 (the graph's own middleware slims
    what reaches it unprepared, for every later checkpoint)."""
    import uuid

    for m in messages:
        if getattr(m, "id", None) is None:
            m.id = str(uuid.uuid4())
    slim = {x.id: x for x in slim_attachments(messages, deps, thread)}
    return [slim.get(m.id, m) for m in messages]


class ConfirmationError(RetllmError):
    """A turn that does not fit what the conversation waits for: a message while an action waits for the user's
    answer, or an answer while nothing waits."""


def check_turn(graph: Any, thread: str | None, confirm: bool | None) -> tuple[Any, ...]:
    """The paused actions (LangGraph interrupts) a turn of ``thread`` answers when ``confirm`` is given;
    :class:`ConfirmationError` when the turn does not fit what the conversation waits for."""
    config = {"configurable": {"thread_id": thread}}
    waiting = graph.get_state(config).interrupts if thread is not None and graph.checkpointer is not None else ()
    if confirm is not None and not waiting:
        raise ConfirmationError(f"nothing waits for a confirmation in conversation {thread!r}")
    if confirm is None and waiting:
        raise ConfirmationError(
            f"conversation {thread!r} waits for the user to confirm: {_describe(waiting[0].value)}; answer that "
            "first (yes or no)"
        )
    return tuple(waiting)


def pending_actions(graph: Any, thread: str | None) -> list[dict[str, Any]]:
    """The actions ``thread`` waits on the user to confirm (a paused ``delete_items``: ``action``, ``collection``,
    ``ids``, ``missing``), oldest first; none for a graph without a checkpointer."""
    if thread is None or graph.checkpointer is None:
        return []
    state = graph.get_state({"configurable": {"thread_id": thread}})
    return [dict(i.value) for i in state.interrupts if isinstance(i.value, dict)]


def turn_events(
    graph: Any,
    deps: Deps,
    thread: str | None,
    messages: list[Any],
    *,
    confirm: bool | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[tuple[str, Any]]:
    """Run one chat turn and say what happens, as ``(kind, data)`` pairs, for every front end (terminal, SSE):

    - ``progress``: a stage event of the search (:mod:`retllm.events`);
    - ``search``: a ``multimodal_search`` result (:class:`SearchOut`); ``search_error``: its refusal (a message);
    - ``confirm``: an action that waits for the user's yes (:func:`pending_actions`); the turn ends there;
    - ``answer``: the chat model's final text.

    ``thread``: the conversation to continue (``None``: a graph without a checkpointer, one-off: its attachments
    are deleted when the turn ends). ``confirm``: answer what waits instead of sending ``messages`` (every
    action waiting gets the same answer); :class:`ConfirmationError` when that does not fit the conversation.
    ``cancel``: once set (the caller has gone), the search drops its remaining model work and the graph runs no
    further step (:class:`~retllm.errors.Cancelled`)."""
    from langchain_core.messages import AIMessage, ToolMessage
    from langgraph.types import Command
    from retllm.agent.context import Context
    from retllm.tools.schemas import SearchOut

    config = {"configurable": {"thread_id": thread}} if thread is not None else {}
    waiting = check_turn(graph, thread, confirm)
    one_off = f"one-off-{uuid.uuid4().hex}" if thread is None else None
    if confirm is not None:
        answers = {i.id: {"approved": confirm, "ids": (i.value or {}).get("ids", [])} for i in waiting}
        run: Any = Command(resume=answers)
    else:
        run = {"messages": prepare_messages(messages, deps, thread if one_off is None else one_off)}
    try:
        context = Context(deps=deps, cancel=cancel)
        for mode, chunk in graph.stream(run, config, context=context, stream_mode=["custom", "updates"]):
            Cancelled.check(cancel)  # leaving the loop closes the stream: no further step starts
            if mode == "custom":
                if isinstance(chunk, dict):
                    yield "progress", chunk
                continue
            for pause in (chunk or {}).get("__interrupt__", ()):
                yield "confirm", pause.value
            for update in (chunk or {}).values():
                for m in (update or {}).get("messages", []) if isinstance(update, dict) else []:
                    if isinstance(m, ToolMessage) and m.name == "multimodal_search":
                        if m.status == "error" or not m.artifact:
                            yield "search_error", str(m.content)
                        else:
                            yield "search", SearchOut.model_validate(m.artifact)
                    elif isinstance(m, AIMessage) and not m.tool_calls and m.content:
                        yield "answer", m.text if hasattr(m, "text") else str(m.content)
    except Cancelled:
        if thread is not None:
            close_open_calls(graph, config)
        raise
    finally:
        if one_off is not None:
            AttachmentStore.of(deps.settings).delete(one_off)


def close_open_calls(graph: Any, config: dict[str, Any]) -> None:
    """Answer the tool calls a cancelled turn left without a result (as errors), so the conversation it kept is one
    a chat model accepts on the next turn."""
    from langchain_core.messages import AIMessage, ToolMessage

    msgs = graph.get_state(config).values.get("messages", [])
    last = next((m for m in reversed(msgs) if isinstance(m, AIMessage)), None)
    answered = {m.tool_call_id for m in msgs if isinstance(m, ToolMessage)}
    left = [c for c in (last.tool_calls if last is not None else []) if c["id"] not in answered]
    if left:
        said = "cancelled: the user left before this finished"
        results = [ToolMessage(said, tool_call_id=c["id"], name=c["name"], status="error") for c in left]
        graph.update_state(config, {"messages": results}, as_node="tools")


def _describe(action: Any) -> str:
    if isinstance(action, dict) and action.get("action") == "delete_items":
        return f"delete {len(action.get('ids') or [])} item(s) from {action.get('collection')!r}"
    return str(action)


def build_chat_graph(
    deps: Deps | None = None,
    *,
    model: Any = None,
    checkpointer: Any = None,
    write_tools: bool | None = None,
    deletes: Deletes | None = None,
) -> Any:
    """The compiled chat graph. ``model``: any LangChain chat model with tool calling (default from settings).

    The chat model only searches and lists (item text it reads could steer it) unless ``write_tools`` (default:
    ``RETLLM_CHAT_WRITE_TOOLS``) adds ``add_items`` and ``delete_items``; a delete then asks the user (a graph
    with a checkpointer: it pauses until :func:`turn_events` gets ``confirm``) or is refused (without one).
    ``deletes`` overrides that choice (:data:`~retllm.tools.langchain_tools.Deletes`)."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import before_agent
    from langgraph.config import get_config
    from retllm.agent.context import deps_of

    @before_agent
    def keep_attachments(state: Any, runtime: Any) -> dict[str, Any] | None:
        thread = (get_config().get("configurable") or {}).get("thread_id")
        slim = slim_attachments(list(state["messages"]), deps_of(runtime.context, deps), thread)
        return {"messages": slim} if slim else None

    settings = (deps or default_deps()).settings
    write = settings.chat_write_tools if write_tools is None else write_tools
    return create_agent(
        model if model is not None else make_chat_model(settings),
        build_tools(deps, write=write, deletes=deletes or ("ask" if checkpointer is not None else "refuse")),
        system_prompt=system_prompt(),
        middleware=[keep_attachments],
        checkpointer=checkpointer,
        context_schema=Context,
        name="chat",
    )


def make_graph() -> Any:
    """The chat graph for ``langgraph.json`` (``langgraph dev`` brings its own checkpointer, so a delete asks)."""
    return build_chat_graph(deletes="ask")
