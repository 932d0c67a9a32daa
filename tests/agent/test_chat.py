"""Chat-style search: a scripted chat model (served by the local OpenAI-compatible server, streamed or not) calls
multimodal_search across turns; the conversation is checkpointed in SQLite and survives a reopen."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from retllm.agent.chat import build_chat_graph, chat_db, make_chat_model, open_checkpointer
from retllm.agent.context import Context

from tests.agent.conftest import deps_from, ingest
from tests.e2e.cli import run
from tests.fakes.openai_server import ChatScript, Switches, fake_openai, tool_call


def _manifest(tmp_path: Path, images: list[Path]) -> Path:
    times = ["night", "day", "night", "day", "night"]
    lines = [
        json.dumps({"id": f"scene{i}", "image": str(p), "text": f"a street scene {i}", "time": times[i]})
        for i, p in enumerate(images)
    ]
    m = tmp_path / "items.jsonl"
    m.write_text("\n".join(lines) + "\n")
    return m


def _tool_text(body: dict[str, Any]) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "tool")


def _echo_top(body: dict[str, Any]) -> dict[str, Any]:
    """The scripted model's answer: the top id it read in the tool result (so the test sees what it was shown)."""
    text = _tool_text(body)
    m = re.search(r"1\. id=(\S+)", text)
    return {"content": f"Best match: {m.group(1)}" if m else f"Nothing matches. ({text[:60]})"}


def _env(cli_env: dict[str, str], fake_url: str, **extra: str) -> dict[str, str]:
    return {
        **cli_env,
        "RETLLM_SCORER": "openai:fake-vlm",
        "RETLLM_OPENAI_BASE_URL": fake_url,
        "OPENAI_API_KEY": "k",
        "RETLLM_CHAT_MODEL": "openai:chat-model",
        "RETLLM_CHAT_BASE_URL": fake_url,
        **extra,
    }


def _tool_messages(state: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in state["messages"] if isinstance(m, ToolMessage)]


