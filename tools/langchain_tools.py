"""LangChain tools over :mod:`tools.ops`: what our graphs and other people's agents call.

Each tool returns ``(content, artifact)``: a short text for the model, and the full typed result (ids, scores,
provenance, image references) as the artifact. Errors the model can fix come back as tool messages with
status ``error`` that say what to change; infrastructure errors propagate.

Dependencies come from the ``deps`` the tools are built with, or else from the graph's run-time context
(``runtime.context.deps``), so one compiled graph serves any configuration.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from langchain_core.tools import BaseTool, InjectedToolArg, StructuredTool, ToolException
from langgraph.prebuilt import ToolRuntime
from langgraph.types import interrupt
from pydantic import BaseModel, PlainSerializer, SkipValidation, ValidationError, WithJsonSchema, create_model
from retllm.tools import ops
from retllm.tools.deps import Deps, default_deps
from retllm.tools.schemas import (
    MAX_QUERY_CHARS,
    AddItemsArgs,
    CoarseSearchArgs,
    DeleteItemsArgs,
    NoArgs,
    RevisitArgs,
    SearchArgs,
    SearchOut,
)

from retllm.attachments import AttachmentStore
from retllm.scorers.base import Candidate
from retllm.scorers.turns import REVISIT_DESCRIPTION, REVISIT_TOOL, check_revisit


def _resolver(deps: Deps | None) -> Callable[[Any], Deps]:
    def resolve(runtime: Any) -> Deps:
        if deps is not None:
            return deps
        ctx = getattr(runtime, "context", None)
        found = ctx if isinstance(ctx, Deps) else getattr(ctx, "deps", None)
        if callable(found):
            found = found()
        return found if isinstance(found, Deps) else default_deps()  # no context: the environment's settings

    return resolve


def _recoverable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the errors a model can fix into ToolException (a tool message with status error)."""

    @functools.wraps(fn)  # keeps the signature: ToolNode finds the `runtime` parameter through it
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ops.RECOVERABLE as e:
            raise ToolException(str(e)) from e

    return wrapped


M = TypeVar("M", bound=BaseModel)

_Runtime = Annotated[ToolRuntime, InjectedToolArg, SkipValidation, PlainSerializer(lambda _v: None), WithJsonSchema({})]
"""Injected by ToolNode, never validated, serialised or shown to the model."""


def _with_runtime(schema: type[BaseModel]) -> type[BaseModel]:
    """The schema plus the injected ``runtime`` (hidden from the model; our schemas forbid unknown fields)."""
    return create_model(  # type: ignore[call-overload,no-any-return]
        schema.__name__,
        __base__=schema,
        __config__=None,
        runtime=(
            Annotated[
                ToolRuntime, InjectedToolArg, SkipValidation, PlainSerializer(lambda _v: None), WithJsonSchema({})
            ],
            None,
        ),
    )


def _args(model: type[M], kwargs: dict[str, Any]) -> M:
    """The validated arguments; problems go back to the model (the schema checks fields, this their combination)."""
    try:
        return model(**kwargs)
    except ValidationError as e:
        raise ToolException(ops.validation_message(e)) from e


def _make(fn: Callable[..., Any], name: str, description: str, schema: type[BaseModel]) -> BaseTool:
    return StructuredTool.from_function(
        func=_recoverable(fn),
        name=name,
        description=description,
        args_schema=_with_runtime(schema),
        response_format="content_and_artifact",
        handle_tool_error=True,
        handle_validation_error=ops.validation_message,
    )


# --- conversation state: earlier results and attached images -------------------------------------------------


def _messages(runtime: Any) -> list[Any]:
    state = getattr(runtime, "state", None)
    if isinstance(state, dict):
        return list(state.get("messages") or [])
    return list(getattr(state, "messages", None) or [])


def last_results(messages: Iterable[Any]) -> SearchOut | None:
    """The latest successful ``multimodal_search`` result in a conversation (from its tool message's artifact)."""
    for m in reversed(list(messages)):
        if getattr(m, "type", None) == "tool" and getattr(m, "name", None) == "multimodal_search":
            if getattr(m, "status", "success") == "error" or not m.artifact:
                continue
            return SearchOut.model_validate(m.artifact)
    return None


def block_image(block: Any) -> bytes | str | None:
    """Image bytes (or a reference) from a message content block in the OpenAI or LangChain formats."""
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    url = None
    if kind == "image_url":
        iu = block.get("image_url")
        url = iu.get("url") if isinstance(iu, dict) else iu
    elif kind == "image":
        raw = block.get("base64") or block.get("data")
        if isinstance(raw, str):
            return ops.b64_bytes(raw, "attached image")
        url = block.get("url")
    if not isinstance(url, str):
        return None
    if url[:5].lower() == "data:":
        return ops.data_url_bytes(url)
    return url


