"""The retrieval graph's nodes: each does one step by calling the library. Routing functions sit beside them."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.config import get_stream_writer
from langgraph.runtime import Runtime
from retllm.agent.context import Context, deps_of
from retllm.agent.state import InputState, State
from retllm.tools.deps import Deps
from retllm.tools.schemas import SearchOut

from retllm import events
from retllm.pipeline import candidates_of, finish_rerank
from retllm.scorers.turns import RevisitError, Turn
from retllm.types import Hit, Query

log = logging.getLogger(__name__)

COARSE_CALL = "coarse_search"


def _writer() -> Any:
    try:
        return get_stream_writer()
    except RuntimeError:  # outside a run (a node called directly)
        return lambda _e: None


def _coarse_hits(search: dict[str, Any]) -> list[Hit]:
    out = SearchOut.model_validate(search)
    return [Hit(**h.model_dump()) for h in out.hits]


def _call_id(turn: Turn, call_id: str) -> str:
    """A graph-wide id for a model's tool call (servers number calls per conversation: ids repeat across turns)."""
    return f"t{turn.key}:{call_id}"


class RetrievalNodes:
    """The nodes, bound to the dependencies the graph was built with (``None``: the run's context decides)."""

    def __init__(self, deps: Deps | None = None) -> None:
        self.deps = deps

    def _deps(self, runtime: Runtime[Context]) -> Deps:
        return deps_of(runtime.context, self.deps)

    # --- START -> coarse search ------------------------------------------------------------------------

    def plan_search(self, state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        """Turn the request into a ``coarse_search`` tool call (run by the ToolNode that follows). A thread that is
        reused starts over: the last run's pool, turns and hits are cleared."""
        fresh: dict[str, Any] = {"search": None, "candidates": [], "turns": [], "hits": [], "error": None}
        if state.min_score is not None and self._deps(runtime).get_scorer() is None:
            error = "min_score filters fine scores: it needs the fine stage (a scorer, not coarse-only)"
            return {**fresh, "error": error}
        args: dict[str, Any] = {"k": state.k, "vector": state.vector}
        for key in ("query", "image", "collection", "filter"):
            if getattr(state, key) is not None:
                args[key] = getattr(state, key)
        call = {"name": COARSE_CALL, "args": args, "id": f"coarse-{uuid.uuid4().hex[:8]}", "type": "tool_call"}
        return {**fresh, "messages": [AIMessage(content="", tool_calls=[call])]}

    # --- score <-> revisit ---------------------------------------------------------------------------------

    def score(self, state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        """Open a turn per coarse candidate (first visit), apply the revisit answers (later visits), then step
        every ready turn once: local models finish every turn, endpoints may ask to revisit images."""
        deps = self._deps(runtime)
        scorer = deps.get_scorer()
        emit = _writer()
        update: dict[str, Any] = {}
        if state.search is None:  # first visit: the coarse search just answered
            tm = _last_tool_message(state)
            assert tm is not None and isinstance(tm.artifact, dict)
            search = tm.artifact
            hits = _coarse_hits(search)
            emit(events.stage("coarse", len(hits)))
            cands = candidates_of(hits)
            update["search"] = search
            update["candidates"] = [
                {"id": c.id, "text": c.text, "image": c.image, "coarse_score": c.coarse_score} for c in cands
            ]
            if scorer is None or not hits:
                return update
            emit(events.stage("fine", len(hits)))
            turns = scorer.open_turns(Query(text=search.get("query"), image=search.get("image")), cands)
        else:
            turns = [t.model_copy(deep=True) for t in state.turns]
            self._apply_answers(state, turns, emit)
        assert scorer is not None
        was = [t.done for t in turns]
        scorer.step(turns)
        for event in events.scored(turns, was):
            emit(event)
        calls: list[dict[str, Any]] = []
        owners: dict[str, int] = {}
        for t in turns:
            for call in t.pending:  # every call goes through the ToolNode, in call order, bad ones included
                gid = _call_id(t, call.id)
                try:
                    args = call.args()
                except RevisitError as e:  # not even JSON: the tool answers with this error
                    args = {"arguments_error": str(e)}
                emit(events.revisit(t, call, "requested", box=args.get("box")))
                calls.append({"name": call.name, "args": args, "id": gid, "type": "tool_call"})
                owners[gid] = t.key
        update["turns"] = turns
        update["calls"] = owners
        if calls:
            update["messages"] = [AIMessage(content="", tool_calls=calls)]
        return update

    def _apply_answers(self, state: State, turns: list[Turn], emit: Any) -> None:
        """Give each turn the ToolNode's answers to its pending revisit calls."""
        answers = {m.tool_call_id: m for m in _tool_messages_since_last_call(state)}
        for t in turns:
            for call in list(t.pending):
                m = answers.get(_call_id(t, call.id))
                if m is None:
                    t.answer(call.id, error="the tool call got no answer")
                elif m.status == "error" or not isinstance(m.artifact, dict):
                    t.answer(call.id, error=str(m.content).removeprefix("Error: "))
                    emit(events.revisit(t, call, "error", error=str(m.content)))
                elif m.artifact.get("candidate_id") != t.candidate.id:  # a view of another pair's image: never
                    other = m.artifact.get("candidate_id")
                    error = f"unknown candidate id {other!r}; this pair's candidate is {t.candidate.id!r}"
                    t.answer(call.id, error=error)
                    emit(events.revisit(t, call, "error", error=error))
                else:
                    t.answer(call.id, box=m.artifact.get("box"))
                    emit(events.revisit(t, call, "done", box=t.transcript[-1].get("view")))

    # --- rank -> END ----------------------------------------------------------------------------------------

    def rank(self, state: State, runtime: Runtime[Context]) -> dict[str, Any]:
        """Final order: fine scores with provenance (what ``Retriever.rerank`` does), or the coarse order."""
        deps = self._deps(runtime)
        scorer = deps.get_scorer()
        assert state.search is not None
        hits = _coarse_hits(state.search)
        if scorer is not None and hits:
            scores = [scorer.finalize(t) for t in state.turns]
            min_score = state.min_score if state.min_score is not None else deps.settings.min_score
            hits = finish_rerank(hits, scores, min_score=min_score)
        hits = hits[: state.top] if state.top else hits
        _writer()(events.final(hits))
        return {"hits": hits, **_input_defaults()}

    def failed(self, state: State) -> dict[str, Any]:
        """The request was refused (the coarse search's arguments, or options that exclude each other): end with
        the reason as the error."""
        tm = _last_tool_message(state)
        error = state.error or (str(tm.content) if tm is not None else "the coarse search failed")
        _writer()({"event": "final", "hits": [], "error": error})
        return {"error": error, "hits": [], **_input_defaults()}


def _input_defaults() -> dict[str, Any]:
    """The request fields at their defaults: a thread that is reused with a partial dict input starts from these,
    not from the last request's options (the resolved request stays in ``search``)."""
    return {f.name: f.default for f in dataclasses.fields(InputState)}


def _last_tool_message(state: State) -> ToolMessage | None:
    for m in reversed(state.messages):
        if isinstance(m, ToolMessage):
            return m
    return None


def _tool_messages_since_last_call(state: State) -> list[ToolMessage]:
    out: list[ToolMessage] = []
    for m in reversed(state.messages):
        if isinstance(m, AIMessage):
            break
        if isinstance(m, ToolMessage):
            out.append(m)
    return out


# --- routing ---------------------------------------------------------------------------------------------------


def request_refused(state: State) -> bool:
    """Did planning refuse the request (options that exclude each other)?"""
    return state.error is not None


def coarse_failed(state: State) -> bool:
    """Did the coarse search answer with an error (bad arguments, unknown or empty collection)?"""
    tm = _last_tool_message(state)
    return tm is None or tm.status == "error"


def needs_revisit(state: State) -> str:
    """Where scoring goes next: the revisit tool (pending calls), another step (ready turns), or the ranking."""
    if any(t.pending for t in state.turns):
        return "revisit"
    if any(not t.done for t in state.turns):
        return "score"
    return "rank"
