"""The conversational graph: a chat model that calls ``multimodal_search`` and answers, refining across turns.

Built with LangChain's ``create_agent`` (a ``MessagesState`` graph: model -> tools -> model ...). Earlier results
and attached images are read from the conversation state by the tools, never from the model's memory of ids.
Conversations persist in SQLite (``chat.sqlite`` in the data dir), one thread id per conversation.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict
from retllm.agent.context import Context
from retllm.tools.deps import Deps, default_deps
from retllm.tools.langchain_tools import build_tools

from retllm.errors import BadItemError, ConfigError, MissingDependencyError
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


def slim_attachments(messages: list[Any], deps: Deps) -> list[Any]:
    """User messages whose inline images (data URLs, base64 blocks) are kept on disk by content and replaced, in
    place, by a ``[attached image N]`` text block; every image of the message, inline or URL, is listed in order
    in ``additional_kwargs["retllm_attachments"]`` (what ``image='attached'`` / ``'attached:N'`` read). URL
    image blocks and other blocks (text, files) stay as they are, so the chat model still sees them; checkpoints
    hold a path per inline image instead of megabytes of base64. Same message ids; only changed messages return.
    """
    from langchain_core.messages import HumanMessage
    from retllm.tools import ops
    from retllm.tools.langchain_tools import block_image

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
                    refs.append(ops.keep_checked(deps, found))
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


def prepare_messages(messages: list[Any], deps: Deps) -> list[Any]:
    """``messages`` with inline images kept by reference (:func:`slim_attachments`): front ends call this before
    ``invoke`` so that not even the run's first checkpoint holds the base64 (the graph's own middleware slims
    what reaches it unprepared, for every later checkpoint)."""
    import uuid

    for m in messages:
        if getattr(m, "id", None) is None:
            m.id = str(uuid.uuid4())
    slim = {x.id: x for x in slim_attachments(messages, deps)}
    return [slim.get(m.id, m) for m in messages]


def turn_events(graph: Any, deps: Deps, thread: str | None, messages: list[Any]) -> Iterator[tuple[str, Any]]:
    """Run one chat turn and say what happens, as ``(kind, data)`` pairs, for every front end (terminal, SSE):

    - ``progress``: a stage event of the search (:mod:`retllm.events`);
    - ``search``: a ``multimodal_search`` result (:class:`SearchOut`); ``search_error``: its refusal (a message);
    - ``answer``: the chat model's final text.

    ``thread``: the conversation to continue (``None``: a graph without a checkpointer, one-off)."""
    from langchain_core.messages import AIMessage, ToolMessage
    from retllm.agent.context import Context
    from retllm.tools.schemas import SearchOut

    config = {"configurable": {"thread_id": thread}} if thread is not None else {}
    for mode, chunk in graph.stream(
        {"messages": prepare_messages(messages, deps)},
        config,
        context=Context(deps=deps),
        stream_mode=["custom", "updates"],
    ):
        if mode == "custom":
            if isinstance(chunk, dict):
                yield "progress", chunk
            continue
        for update in (chunk or {}).values():
            for m in (update or {}).get("messages", []) if isinstance(update, dict) else []:
                if isinstance(m, ToolMessage) and m.name == "multimodal_search":
                    if m.status == "error" or not m.artifact:
                        yield "search_error", str(m.content)
                    else:
                        yield "search", SearchOut.model_validate(m.artifact)
                elif isinstance(m, AIMessage) and not m.tool_calls and m.content:
                    yield "answer", m.text if hasattr(m, "text") else str(m.content)


def build_chat_graph(deps: Deps | None = None, *, model: Any = None, checkpointer: Any = None) -> Any:
    """The compiled chat graph. ``model``: any LangChain chat model with tool calling (default from settings)."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import before_agent
    from retllm.agent.context import deps_of

    @before_agent
    def keep_attachments(state: Any, runtime: Any) -> dict[str, Any] | None:
        slim = slim_attachments(list(state["messages"]), deps_of(runtime.context, deps))
        return {"messages": slim} if slim else None

    settings = (deps or default_deps()).settings
    return create_agent(
        model if model is not None else make_chat_model(settings),
        build_tools(deps),
        system_prompt=system_prompt(),
        middleware=[keep_attachments],
        checkpointer=checkpointer,
        context_schema=Context,
        name="chat",
    )


def make_graph() -> Any:
    """The chat graph for ``langgraph.json`` (``langgraph dev`` brings its own checkpointer)."""
    return build_chat_graph()