def attachments(message: Any) -> list[bytes | str]:
    """A human message's attached images, in order: its references (``additional_kwargs["retllm_attachments"]``,
    how ``retllm chat --image`` and the chat graph keep them), then its image blocks."""
    refs: list[bytes | str] = list((getattr(message, "additional_kwargs", None) or {}).get("retllm_attachments") or [])
    content = getattr(message, "content", None)
    if not refs and isinstance(content, list):
        for b in content:
            try:
                found = block_image(b)
            except ops.ToolInputError:  # one unreadable block does not hide the others
                continue
            if found is not None:
                refs.append(found)
    return refs


def _attached_something(message: Any) -> bool:
    """Whether the user attached images to this message, readable or not."""
    if "retllm_attachments" in (getattr(message, "additional_kwargs", None) or {}):
        return True
    content = getattr(message, "content", None)
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") in ("image_url", "image") for b in content
    )


def attached_image(messages: Iterable[Any], n: int | None = None) -> bytes | str | None:
    """Image ``n`` (1-based; default the last) of the latest human message that attached images."""
    for m in reversed(list(messages)):
        if getattr(m, "type", None) != "human":
            continue
        found = attachments(m)
        if not found and _attached_something(m):  # never fall back to an older image behind the user's back
            raise ops.ToolInputError("the image attached to the latest message could not be read; ask for it again")
        if found:
            if n is None:
                return found[-1]
            if not 1 <= n <= len(found):
                raise ops.ToolInputError(f"image='attached:{n}': the user attached {len(found)} image(s)")
            return found[n - 1]
    return None


_ATTACHED = re.compile(r"^attached(?::(\d+))?$")


def thread_of(runtime: Any) -> str | None:
    """The conversation a tool call runs in (its checkpointer thread id), if any."""
    config = getattr(runtime, "config", None) or {}
    thread = (config.get("configurable") or {}).get("thread_id")
    return None if thread is None else str(thread)


def _keeper(deps: Deps, runtime: Any) -> Callable[[bytes], str]:
    """Where a query image fetched or sent inline is kept for this call: with the conversation's attachments
    (bounded, deleted with it), so the results' reference outlives the call and nothing piles up."""
    store = AttachmentStore.of(deps.settings)
    thread = thread_of(runtime)
    return lambda data: store.keep(thread, data)


def keep_attachment(deps: Deps, thread: str | None, data: bytes) -> str:
    """Attached image bytes, checked, kept for ``thread`` in the attachment store (bounded, apart from the blobs
    items reference, deleted with the conversation); the file's path."""
    store = AttachmentStore.of(deps.settings)
    return ops.keep_checked(deps, data, keep=lambda b: store.keep(thread, b))


def _resolve_image(deps: Deps, image: str | None, like: int | None, runtime: Any) -> tuple[str | None, str | None]:
    """(image reference, text of the liked hit) for a search: a path/URL, the attached image, or an earlier hit."""
    msgs = _messages(runtime)
    liked_text = None
    if like is not None:
        prev = last_results(msgs)
        if prev is None:
            raise ops.ToolInputError("like: there is no earlier search in this conversation to pick a result from")
        hit = next((h for h in prev.hits if h.rank == like), None)
        if hit is None:
            ranks = ", ".join(str(h.rank) for h in prev.hits) or "none"
            raise ops.ToolInputError(f"like={like}: the previous search has no result with that rank (ranks: {ranks})")
        if image is not None:
            raise ops.ToolInputError("give either image or like, not both")
        if hit.image is None:
            liked_text = hit.text
        image = hit.image
    elif image is not None and (m := _ATTACHED.match(image.strip().lower())):
        found = attached_image(msgs, int(m.group(1)) if m.group(1) else None)
        if found is None:
            raise ops.ToolInputError(f"image={image!r} but no image is attached in this conversation")
        image = keep_attachment(deps, thread_of(runtime), found) if isinstance(found, bytes) else found
        if AttachmentStore.of(deps.settings).owns(image) and not Path(image).is_file():
            raise ops.ToolInputError(
                "that attached image is no longer kept (attachments are removed past their age and size limits): "
                "ask the user to attach it again"
            )
    return image, liked_text


def _stored(deps: Deps, image: str | None, like: int | None) -> bool:
    """Whether a search's image is ours rather than the caller's: an earlier hit, or a kept attachment (read as
    stored data, not confined to the request roots)."""
    return like is not None or AttachmentStore.of(deps.settings).owns(image)


# --- the tools ------------------------------------------------------------------------------------------------

