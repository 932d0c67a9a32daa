"""The OpenAI fake as a chat model: SSE streaming, a scripted chat model, and a scorer that revisits forever."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from langchain_openai import ChatOpenAI

from tests.fakes.openai_server import EXHAUSTED, ChatScript, Switches, fake_openai, tool_call

HI = [{"role": "user", "content": "hi"}]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="x", max_retries=0)


def search_images(query: str, k: int = 3) -> str:
    """Search the image index."""
    return ""


def _reassemble(chunks: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += tc.id or ""
            call["name"] += (tc.function.name or "") if tc.function else ""
            call["arguments"] += (tc.function.arguments or "") if tc.function else ""
    return calls


def test_openai_client_streams_scripted_content_with_usage() -> None:
    text = "A red car parked on a wet street."
    with fake_openai(Switches(chat_script=ChatScript([{"content": text}] * 2))) as fake:
        chunks = list(
            _client(fake.url).chat.completions.create(
                model="chat-model", messages=HI, stream=True, stream_options={"include_usage": True}
            )
        )
        assert chunks[0].object == "chat.completion.chunk" and chunks[0].choices[0].delta.role == "assistant"
        pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
        assert len(pieces) > 2 and "".join(pieces) == text
        assert chunks[-2].choices[0].finish_reason == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
        plain = list(_client(fake.url).chat.completions.create(model="chat-model", messages=HI, stream=True))
        assert all(c.choices and c.usage is None for c in plain)
        assert [b["stream"] for b in fake.chat_requests] == [True, True] and fake.pair_requests == []


def test_openai_client_streams_scripted_tool_call() -> None:
    call = tool_call("search_images", {"query": "red car", "k": 2}, id="call_1")
    with fake_openai(Switches(chat_script=ChatScript([call]))) as fake:
        chunks = list(_client(fake.url).chat.completions.create(model="chat-model", messages=HI, stream=True))
    assert _reassemble(chunks) == {
        0: {"id": "call_1", "name": "search_images", "arguments": call["function"]["arguments"]}
    }
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls) > 2  # arguments came in pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("streaming", [True, False])
def test_langchain_chat_openai_gets_scripted_tool_calls(streaming: bool) -> None:
    def answer(body: dict[str, Any]) -> dict[str, Any]:
        return {"content": f"{len(body['messages'])} messages seen"}

    script = ChatScript([tool_call("search_images", {"query": "red car", "k": 2}, id="call_a"), answer])
    with fake_openai(Switches(chat_script=script)) as fake:
        llm = ChatOpenAI(model="chat-model", base_url=fake.url, api_key="x", streaming=streaming, max_retries=0)
        bound = llm.bind_tools([search_images])
        first = bound.invoke("find a red car")
        assert first.tool_calls == [
            {"name": "search_images", "args": {"query": "red car", "k": 2}, "id": "call_a", "type": "tool_call"}
        ]
        assert first.response_metadata["finish_reason"] == "tool_calls"
        assert bound.invoke(["hi", "again"]).content == "2 messages seen"
        assert llm.invoke("more").content == EXHAUSTED
    assert [b.get("stream") for b in script.bodies] == [streaming] * 3
    assert script.bodies[0]["tools"][0]["function"]["name"] == "search_images"


def test_fault_switches_hit_streaming_requests_before_the_script() -> None:
    script = ChatScript([{"content": "hello"}])
    with fake_openai(Switches(fail_5xx=1, chat_script=script)) as fake:
        with pytest.raises(openai.InternalServerError):
            list(_client(fake.url).chat.completions.create(model="chat-model", messages=HI, stream=True))
        assert script.bodies == []
        chunks = list(_client(fake.url).chat.completions.create(model="chat-model", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "hello"


def test_scorer_streams_logprobs_on_the_first_content_chunk() -> None:
    ask = {"model": "fake-vlm", "messages": HI, "logprobs": True, "top_logprobs": 2}
    with fake_openai() as fake:
        whole = _client(fake.url).chat.completions.create(**ask)
        chunks = list(_client(fake.url).chat.completions.create(**ask, stream=True))
    first = next(c.choices[0] for c in chunks if c.choices[0].delta.content)
    assert first.delta.content == whole.choices[0].message.content
    assert first.logprobs.model_dump() == whole.choices[0].logprobs.model_dump()
    assert len(first.logprobs.content[0].top_logprobs) == 2


def test_revisit_forever_calls_revisit_without_tools() -> None:
    earlier = tool_call("revisit_image", {"candidate_id": "c7", "box": [0, 0, 1, 1]})
    history = [*HI, {"role": "assistant", "content": None, "tool_calls": [earlier]}]
    history.append({"role": "tool", "tool_call_id": earlier["id"], "content": "here"})
    schema = {"type": "object", "properties": {"candidate_id": {"type": "string", "enum": ["c3"]}}}
    tools = [{"type": "function", "function": {"name": "revisit_image", "parameters": schema}}]
    with fake_openai(Switches(revisit_forever=True)) as fake:
        client = _client(fake.url)
        cids = []
        for kwargs in ({"messages": history}, {"messages": HI}, {"messages": HI, "tools": tools}):
            choice = client.chat.completions.create(model="fake-vlm", **kwargs).choices[0]
            assert (
                choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "revisit_image"
            )
            cids.append(json.loads(choice.message.tool_calls[0].function.arguments)["candidate_id"])
        streamed = list(client.chat.completions.create(model="fake-vlm", messages=history, stream=True))
        assert json.loads(_reassemble(streamed)[0]["arguments"])["candidate_id"] == "c7"
        probe = [{"role": "user", "content": "Capability check from the retllm scorer: answer True."}]
        assert client.chat.completions.create(model="fake-vlm", messages=probe).choices[0].message.tool_calls is None
    assert cids == ["c7", "unknown", "c3"] and fake.forever_calls == 4
