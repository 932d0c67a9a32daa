"""Progress events with one small vocabulary, shown alike by the CLI, the agent's stream and the service.

Every event is a JSON-ready dict with an ``event`` key:

- ``stage``: ``{"stage": "coarse", "n": hits}`` when the coarse search is done; ``{"stage": "fine", "n":
  pairs}`` when scoring starts;
- ``candidate``: one pair scored (``id``, ``score``, ``method``, ``retraced``, ``revisits``, ``done``, ``of``);
- ``revisit``: the model asked to see a candidate again (``status: "requested"``, ``id``, ``box``), or was
  shown it or told why not (``status: "done"`` / ``"error"``);
- ``final``: the ranked hits (``hits``: ``id``, ``rank``, ``score``, ``method``).

The library emits them through a plain callable (``on_event``); the agent passes LangGraph's stream writer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retllm.scorers.turns import ToolCall, Turn
    from retllm.types import Hit

Event = dict[str, Any]
EventSink = Callable[[Event], None]


def stage(name: str, n: int) -> Event:
    return {"event": "stage", "stage": name, "n": n}


def candidate(turn: Turn, done: int, of: int) -> Event:
    s = turn.score
    return {
        "event": "candidate",
        "id": turn.candidate.id,
        "score": s.value if s is not None else None,
        "method": s.method if s is not None else None,
        "retraced": s.retraced if s is not None else None,
        "revisits": turn.revisits,
        "error": s.error if s is not None else None,
        "done": done,
        "of": of,
    }


def scored(turns: Sequence[Turn], was_done: Sequence[bool]) -> list[Event]:
    """The ``candidate`` events of the turns a step just finished (``was_done``: each turn's state before it)."""
    out, n = [], sum(was_done)
    for t, before in zip(turns, was_done, strict=True):
        if t.done and not before:
            n += 1
            out.append(candidate(t, n, len(turns)))
    return out


def revisit(turn: Turn, call: ToolCall, status: str, box: Any = None, error: str | None = None) -> Event:
    out: Event = {"event": "revisit", "status": status, "id": turn.candidate.id, "call": call.id}
    if box is not None:
        out["box"] = box
    if error is not None:
        out["error"] = error
    return out


def final(hits: Sequence[Hit]) -> Event:
    return {
        "event": "final",
        "hits": [{"id": h.id, "rank": h.rank, "score": h.score, "method": h.method} for h in hits],
    }