MULTIMODAL_SEARCH = (
    "Search the image and text collection and get results ranked by a visual judge that looks at every candidate "
    "(a multimodal LLM scores each one). Search with words, an image, or both. To refine, call again: add words "
    "or a filter ('only the ones at night'), or use like=N for results similar to result N of the last search. "
    "Results carry ids, scores (0-1, the judge's probability of a match) and image references. With min_score, "
    "an empty result means nothing matches well: say so plainly, do not offer weak matches as matches."
)
COARSE_SEARCH = (
    "First stage of retrieval: the k items whose embeddings are most similar to the query (text, image, or "
    "both). Fast, but not judged: the scores are cosine similarities."
)
ADD_ITEMS = "Add images and/or texts to a collection (created when missing). Bad items are skipped and reported."
DELETE_ITEMS = "Delete items from a collection by id."
DELETE_ASKS = " The user is asked to confirm first; nothing is deleted without their yes."

Deletes = Literal["ask", "refuse", "allow"]
"""How ``delete_items`` treats a call: ``ask`` the user first (a LangGraph ``interrupt``: the graph needs a
checkpointer), ``refuse`` it (a front end that cannot ask), or ``allow`` it at once (inputs you trust)."""

REFUSED_DELETE = (
    "delete_items needs the user's confirmation, which this conversation cannot ask for (it is not kept: the "
    "OpenAI-compatible route); nothing was deleted. The user can delete from the web page, retllm chat or the API."
)
LIST_COLLECTIONS = "List the collections with their item counts and vector sizes."


def _cancel(runtime: Any) -> threading.Event | None:
    """The run's cancel event (``Context.cancel``: set when the caller has gone), if it has one."""
    found = getattr(getattr(runtime, "context", None), "cancel", None)
    return found if isinstance(found, threading.Event) else None


def multimodal_search_tool(deps: Deps | None = None) -> BaseTool:
    resolve = _resolver(deps)

    def multimodal_search(runtime: ToolRuntime = None, **kwargs: Any) -> tuple[str, dict[str, Any]]:  # type: ignore[assignment]
        d = resolve(runtime)
        args = _args(SearchArgs, kwargs)
        image, liked_text = _resolve_image(d, args.image, args.like, runtime)
        if liked_text is not None:  # a text-only hit: search with its text (an item's text may be a document)
            query = " ".join(x for x in (args.query, liked_text) if x)[:MAX_QUERY_CHARS]
            args = args.model_copy(update={"query": query})
        ref = ops.query_image_ref(d, image, fine=True, stored=_stored(d, image, args.like), keep=_keeper(d, runtime))
        writer = getattr(runtime, "stream_writer", None)
        out = ops.search(d, args, ref, on_event=writer if callable(writer) else None, cancel=_cancel(runtime))
        return ops.summary(out), out.model_dump(mode="json")

    return _make(multimodal_search, "multimodal_search", MULTIMODAL_SEARCH, SearchArgs)


def coarse_search_tool(deps: Deps | None = None) -> BaseTool:
    resolve = _resolver(deps)

    def coarse_search(runtime: ToolRuntime = None, **kwargs: Any) -> tuple[str, dict[str, Any]]:  # type: ignore[assignment]
        d = resolve(runtime)
        args = _args(CoarseSearchArgs, kwargs)
        image, _ = _resolve_image(d, args.image, None, runtime)
        ref = ops.query_image_ref(
            d, image, fine=not d.coarse_only, stored=_stored(d, image, None), keep=_keeper(d, runtime)
        )
        out = ops.coarse_search(d, args, ref, cancel=_cancel(runtime))
        return ops.summary(out), out.model_dump(mode="json")

    return _make(coarse_search, "coarse_search", COARSE_SEARCH, CoarseSearchArgs)


def revisit_image_tool(deps: Deps | None = None) -> BaseTool:
    """The revisit tool of the retrieval graph. The pair comes from the call's id (``t<key>:...``, set by the scoring
    node) and the call is checked against that pair's candidate by :func:`check_revisit`, as the library loop
    checks it; the scoring node then shows the view to the MLLM."""
    resolve = _resolver(deps)

    def revisit_image(runtime: ToolRuntime = None, **kwargs: Any) -> tuple[str, dict[str, Any]]:  # type: ignore[assignment]
        if kwargs.get("arguments_error"):  # the model's arguments were not JSON (found by the scoring node)
            raise ops.ToolInputError(str(kwargs["arguments_error"]))
        state = getattr(runtime, "state", None)

        def field(name: str) -> Any:
            return state.get(name) if isinstance(state, dict) else getattr(state, name, None)

        cands = field("candidates") or []
        key = (field("calls") or {}).get(str(getattr(runtime, "tool_call_id", "") or ""))
        if isinstance(key, int) and 0 <= key < len(cands):
            c = cands[key]  # the pair whose model made the call (recorded by the scoring node)
        else:  # called outside the scoring loop: the candidate named in the call
            c = next((x for x in cands if x["id"] == str(kwargs.get("candidate_id"))), None)
            if c is None:
                raise ops.ToolInputError(f"unknown candidate id {kwargs.get('candidate_id')!r}")
        cand = Candidate(c["id"], c.get("text"), c.get("image"), c.get("coarse_score", 0.0))
        box = check_revisit(cand, kwargs, resolve(runtime).settings.image_limits)
        where = f", zoomed to {box}" if box else ""
        return f"Candidate {cand.id} image{where}.", {"candidate_id": cand.id, "image": cand.image, "box": box}

    return _make(revisit_image, REVISIT_TOOL, REVISIT_DESCRIPTION, RevisitArgs)


