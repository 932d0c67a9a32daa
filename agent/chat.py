"""The conversational graph: a chat model that calls ``multimodal_search`` and answers, refining across turns.

Built with LangChain's ``create_agent`` (a ``MessagesState`` graph: model -> tools -> model ...). Earlier results
and attached images are read from the conversation state by the tools, never from the model's memory of ids.
Conversations persist in SQLite (``chat.sqlite`` in the data dir), one thread id per conversation.
"""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict
from retllm.agent.context import Context
from retllm.tools.deps import Deps, default_deps
from retllm.tools.langchain_tools import build_tools

from retllm.errors import ConfigError, MissingDependencyError
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
    """User messages whose inline images (data URLs, base64 blocks) are kept on disk by content and replaced by
    references (``additional_kwargs["retllm_attachments"]``, what ``image='attached'`` reads), under the same
    message ids: checkpoints then hold a path per image, not megabytes of base64 in every later checkpoint.
    Returns only the messages that changed."""
    from langchain_core.messages import HumanMessage
    from retllm.tools.langchain_tools import block_image

    out = []
    for m in messages:
        if not isinstance(m, HumanMessage) or not isinstance(m.content, list):
            continue
        refs, text, changed = [], [], False
        for block in m.content:
            found = block_image(block)
            if isinstance(found, bytes):
                refs.append(deps.keep_image(found))
                changed = True
            elif found is not None:  # an http(s) URL or a path: kept as the reference itself
                refs.append(found)
                changed = True
            elif isinstance(block, dict) and block.get("type") == "text":
                text.append(str(block.get("text", "")))
            elif isinstance(block, str):
                text.append(block)
        if changed:
            kwargs = dict(m.additional_kwargs)
            kwargs["retllm_attachments"] = [*kwargs.get("retllm_attachments", []), *refs]
            body = "\n".join(t for t in text if t)
            out.append(HumanMessage(content=f"{body}\n{ATTACHED_NOTE}".strip(), additional_kwargs=kwargs, id=m.id))
    return out


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
