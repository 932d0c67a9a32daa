"""``retllm chat``: the terminal front end of the chat graph (live stage progress, results as tables)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage
from retllm.agent.chat import (
    ATTACHED_NOTE,
    build_chat_graph,
    chat_db,
    open_checkpointer,
    pending_actions,
    turn_events,
)
from retllm.tools.deps import Deps
from retllm.tools.langchain_tools import keep_attachment
from retllm.tools.schemas import SearchOut
from rich.console import Console
from rich.table import Table

from retllm.errors import BadItemError, RetllmError
from retllm.settings import Settings

out = Console()
err = Console(stderr=True)


def _lines(messages: list[str] | None) -> Iterator[str]:
    if messages:
        yield from messages
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            err.print("[bold]you>[/bold] ", end="")
        line = sys.stdin.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()


def results_table(res: SearchOut) -> Table:
    t = Table(title=f"{len(res.hits)} result(s) from {res.collection!r}" + (f" by {res.scorer}" if res.scorer else ""))
    for col in ("rank", "id", "score", "method", "was", "revisits", "text", "image"):
        t.add_column(col, overflow="fold")
    for h in res.hits:
        t.add_row(
            str(h.rank),
            h.id[:12],
            "" if h.score is None else f"{h.score:.3f}",
            h.method or "",
            f"#{h.coarse_rank}" if h.coarse_rank else "",
            str(h.revisits or 0),
            (h.text or "")[:40],
            Path(h.image).name if h.image else "",
        )
    return t


def _progress(event: dict[str, Any]) -> str | None:
    kind = event.get("event")
    if kind == "stage":
        return f"{event['stage']}: {event['n']} candidate(s)"
    if kind == "candidate":
        score = event.get("score")
        shown = "not scored" if score is None else f"{score:.3f} ({event.get('method')})"
        return f"scored {event['done']}/{event['of']}: {event['id'][:12]} {shown}"
    if kind == "revisit":
        return f"revisit {event['status']}: {event['id'][:12]} {event.get('box') or ''}".rstrip()
    return None


def _human(text: str, image: str | None) -> HumanMessage:
    if image is None:
        return HumanMessage(content=text)
    return HumanMessage(content=f"{text}\n{ATTACHED_NOTE}", additional_kwargs={"retllm_attachments": [image]})


def run_turn(
    graph: Any, deps: Deps, thread: str, message: HumanMessage | None, *, confirm: bool | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Send one message (or, with ``confirm``, the answer to what waits); show progress and result tables as they
    come; returns the model's answer and the actions that now wait for the user's confirmation."""
    answer, pending = "", []
    with err.status("thinking...") as status:
        for kind, data in turn_events(graph, deps, thread, [message] if message else [], confirm=confirm):
            if kind == "progress":
                line = _progress(data)
                if line:
                    status.update(line)
                    if not err.is_terminal:  # no spinner to update (a log, a pipe): one line per event
                        err.print(line, highlight=False, markup=False)
            elif kind == "search_error":
                err.print(f"search refused: {data}", highlight=False, markup=False)
            elif kind == "search":
                out.print(results_table(data))
            elif kind == "confirm":
                pending.append(data)
            elif kind == "answer":
                answer = data
    return answer, pending


def ask(actions: list[dict[str, Any]], interactive: bool) -> bool:
    """The user's yes or no to ``actions``, asked on the terminal; without one (``-m``, piped input): no."""
    for a in actions:
        ids = list(a.get("ids") or [])
        shown = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
        line = f"The assistant wants to delete {len(ids)} item(s) from {a.get('collection')!r}: {shown}"
        if a.get("missing"):
            line += f" (not found: {', '.join(a['missing'][:20])})"
        err.print(line, highlight=False, markup=False)
    if not interactive:
        err.print("Not confirmed: confirming needs a terminal (-m and piped input are never taken as a yes).")
        return False
    err.print("Delete? [y/N] ", end="", markup=False, highlight=False)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def run_chat(
    settings: Settings, *, thread: str | None = None, image: Path | None = None, messages: Iterable[str] | None = None
) -> None:
    thread = thread or uuid.uuid4().hex[:12]
    deps = Deps(settings)
    saver = open_checkpointer(chat_db(settings))
    given = list(messages) if messages else None
    interactive = given is None and sys.stdin.isatty()
    try:
        graph = build_chat_graph(deps, checkpointer=saver)
        previous = graph.get_state({"configurable": {"thread_id": thread}}).values.get("messages", [])
        err.print(
            f"thread {thread}" + (f" (resumed, {len(previous)} messages)" if previous else "") + "; resume with: "
            f"retllm chat --thread {thread}",
            highlight=False,
        )
        attach = None
        if image is not None:
            try:
                attach = keep_attachment(deps, thread, image.read_bytes())
            except OSError as e:
                raise BadItemError(f"--image {image}: {e.strerror or e}") from e
            except RetllmError as e:  # not an image, too large
                raise BadItemError(f"--image {image}: {e}") from e
        pending = pending_actions(graph, thread)  # left waiting by an earlier run: answered before anything else
        answer = ""
        while pending:
            answer, pending = run_turn(graph, deps, thread, None, confirm=ask(pending, interactive))
        if answer:
            out.print(answer, highlight=False, markup=False)
        for text in _lines(given):
            answer, pending = run_turn(graph, deps, thread, _human(text, attach))
            attach = None  # attached to the first message only
            while pending:
                if answer:
                    out.print(answer, highlight=False, markup=False)
                answer, pending = run_turn(graph, deps, thread, None, confirm=ask(pending, interactive))
            out.print(answer, highlight=False, markup=False)
        err.print(f"thread {thread}", highlight=False)
    finally:
        saver.conn.close()
        deps.close()
