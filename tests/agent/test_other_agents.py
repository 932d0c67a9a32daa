"""Other people's agents use our tools: a LangChain `create_agent` agent with `build_tools`, and the same agent
with the MCP server's tools loaded through `langchain-mcp-adapters`.

The agent's chat model is `ChatOpenAI` against the fake OpenAI-compatible server, scripted turn by turn; the same
server scores the pairs (model "fake-vlm"). The answers must agree with `retllm search --json`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.tools import load_mcp_tools
from langchain_openai import ChatOpenAI
from PIL import Image
from retllm.tools.langchain_tools import build_tools

from tests.agent.conftest import cli_search, deps_from, ingest
from tests.e2e.cli import RETLLM, retllm_env
from tests.fakes.openai_server import ChatScript, FakeOpenAI, fake_openai, tool_call

QUERY = "a red square"
K = 3


@dataclass
class Indexed:
    env: dict[str, str]
    fake: FakeOpenAI
    want: list[dict[str, Any]]  # `retllm search QUERY -k K --json`


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, tiny_clip_spec: str) -> Iterator[Indexed]:
    """Five images in a collection built by the CLI once for the module (every process loads the tiny CLIP)."""
    root = tmp_path_factory.mktemp("agents")
    images = []
    for i in range(5):
        arr = np.random.default_rng(50 + i).integers(0, 256, (36 + 6 * i, 48 + 5 * i, 3), dtype=np.uint8)
        arr[:, : 8 + 4 * i, i % 3] = 255
        images.append(root / f"img_{i}.png")
        Image.fromarray(arr).save(images[-1])
    with fake_openai() as fake:
        env = retllm_env(
            root / "data",
            tiny_clip_spec,
            RETLLM_SCORER="openai:fake-vlm",
            RETLLM_OPENAI_BASE_URL=fake.url,
            OPENAI_API_KEY="k",
        )
        ingest(env, images)
        yield Indexed(env, fake, cli_search(env, QUERY, "-k", str(K)))


def _tool_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def echo_top_id(body: dict[str, Any]) -> dict[str, Any]:
    """The scripted model's last turn: it reads the latest tool message it was sent and names the best result."""
    tool_messages = [m for m in body["messages"] if m.get("role") == "tool"]
    found = re.search(r"^1\. id=(\S+)", _tool_text(tool_messages[-1]), re.M) if tool_messages else None
    return {"content": f"The best match is {found.group(1)}." if found else "I found nothing."}


def script(tool: str) -> ChatScript:
    """A bad call (k=0) first, then a good one, then the answer."""
    return ChatScript(
        [tool_call(tool, {"query": QUERY, "k": 0}), tool_call(tool, {"query": QUERY, "k": K}), echo_top_id]
    )


def chat_model(fake: FakeOpenAI, *, streaming: bool = False) -> ChatOpenAI:
    return ChatOpenAI(model="chat-model", base_url=fake.url, api_key="x", streaming=streaming)  # type: ignore[arg-type]


def check_run(messages: list[Any], want: list[dict[str, Any]], chat: ChatScript) -> list[ToolMessage]:
    """The agent recovered from the bad call, searched, and named the CLI's best result; returns the tool messages."""
    tools = [m for m in messages if isinstance(m, ToolMessage)]
    assert [m.status for m in tools] == ["error", "success"]
    assert "k: Input should be greater than or equal to 1" in str(tools[0].content)
    final = messages[-1]
    assert isinstance(final, AIMessage) and final.content == f"The best match is {want[0]['id']}."
    assert chat.exhausted and len(chat.bodies) == 3
    return tools


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "streaming"])
def test_a_langchain_agent_with_our_tools(indexed, streaming) -> None:
    chat = indexed.fake.switches.chat_script = script("multimodal_search")
    with deps_from(indexed.env) as deps:
        agent = create_agent(chat_model(indexed.fake, streaming=streaming), tools=build_tools(deps))
        out = agent.invoke({"messages": [HumanMessage("Find a red square.")]})
    _, found = check_run(out["messages"], indexed.want, chat)
    assert all(bool(b.get("stream")) == streaming for b in chat.bodies)
    hits = found.artifact["hits"]
    assert [(h["id"], h["rank"], h["score"]) for h in hits] == [(h["id"], h["rank"], h["score"]) for h in indexed.want]
    assert all(h["image"] for h in hits)  # references for the caller to show, never bytes in the state


def test_a_langchain_agent_with_our_mcp_server(indexed) -> None:
    chat = indexed.fake.switches.chat_script = script("search")
    connection = {"transport": "stdio", "command": RETLLM, "args": ["mcp"], "env": indexed.env}

    async def run() -> dict[str, Any]:
        client = MultiServerMCPClient({"retllm": connection})  # type: ignore[dict-item]
        async with client.session("retllm") as session:  # one server process for the whole run
            tools = await load_mcp_tools(session)
            assert {t.name for t in tools} == {"search", "add_items", "delete_items", "list_collections"}
            agent = create_agent(chat_model(indexed.fake), tools=tools)
            return await agent.ainvoke({"messages": [HumanMessage("Find a red square.")]})

    out = asyncio.run(run())
    error, found = check_run(out["messages"], indexed.want, chat)
    assert "Server-side failure" not in str(error.content)
    hits = found.artifact["structured_content"]["hits"]
    assert [(h["id"], h["score"]) for h in hits] == [(h["id"], h["score"]) for h in indexed.want]
    assert all(h["resource_uri"].startswith("retllm://default/") for h in hits)
    blocks = found.content
    assert isinstance(blocks, list) and [b["type"] for b in blocks] == ["text"] + ["image"] * K
    assert all(b["mime_type"] in {"image/jpeg", "image/png"} for b in blocks[1:])
    sent = chat.bodies[-1]["messages"]  # what the chat model was shown: the summary and the thumbnails
    assert any(p.get("type") == "image_url" for m in sent if m["role"] == "tool" for p in m["content"])
    assert json.dumps(sent).count(f"1. id={indexed.want[0]['id']}") == 1
