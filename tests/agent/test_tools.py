"""The tools as an agent calls them (through a ToolNode): content + artifact, and every bad argument tried comes
back as an error tool message that says what to fix (the table in docs/agent.md), never as an exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from retllm.tools.deps import Deps
from retllm.tools.langchain_tools import build_tools, coarse_search_tool

from retllm.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "agent.md"

# (tool, arguments, what the error message says): the table in docs/agent.md lists every row.
BAD = [
    ("multimodal_search", {}, "give a query text, an image, or both"),
    ("multimodal_search", {"query": "x", "k": 0}, "k: Input should be greater than or equal to 1"),
    ("multimodal_search", {"query": "x", "top": 0}, "top: Input should be greater than or equal to 1"),
    ("multimodal_search", {"query": "x", "min_score": 1.5}, "min_score: Input should be less than or equal to 1"),
    ("multimodal_search", {"query": "x", "collection": "nope"}, "no collection 'nope'; existing: empty, pets"),
    ("multimodal_search", {"query": "x", "collection": "empty"}, "collection 'empty' is empty"),
    ("multimodal_search", {"query": "x", "vector": "colour"}, "vector: Input should be 'auto', 'image'"),
    ("multimodal_search", {"query": "x", "filter": "time=night"}, "filter: Input should be a valid dictionary"),
    ("multimodal_search", {"query": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ("multimodal_search", {"query": "x", "filter": {"kind": []}}, "filter 'kind': give at least one value"),
    ("multimodal_search", {"query": "x", "filter": {"": "cat"}}, "filter keys must be field names, not empty"),
    ("multimodal_search", {"query": "x", "filter": {"n": 1.5}}, "filter 'n': values are matched exactly"),
    ("multimodal_search", {"query": "x", "filter": {"n": [1, 2**70]}}, "(64-bit), or a list of them; got"),
    ("multimodal_search", {"query": "x", "filter": {"flag": True}}, "the embedded store cannot match true/false"),
    ("multimodal_search", {"image": "data:text/plain;base64,aGk="}, "a data URL must look like data:image/png"),
    ("multimodal_search", {"image": "/no/" + "x" * 5000}, "... (5004 characters)"),
    ("multimodal_search", {"image": "/no/such/file.png"}, "/no/such/file.png"),
    ("multimodal_search", {"image": "attached"}, "no image is attached in this conversation"),
    ("multimodal_search", {"like": 2}, "no earlier search in this conversation"),
    ("multimodal_search", {"like": 0}, "like: Input should be greater than or equal to 1"),
    ("multimodal_search", {"query": "x", "min_score": 0.5}, "min_score needs the visual judge"),
    ("coarse_search", {"query": "x", "k": -3}, "k: Input should be greater than or equal to 1"),
    ("add_items", {"items": []}, "items: List should have at least 1 item"),
    ("add_items", {"items": [{"text": "x"}], "collection": "bad name!"}, "invalid collection name 'bad name!'"),
    ("delete_items", {"ids": ["a"], "collection": "nope"}, "no collection 'nope'"),
    ("delete_items", {"ids": []}, "ids: List should have at least 1 item"),
]


@pytest.fixture
def deps(tmp_path: Path, embedder, candidate_images) -> Any:
    from retllm.index.edge import EdgeIndex
    from retllm.ingest import Ingestor
    from retllm.types import Item

    index = EdgeIndex(tmp_path / "edge")
    Ingestor(embedder, index, "pets").add(
        [
            Item(id=f"p{i}", image=str(p), payload={"kind": "cat" if i % 2 else "dog"})
            for i, p in enumerate(candidate_images)
        ]
    )
    index.ensure_collection("empty", embedder.dim)
    d = Deps(Settings(data_dir=tmp_path / "data", collection="pets"), embedder=embedder, index=index, coarse_only=True)
    yield d
    index.close()


def _run(deps: Deps, calls: list[tuple[str, dict[str, Any]]], history: list[Any] | None = None) -> list[ToolMessage]:
    tools = [*build_tools(deps, write=True, deletes="allow"), coarse_search_tool(deps)]
    g = StateGraph(MessagesState)
    g.add_node("tools", ToolNode(tools))
    g.add_edge(START, "tools")
    msg = AIMessage("", tool_calls=[{"name": n, "args": a, "id": f"c{i}"} for i, (n, a) in enumerate(calls)])
    out = g.compile().invoke({"messages": [*(history or []), msg]})
    return [m for m in out["messages"] if isinstance(m, ToolMessage)][-len(calls) :]


def test_every_bad_argument_becomes_an_error_tool_message(deps) -> None:
    msgs = _run(deps, [(name, args) for name, args, _ in BAD])
    for (name, args, expect), m in zip(BAD, msgs, strict=True):
        assert m.status == "error", (name, args, m.content)
        assert expect in m.content, (name, args, m.content)


def test_the_docs_table_lists_every_bad_argument() -> None:
    text = DOCS.read_text()
    for _, _, expect in BAD:
        assert expect in text, expect


def test_search_tools_return_content_and_artifact(deps, candidate_images) -> None:
    first, listing, coarse = _run(
        deps,
        [
            ("multimodal_search", {"query": "a cat", "k": 4, "top": 3, "filter": {"kind": "cat"}}),
            ("list_collections", {}),
            ("coarse_search", {"image": str(candidate_images[0]), "k": 2}),
        ],
    )
    assert first.status == "success" and first.content.startswith("Results for 'a cat' in 'pets'")
    hits = first.artifact["hits"]
    assert (
        len(hits) == 3 and all(h["payload"]["kind"] == "cat" for h in hits) and [h["rank"] for h in hits] == [1, 2, 3]
    )
    assert all(f"id={h['id']}" in first.content for h in hits)
    assert {c["name"]: c["items"] for c in listing.artifact["collections"]} == {"pets": 6, "empty": 0}
    assert coarse.artifact["hits"][0]["id"] == "p0"  # its own image ranks first
    # "more like the second one" resolves the rank against the last results in the conversation.
    (liked,) = _run(
        deps, [("multimodal_search", {"like": 2, "k": 3})], history=[HumanMessage("cats"), _ai(first), first]
    )
    assert liked.status == "success" and liked.artifact["image"] == hits[1]["image"]
    (bad,) = _run(deps, [("multimodal_search", {"like": 9})], history=[HumanMessage("cats"), _ai(first), first])
    assert bad.status == "error" and "has no result with that rank (ranks: 1, 2, 3)" in bad.content


def _ai(tm: ToolMessage) -> AIMessage:
    return AIMessage("", tool_calls=[{"name": "multimodal_search", "args": {"query": "a cat"}, "id": tm.tool_call_id}])


def test_add_and_delete_items_report_bad_items_and_keep_the_rest(deps, candidate_images, tmp_path) -> None:
    (add,) = _run(
        deps,
        [
            (
                "add_items",
                {
                    "items": [
                        {"text": "a new caption", "id": "t1", "payload": {"kind": "text"}},
                        {"image": str(tmp_path / "missing.png")},
                        {"id": "nothing"},
                        {"image": str(candidate_images[1]), "text": "again"},
                    ],
                    "collection": "fresh",
                },
            )
        ],
    )
    assert add.status == "success" and add.artifact["added"] == 2, add.content
    assert add.artifact["ids"][0] == "t1" and add.artifact["ids"][1] is None and add.artifact["ids"][2] is None
    assert [s["item"] for s in add.artifact["skipped"]] == ["items[1]", "items[2]"]
    assert "missing.png" in add.content and "needs text, an image, or both" in add.content
    (delete,) = _run(deps, [("delete_items", {"ids": ["t1", "ghost"], "collection": "fresh"})])
    assert delete.artifact == {"collection": "fresh", "deleted": 1, "missing": ["ghost"]}


def test_an_inline_image_is_kept_by_reference(deps, candidate_images) -> None:
    import base64

    data = candidate_images[2].read_bytes()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    (m,) = _run(deps, [("multimodal_search", {"image": url, "k": 2})])
    assert m.status == "success" and len(m.artifact["image"]) < 200 and Path(m.artifact["image"]).read_bytes() == data
    assert m.artifact["hits"][0]["id"] == "p2"
