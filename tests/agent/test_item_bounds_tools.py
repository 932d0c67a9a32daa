"""The same item bounds through the agent faces: the LangChain add_items tool and MCP add_items skip an item
whose payload the store could not read back, add the others, and the collection opens after a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, ToolMessage
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from retllm.tools.deps import Deps
from retllm.tools.langchain_tools import add_items_tool

from retllm.index.edge import EdgeIndex
from retllm.settings import Settings


def nest(n: int) -> dict[str, Any]:
    v: dict[str, Any] = {"a": 1}
    for _ in range(n - 1):
        v = {"a": v}
    return v


ITEMS = [
    {"id": "ok", "text": "a good item", "payload": {"kind": "x"}},
    {"id": "deep", "text": "a bad item", "payload": nest(125)},
    {"id": "big", "text": "a bad item", "payload": {"n": 2**64}},
]


def _deps(root: Path, embedder: Any) -> Deps:
    return Deps(Settings(data_dir=root / "data"), embedder=embedder, index=EdgeIndex(root / "edge"), coarse_only=True)


def _reopened(root: Path) -> list[str]:
    index = EdgeIndex(root / "edge")
    try:
        return sorted(r.id for r in index.scroll("c"))
    finally:
        index.close()


def _check(skipped: list[dict[str, str]]) -> None:
    reasons = {s["item"]: s["reason"] for s in skipped}
    assert set(reasons) == {"items[1]", "items[2]"}
    assert "nested more than 16 levels deep" in reasons["items[1]"]
    assert "does not fit in 64 bits" in reasons["items[2]"]


def test_the_langchain_tool_skips_a_payload_the_store_could_not_read_back(tmp_path: Path, embedder) -> None:
    deps = _deps(tmp_path, embedder)
    g = StateGraph(MessagesState)
    g.add_node("tools", ToolNode([add_items_tool(deps)]))
    g.add_edge(START, "tools")
    call = AIMessage("", tool_calls=[{"name": "add_items", "args": {"items": ITEMS, "collection": "c"}, "id": "1"}])
    (msg,) = [m for m in g.compile().invoke({"messages": [call]})["messages"] if isinstance(m, ToolMessage)]
    assert msg.status == "success" and msg.artifact["added"] == 1, msg.content
    _check(msg.artifact["skipped"])
    assert "items[1]: payload is nested more than 16 levels deep" in msg.content
    deps.close()
    assert _reopened(tmp_path) == ["ok"]


def test_mcp_add_items_skips_a_payload_the_store_could_not_read_back(tmp_path: Path, embedder) -> None:
    from mcp.shared.memory import create_connected_server_and_client_session
    from retllm.tools.mcp_server import build_server

    deps = _deps(tmp_path, embedder)

    async def call() -> Any:
        async with create_connected_server_and_client_session(build_server(deps)) as session:
            return await session.call_tool("add_items", {"items": ITEMS, "collection": "c"})

    result = asyncio.run(call())
    assert not result.isError and result.structuredContent["added"] == 1, result.content
    _check(result.structuredContent["skipped"])
    deps.close()
    assert _reopened(tmp_path) == ["ok"]


def test_query_images_sent_inline_or_by_url_are_never_left_in_the_blob_folder(tmp_path: Path, embedder) -> None:
    """Each search by a new image used to keep its bytes in the blob folder for good (a disk-filling loop for
    any MCP caller); MCP searches from memory now, the chat keeps them with the conversation's attachments."""
    import base64
    import io

    from mcp.shared.memory import create_connected_server_and_client_session
    from PIL import Image
    from retllm.tools.langchain_tools import multimodal_search_tool
    from retllm.tools.mcp_server import build_server

    from retllm.ingest import Ingestor
    from retllm.types import Item

    deps = _deps(tmp_path, embedder)
    Ingestor(embedder, deps.get_index(), "default").add([Item(id="t", text="a red square")])

    def data_url(seed: int) -> str:
        buf = io.BytesIO()
        Image.new("RGB", (24, 24), (seed, 10, 10)).save(buf, "PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    async def search(seed: int) -> Any:
        async with create_connected_server_and_client_session(build_server(deps)) as session:
            return await session.call_tool("search", {"image": data_url(seed), "k": 1, "top": 1})

    for seed in range(3):
        result = asyncio.run(search(seed))
        assert not result.isError and result.structuredContent["hits"][0]["id"] == "t", result.content
    g = StateGraph(MessagesState)
    g.add_node("tools", ToolNode([multimodal_search_tool(deps)]))
    g.add_edge(START, "tools")
    call = AIMessage("", tool_calls=[{"name": "multimodal_search", "args": {"image": data_url(9)}, "id": "1"}])
    (msg,) = [m for m in g.compile().invoke({"messages": [call]})["messages"] if isinstance(m, ToolMessage)]
    assert msg.status == "success" and msg.artifact["image"].startswith(str(tmp_path / "data" / "chat_attachments"))
    blobs = tmp_path / "data" / "blobs"
    assert not blobs.exists() or not any(blobs.iterdir())
    deps.close()


def test_mcp_over_http_sends_no_server_path_back(tmp_path: Path, embedder) -> None:
    """Over HTTP the MCP caller is remote: hits' image references and error texts are cut as the service cuts
    them (stdio keeps them: the host runs on this machine); the caller's stored text comes back as stored."""
    from mcp.shared.memory import create_connected_server_and_client_session
    from PIL import Image
    from retllm.tools.mcp_server import build_server

    from retllm.access import AccessSettings
    from retllm.ingest import Ingestor
    from retllm.types import Item

    folder = tmp_path / "secret folder"
    folder.mkdir()
    Image.new("RGB", (20, 20), (200, 0, 0)).save(folder / "red.png")
    deps = _deps(tmp_path, embedder)
    Ingestor(embedder, deps.get_index(), "default").add(
        [Item(id="r", image=str(folder / "red.png"), text="see /usr/share/doc/readme")]
    )

    async def search(access: AccessSettings | None) -> Any:
        async with create_connected_server_and_client_session(build_server(deps, access=access)) as session:
            return await session.call_tool("search", {"query": "red", "k": 1})

    remote = asyncio.run(search(AccessSettings()))
    [hit] = remote.structuredContent["hits"]
    assert hit["image"] == "…/red.png" and hit["text"] == "see /usr/share/doc/readme"
    assert str(tmp_path) not in str(remote.structuredContent) + "".join(
        c.text for c in remote.content if c.type == "text"
    )
    local = asyncio.run(search(None))
    assert local.structuredContent["hits"][0]["image"] == str(folder / "red.png")
    deps.close()