@pytest.mark.parametrize("streaming", [False, True])
def test_chat_refines_across_turns_and_survives_a_reopened_checkpoint(
    cli_env, scene_images, tmp_path, streaming
) -> None:
    attachment = scene_images[3].read_bytes()
    script = ChatScript(
        [
            tool_call("multimodal_search", {"query": "a street", "k": 5, "top": 5}),
            _echo_top,
            # "only the ones at night": a payload filter
            tool_call("multimodal_search", {"query": "a street", "filter": {"time": "night"}, "k": 5}),
            _echo_top,
            # "more like the second one": resolved from the last results in state, not from the model's memory
            tool_call("multimodal_search", {"like": 2, "k": 5}),
            _echo_top,
            # an attached image
            tool_call("multimodal_search", {"image": "attached", "k": 3}),
            _echo_top,
            # nothing good enough: an honest empty answer
            tool_call("multimodal_search", {"query": "a unicorn", "k": 5, "min_score": 0.999}),
            _echo_top,
        ]
    )
    with fake_openai(Switches(chat_script=script)) as fake:
        env = _env(cli_env, fake.url)
        ingest(env, [_manifest(tmp_path, scene_images)])
        with deps_from(env) as deps:
            model = make_chat_model(deps.settings)
            model.streaming = streaming
            cfg = {"configurable": {"thread_id": "t1"}}

            def turn(msg: HumanMessage) -> dict[str, Any]:
                saver = open_checkpointer(chat_db(deps.settings))  # a fresh connection per turn: a restart
                try:
                    g = build_chat_graph(deps, model=model, checkpointer=saver)
                    return g.invoke({"messages": [msg]}, cfg, context=Context(deps=deps))
                finally:
                    saver.conn.close()

            s1 = turn(HumanMessage("find street scenes"))
            s2 = turn(HumanMessage("only the ones at night"))
            s3 = turn(HumanMessage("more like the second one"))
            url = "data:image/png;base64," + base64.b64encode(attachment).decode()
            s4 = turn(
                HumanMessage([{"type": "text", "text": "like this"}, {"type": "image_url", "image_url": {"url": url}}])
            )  # noqa: E501
            s5 = turn(HumanMessage("a unicorn please"))
    first = _tool_messages(s1)[-1].artifact
    assert len(first["hits"]) == 5 and s1["messages"][-1].content == f"Best match: {first['hits'][0]['id']}"
    # The second turn's request carries the first turn's conversation: the checkpoint was reopened from disk.
    roles = [m["role"] for m in script.bodies[2]["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    night = _tool_messages(s2)[-1].artifact
    assert night["hits"] and all(h["payload"]["time"] == "night" for h in night["hits"])
    liked = _tool_messages(s3)[-1].artifact
    second = next(h for h in night["hits"] if h["rank"] == 2)
    assert liked["image"] == second["image"] and second["id"] in [h["id"] for h in liked["hits"]]
    attached = _tool_messages(s4)[-1].artifact
    assert Path(attached["image"]).read_bytes() == attachment and "scene3" in [h["id"] for h in attached["hits"]]
    nothing = _tool_messages(s5)[-1]
    assert nothing.artifact["hits"] == [] and "nothing in the collection matches well" in nothing.content
    assert s5["messages"][-1].content.startswith("Nothing matches.")
    assert len(s5["messages"]) == 20 and script.exhausted


def test_chat_tool_errors_go_back_to_the_model(cli_env, scene_images, tmp_path) -> None:
    script = ChatScript(
        [
            tool_call("multimodal_search", {"query": "x", "k": 0}),
            tool_call("multimodal_search", {"like": 3}),
            tool_call("multimodal_search", {"query": "x", "collection": "nope"}),
            {"content": "I could not search."},
        ]
    )
    with fake_openai(Switches(chat_script=script)) as fake:
        env = _env(cli_env, fake.url)
        ingest(env, scene_images[:2])
        with deps_from(env) as deps:
            g = build_chat_graph(deps)
            out = g.invoke({"messages": [HumanMessage("search")]}, context=Context(deps=deps))
    errs = [m for m in _tool_messages(out)]
    assert [m.status for m in errs] == ["error"] * 3
    assert "k: Input should be greater than or equal to 1" in errs[0].content
    assert "no earlier search" in errs[1].content and "no collection 'nope'" in errs[2].content
    assert out["messages"][-1].content == "I could not search."


@pytest.mark.slow  # three CLI processes: CI's slow pass
def test_retllm_chat_cli_resumes_a_thread(cli_env, scene_images, tmp_path) -> None:
    script = ChatScript(
        [
            tool_call("multimodal_search", {"query": "a street", "k": 4, "top": 3}),
            _echo_top,
            tool_call("multimodal_search", {"like": 1, "k": 4, "top": 2}),
            _echo_top,
            tool_call("multimodal_search", {"image": "attached", "k": 2}),
            _echo_top,
        ]
    )
    with fake_openai(Switches(chat_script=script)) as fake:
        env = {**_env(cli_env, fake.url), "COLUMNS": "200"}
        ingest(env, scene_images)
        r1 = run(["chat", "-m", "find street scenes"], env)
        assert r1.returncode == 0, r1.stderr
        thread = re.search(r"thread (\w+)", r1.stderr).group(1)
        r2 = run(["chat", "--thread", thread, "-m", "more like the first one"], env)
        assert r2.returncode == 0, r2.stderr
        r3 = run(["chat", "--image", str(scene_images[4]), "-m", "like this"], env)
        assert r3.returncode == 0, r3.stderr
    assert "result(s) from 'default'" in r1.stdout and "Best match:" in r1.stdout
    # Stage progress, live (one line per event when stderr is not a terminal).
    assert "coarse: 4 candidate(s)" in r1.stderr and "scored 4/4" in r1.stderr
    assert "resumed, 4 messages" in r2.stderr and "Best match:" in r2.stdout
    assert [m["role"] for m in script.bodies[2]["messages"]][:5] == ["system", "user", "assistant", "tool", "assistant"]
    assert "attached an image" in script.bodies[4]["messages"][-1]["content"]
    assert "Best match:" in r3.stdout


def test_an_inline_image_is_not_copied_into_every_checkpoint(cli_env, scene_images, tmp_path) -> None:
    import numpy as np
    from PIL import Image
    from retllm.agent.chat import prepare_messages

    big = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(big)
    data, small = big.read_bytes(), scene_images[1].read_bytes()
    assert len(data) > 1_000_000
    steps = [tool_call("multimodal_search", {"image": "attached:2", "k": 2}), _echo_top, *[{"content": "ok"}] * 3]
    script = ChatScript(steps + [tool_call("multimodal_search", {"image": "attached", "k": 2}), _echo_top])
    with fake_openai(Switches(chat_script=script)) as fake:
        env = _env(cli_env, fake.url)
        ingest(env, scene_images[:2])
        with deps_from(env) as deps:
            db = chat_db(deps.settings)
            saver = open_checkpointer(db)
            g = build_chat_graph(deps, checkpointer=saver)
            cfg = {"configurable": {"thread_id": "big"}}

            def url(b: bytes) -> str:
                return "data:image/png;base64," + base64.b64encode(b).decode()

            blocks = [
                {"type": "image_url", "image_url": {"url": url(small)}},
                {"type": "text", "text": "not this one, the second:"},
                {"type": "image_url", "image_url": {"url": url(data)}},
            ]
            # Unprepared (as langgraph dev sends it): the graph's middleware slims it for every later checkpoint.
            first = g.invoke({"messages": [HumanMessage(blocks)]}, cfg, context=Context(deps=deps))
            sizes = []
            for text in ("and now?", "more", "thanks"):
                g.invoke({"messages": [HumanMessage(text)]}, cfg, context=Context(deps=deps))
                saver.conn.commit()
                sizes.append(db.stat().st_size)
            state = g.get_state(cfg).values
            # Prepared by the front end (CLI, service): not even the first checkpoint holds the base64.
            before = db.stat().st_size
            msgs = prepare_messages([HumanMessage([{"type": "text", "text": "this"}, blocks[2]])], deps)
            again = g.invoke(
                {"messages": msgs}, {"configurable": {"thread_id": "prepared"}}, context=Context(deps=deps)
            )
            saver.conn.commit()
            prepared_growth = db.stat().st_size - before
            saver.conn.close()
    stored = state["messages"][0]
    assert len(stored.additional_kwargs["retllm_attachments"]) == 2 and "base64" not in str(stored.content)
    texts = [b["text"] for b in stored.content if b["type"] == "text"]
    assert texts[:3] == ["[attached image 1]", "not this one, the second:", "[attached image 2]"]  # order kept
    assert Path(_tool_messages(first)[-1].artifact["image"]).read_bytes() == data  # 'attached:2' was the second
    growth = [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
    assert max(growth) < 100_000  # later turns do not copy the megabytes again
    assert prepared_growth < 300_000 and Path(_tool_messages(again)[-1].artifact["image"]).read_bytes() == data
    sent = json.dumps(script.bodies[1]["messages"])  # what the chat model saw of the first message
    assert "not this one, the second:" in sent and "attached:N" in sent and "base64" not in sent


def test_an_unreadable_attachment_never_falls_back_to_an_older_image(tmp_path) -> None:
    from langchain_core.messages import AIMessage
    from retllm.agent.chat import prepare_messages
    from retllm.tools.deps import Deps
    from retllm.tools.langchain_tools import attached_image
    from retllm.tools.ops import ToolInputError

    from retllm.settings import Settings

    deps = Deps(Settings(data_dir=tmp_path))
    not_an_image = "data:image/png;base64," + base64.b64encode(b"these bytes are no image").decode()
    older = HumanMessage([{"type": "image_url", "image_url": {"url": "https://example.org/old.jpg"}}])
    broken = HumanMessage(
        [{"type": "text", "text": "use THIS"}, {"type": "image_url", "image_url": {"url": not_an_image}}]
    )
    msgs = prepare_messages([older, AIMessage("ok"), broken], deps)
    assert "could not be read" in str(msgs[-1].content) and "attached:N" not in str(msgs[-1].content)
    with pytest.raises(ToolInputError, match="latest message could not be read"):
        attached_image(msgs)
    assert attached_image(msgs[:2]) == "https://example.org/old.jpg"
    assert list(tmp_path.rglob("*")) == []  # nothing written for bytes that are not an image


def _text_items(tmp_path: Path, ids: list[str]) -> Path:
    m = tmp_path / "texts.jsonl"
    m.write_text("".join(json.dumps({"id": i, "text": f"a street scene {i}"}) + "\n" for i in ids))
    return m


def _ids(env: dict[str, str]) -> set[str]:
    with deps_from(env) as deps:
        index = deps.get_index()
        return set(index.existing("default", ["a", "b", "c"]))


def test_a_chat_delete_waits_for_a_yes_and_a_new_message_does_not_skip_it(cli_env, tmp_path) -> None:
    from retllm.agent.chat import ConfirmationError, pending_actions, turn_events

    delete = tool_call("delete_items", {"ids": ["a", "zz"]})
    script = ChatScript([delete, {"content": "no tool"}, delete, {"content": "kept"}, delete, {"content": "gone"}])
    with fake_openai(Switches(chat_script=script)) as fake:
        env = _env(cli_env, fake.url)
        ingest(env, [_text_items(tmp_path, ["a", "b", "c"])])
        with deps_from(env) as deps:
            # read-only by default: the tool is not there, a call made anyway is an error, nothing is deleted
            out = build_chat_graph(deps).invoke({"messages": [HumanMessage("delete a")]}, context=Context(deps=deps))
            assert _tool_messages(out)[0].status == "error" and "not a valid tool" in _tool_messages(out)[0].content
            assert deps.get_index().existing("default", ["a"]) == {"a"}
            saver = open_checkpointer(chat_db(deps.settings))
            try:
                g = build_chat_graph(deps, checkpointer=saver, write_tools=True)
                ev = list(turn_events(g, deps, "t", [HumanMessage("delete a")]))
                assert ev == [
                    ("confirm", {"action": "delete_items", "collection": "default", "ids": ["a"], "missing": ["zz"]})
                ]
                assert pending_actions(g, "t") == [ev[0][1]] and deps.get_index().existing("default", ["a"]) == {"a"}
                with pytest.raises(ConfirmationError, match="waits for the user to confirm: delete 1 item"):
                    list(turn_events(g, deps, "t", [HumanMessage("something else")]))
                ev = list(turn_events(g, deps, "t", [], confirm=False))
                assert ev == [("answer", "kept")] and deps.get_index().existing("default", ["a"]) == {"a"}
                with pytest.raises(ConfirmationError, match="nothing waits"):
                    list(turn_events(g, deps, "t", [], confirm=True))
                assert [k for k, _ in turn_events(g, deps, "t", [HumanMessage("delete a, really")])] == ["confirm"]
                assert list(turn_events(g, deps, "t", [], confirm=True)) == [("answer", "gone")]
                assert deps.get_index().existing("default", ["a", "b"]) == {"b"}
            finally:
                saver.conn.close()
    told = [m["content"] for b in script.bodies for m in b["messages"] if m["role"] == "tool"]
    assert "The user did not confirm: nothing was deleted from 'default'." in told
    assert "Deleted 1 item(s) from 'default'." in told


@pytest.mark.slow  # CLI processes: CI's slow pass
def test_retllm_chat_asks_on_the_terminal_and_refuses_without_one(cli_env, tmp_path) -> None:
    import os
    import subprocess

    from tests.e2e.cli import RETLLM

    script = ChatScript(
        [tool_call("delete_items", {"ids": ["a"]}), _echo_tool, tool_call("delete_items", {"ids": ["b"]}), _echo_tool]
    )
    with fake_openai(Switches(chat_script=script)) as fake:
        env = {**_env(cli_env, fake.url), "RETLLM_CHAT_WRITE_TOOLS": "true", "COLUMNS": "200"}
        ingest(env, [_text_items(tmp_path, ["a", "b", "c"])])
        r = run(["chat", "-m", "delete a"], env)  # -m: no terminal to ask on, so no
        assert r.returncode == 0, r.stderr
        assert "wants to delete 1 item(s) from 'default': a" in r.stderr and "Not confirmed" in r.stderr
        assert "nothing was deleted" in r.stdout and _ids(env) == {"a", "b", "c"}
        leader, follower = os.openpty()  # a terminal: the user types the message, then y
        try:
            p = subprocess.Popen(
                [RETLLM, "chat"], stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
            os.write(leader, b"delete b\ny\n\x04")
            stdout, stderr = p.communicate(timeout=180)
        finally:
            os.close(follower)
            os.close(leader)
    assert p.returncode == 0, stderr.decode()
    assert "Delete? [y/N]" in stderr.decode() and "Deleted 1 item(s) from 'default'." in stdout.decode()
    assert _ids(env) == {"a", "c"}


def _echo_tool(body: dict[str, Any]) -> dict[str, Any]:
    return {"content": f"Tool said: {_tool_text(body)}"}
