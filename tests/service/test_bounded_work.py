"""Bounded work per request (issue 18, item 3) on a real served app: query text is bounded at the request model on
every face, a client that leaves cancels its request's remaining model work on every model-running route (REST,
SSE chat, the OpenAI route streamed and not), and only the image formats we accept are decoded."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import ValidationError

from tests.agent.conftest import ingest
from tests.data_gen import EPS_BYTES
from tests.fakes.openai_server import ChatScript, Switches, fake_openai, tool_call
from tests.service.conftest import running, service_env

LONG = "a red bicycle at night " * 100  # 2,300 characters


def wait_until(done: Callable[[], bool], what: str, tries: int = 600) -> None:
    """Poll ``done`` (bounded: ``tries`` x 0.05 s) until it holds."""
    for _ in range(tries):
        if done():
            return
        time.sleep(0.05)
    raise AssertionError(f"still waiting for {what}")


def hang_up_after(url: str, path: str, body: dict[str, Any], until: Callable[[], bool]) -> None:
    """POST ``body`` to ``path`` over a raw connection, wait until ``until()`` holds, then close the connection
    without reading the answer: a client that leaves while its request runs."""
    where = urlsplit(url)
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    with socket.create_connection((where.hostname, where.port)) as s:
        s.sendall(head.encode() + data)
        wait_until(until, "the request's first pair")


def test_query_text_is_bounded_on_every_face(cli_env, scene_images) -> None:
    script = ChatScript([tool_call("multimodal_search", {"query": LONG}), {"content": "too long, sorry"}])
    with fake_openai(Switches(chat_script=script)) as fake:
        env = service_env(cli_env, fake)
        ingest(env, scene_images)
        with running(env) as (url, _):
            for kwargs in ({"json": {"query": LONG}}, {"files": [("query", (None, LONG))]}):  # JSON, multipart
                r = httpx.post(f"{url}/search", **kwargs, timeout=60)
                assert r.status_code == 422, r.text
                assert "the query is 2,300 characters; at most 2,000 are taken" in r.json()["detail"]
            # the chat model cannot pass a longer query to its search tool: it is told why, nothing is scored
            with httpx.stream("POST", f"{url}/chat", json={"message": "find it"}, timeout=60) as r:
                events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: ")]
            assert any("at most 2,000 are taken" in str(e) for e in events), events
            assert fake.pair_requests == []
            assert httpx.post(f"{url}/search", json={"query": LONG[:2000]}, timeout=60).status_code == 200
            # an EPS named .png is refused by its format, before any plugin (Ghostscript) reads it
            r = httpx.post(f"{url}/items", files=[("image", ("x.png", EPS_BYTES))], timeout=60)
            assert r.status_code == 200 and r.json()["added"] == 0
            assert "accepted formats: JPEG, PNG" in r.json()["skipped"][0]["reason"]
    from retllm.tools.schemas import MAX_QUERY_CHARS, SearchArgs

    with pytest.raises(ValidationError, match="at most 2,000 are taken"):  # the LangChain and MCP tools' model
        SearchArgs(query=LONG)
    assert SearchArgs.model_json_schema()["properties"]["query"]["anyOf"][0]["maxLength"] == MAX_QUERY_CHARS


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("search", "/search", {"query": "a street", "k": 5}),
    ("chat", "/chat", {"message": "find a street", "thread_id": "left"}),
    ("openai", "/v1/chat/completions", {"messages": [{"role": "user", "content": "find a street"}]}),
    (
        "openai-stream",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "find a street"}], "stream": True},
    ),
]


@pytest.mark.slow  # four routes through a served app, 0.5 s a request on the wire
def test_a_client_that_leaves_cancels_the_remaining_model_work(cli_env, scene_images: list[Path]) -> None:
    search = tool_call("multimodal_search", {"query": "a street", "k": 5, "top": 5})
    answer = {"content": "here you are"}
    script = ChatScript([search, answer, search, search])  # chat (+ its next turn), openai, openai streamed
    with fake_openai(Switches(chat_script=script, delay=0.5)) as fake:  # each request on the wire takes 0.5 s
        env = service_env(cli_env, fake, RETLLM_OPENAI_CONCURRENCY="1")  # a search's 5 pairs go one by one
        ingest(env, scene_images)
        with running(env) as (url, svc):
            for route, path, body in ROUTES:
                before, turns = len(fake.pair_requests), len(script.bodies)
                hang_up_after(url, path, body, until=lambda b=before: len(fake.pair_requests) > b)
                wait_until(lambda: svc.gate.depth == 0 and fake.in_flight == 0, f"{route}: the request to end")
                sent = len(fake.pair_requests) - before
                assert 1 <= sent <= 2, f"{route}: {sent} of the search's 5 pairs were sent after its client left"
                assert len(script.bodies) == turns + (route != "search"), route  # no further chat model turn
                r = httpx.post(f"{url}/search", json={"query": "a street", "k": 2}, timeout=60)  # served at once
                assert r.status_code == 200 and len(r.json()["hits"]) == 2
                assert len(fake.pair_requests) == before + sent + 2
                if route == "chat":  # the conversation is free again, and what it kept is a valid conversation
                    r = httpx.post(f"{url}/chat", json={"message": "and now?", "thread_id": "left"}, timeout=60)
                    assert r.status_code == 200 and "here you are" in r.text
                    asked = script.bodies[-1]["messages"]
                    calls = {c["id"] for m in asked if m["role"] == "assistant" for c in m.get("tool_calls") or []}
                    assert calls <= {m.get("tool_call_id") for m in asked if m["role"] == "tool"}, asked


def test_more_like_a_long_text_hit_searches_with_at_most_the_bound(tmp_path: Path, embedder) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode
    from retllm.tools.deps import Deps
    from retllm.tools.langchain_tools import multimodal_search_tool
    from retllm.tools.schemas import HitOut, SearchOut

    from retllm.index.edge import EdgeIndex
    from retllm.ingest import Ingestor
    from retllm.settings import Settings
    from retllm.types import Item

    document = "a long document about red bicycles " * 2000  # an item's text: 70,000 characters
    index = EdgeIndex(tmp_path / "edge")
    Ingestor(embedder, index, "docs").add([Item(id="d1", text=document), Item(id="d2", text="a short note")])
    deps = Deps(
        Settings(data_dir=tmp_path / "data", collection="docs"), embedder=embedder, index=index, coarse_only=True
    )
    earlier = SearchOut(
        collection="docs",
        query="bicycles",
        k=2,
        hits=[HitOut(rank=1, id="d1", score=None, coarse_score=0.9, text=document)],
    )
    call = {"name": "multimodal_search", "args": {"query": "bicycles"}, "id": "s1"}
    history = [
        HumanMessage("bicycles"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("1. id=d1", tool_call_id="s1", name="multimodal_search", artifact=earlier.model_dump(mode="json")),
    ]
    g = StateGraph(MessagesState)
    g.add_node("tools", ToolNode([multimodal_search_tool(deps)]))
    g.add_edge(START, "tools")
    more = AIMessage("", tool_calls=[{"name": "multimodal_search", "args": {"like": 1, "k": 2}, "id": "s2"}])
    out = g.compile().invoke({"messages": [*history, more]})["messages"][-1]
    index.close()
    assert out.status == "success", out.content
    assert len(out.artifact["query"]) == 2000 and document.startswith(out.artifact["query"])  # MAX_QUERY_CHARS