def add_items_tool(deps: Deps | None = None) -> BaseTool:
    resolve = _resolver(deps)

    def add_items(runtime: ToolRuntime = None, **kwargs: Any) -> tuple[str, dict[str, Any]]:  # type: ignore[assignment]
        out = ops.add_items(resolve(runtime), _args(AddItemsArgs, kwargs))
        text = f"Added {out.added} item(s) to {out.collection!r}; {out.already_present} already present."
        if out.skipped:
            text += " Skipped: " + "; ".join(f"{s['item']}: {s['reason']}" for s in out.skipped)
        return text, out.model_dump(mode="json")

    return _make(add_items, "add_items", ADD_ITEMS, AddItemsArgs)


def delete_items_tool(deps: Deps | None = None, *, deletes: Deletes = "allow") -> BaseTool:
    """``delete_items``; with ``deletes="ask"`` a call pauses the graph with the pending action (``action``,
    ``collection``, ``ids`` that exist, ``missing``) and resumes with ``{"approved": bool, "ids": [...]}``: only
    the approved ids that were asked for are deleted."""
    resolve = _resolver(deps)

    def delete_items(runtime: ToolRuntime = None, **kwargs: Any) -> tuple[str, dict[str, Any]]:  # type: ignore[assignment]
        d = resolve(runtime)
        args = _args(DeleteItemsArgs, kwargs)
        if deletes == "refuse":
            raise ops.ToolInputError(REFUSED_DELETE)
        if deletes == "ask":
            name = ops.collection_name(d, args.collection)
            present = sorted(d.get_index().existing(name, list(args.ids)))
            if present:  # nothing to delete needs no yes
                missing = [i for i in args.ids if i not in set(present)]
                pending = {"action": "delete_items", "collection": name, "ids": present, "missing": missing}
                answer = interrupt(pending)
                approved = set(answer.get("ids") or []) if isinstance(answer, dict) and answer.get("approved") else None
                if approved is None:
                    return (
                        f"The user did not confirm: nothing was deleted from {name!r}.",
                        {"collection": name, "deleted": 0, "missing": missing, "declined": present},
                    )
                args = args.model_copy(update={"ids": [i for i in args.ids if i in approved], "collection": name})
        out = ops.delete_items(d, args)
        text = f"Deleted {out.deleted} item(s) from {out.collection!r}."
        if out.missing:
            text += f" Not found: {', '.join(out.missing[:20])}."
        return text, out.model_dump(mode="json")

    description = DELETE_ITEMS + (DELETE_ASKS if deletes == "ask" else "")
    return _make(delete_items, "delete_items", description, DeleteItemsArgs)


def list_collections_tool(deps: Deps | None = None) -> BaseTool:
    resolve = _resolver(deps)

    def list_collections(runtime: ToolRuntime = None) -> tuple[str, dict[str, Any]]:  # type: ignore[assignment]
        out = ops.list_collections(resolve(runtime))
        text = "; ".join(f"{c.name} ({c.items} items)" for c in out.collections) or "no collections yet"
        return text, out.model_dump(mode="json")

    return _make(list_collections, "list_collections", LIST_COLLECTIONS, NoArgs)


def build_tools(deps: Deps | None = None, *, write: bool = False, deletes: Deletes = "ask") -> list[BaseTool]:
    """The tools a larger agent uses: ``multimodal_search`` and ``list_collections``, read-only (a model that
    reads item text can be steered by it); with ``write``, ``add_items`` and ``delete_items`` too, a delete
    treated as ``deletes`` says (:data:`Deletes`)."""
    tools = [multimodal_search_tool(deps), list_collections_tool(deps)]
    if write:
        tools += [add_items_tool(deps), delete_items_tool(deps, deletes=deletes)]
    return tools
