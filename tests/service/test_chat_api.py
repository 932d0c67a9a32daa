"""Chat over HTTP: SSE turns that refine across a thread and survive a restart; the OpenAI-compatible endpoint
driven by the real ``openai`` client, streamed and not."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx
import openai
import pytest

from tests.agent.conftest import ingest
from tests.fakes.openai_server import ChatScript, Switches, _images, fake_openai, tool_call
from tests.service.conftest import TOKEN, running, service_env


def _echo_top(body: dict[str, Any]) -> dict[str, Any]:
    text = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "tool")
    m = re.search(r"1\. id=(\S+)", text)
    return {"content": f"Best match: {m.group(1)}" if m else f"Nothing matches. ({text[:60]})"}


def sse_events(r: httpx.Response) -> list[tuple[str, Any]]:
    out, kind = [], None
    for line in r.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            out.append((kind, json.loads(line[6:])))
    return out


def chat(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[tuple[str, Any]]:
    with httpx.stream("POST", f"{url}/chat", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_events(r)


def test_chat_streams_stages_results_and_answer_refines_and_survives_a_restart(cli_env, scene_images) -> None:
    script = ChatScript(
        [
            tool_call("multimodal_search", {"image": "attached", "query": "a street", "k": 5, "top": 5}),
            _echo_top,
            tool_call("multimodal_search", {"like": 2, "k": 5, "top": 3}),
            _echo_top,
        ]
    )
    with fake_openai(Switches(chat_script=script)) as fake:
        env = service_env(cli_env, fake)
        ingest(env, scene_images)
        photo = "data:image/png;base64," + base64.b64encode(scene_images[3].read_bytes()).decode()
        with running(env) as (url, _):
            ev = chat(url, {"message": "find pictures like this", "images": [photo]})
            kinds = [k for k, _ in ev]
            assert kinds[0] == "thread" and kinds[-1] == "done"
            thread = ev[0][1]["thread_id"]
            stages = [d for k, d in ev if k == "progress" and d["event"] == "stage"]
            assert [s["stage"] for s in stages] == ["coarse", "fine"]
            scored = [d for k, d in ev if k == "progress" and d["event"] == "candidate"]
            assert sorted(d["done"] for d in scored) == [1, 2, 3, 4, 5]
            first = next(d for k, d in ev if k == "search")
            assert len(first["hits"]) == 5 and first["hits"][0]["image"].startswith(url)
            answer = next(d for k, d in ev if k == "answer")
            assert answer == f"Best match: {first['hits'][0]['id']}"
            # the attachment reached the judge as the query image (the first image of every pair request)
            pairs = fake.pair_requests
            assert len(pairs) == 5 and all(_images(b["messages"])[0] == scene_images[3].read_bytes() for b in pairs)
        # a new process on the same data dir: the thread goes on where it stopped
        with running(env) as (url, _):
            threads = httpx.get(f"{url}/chat/threads").json()
            assert [t["thread_id"] for t in threads] == [thread] and threads[0]["title"] == "find pictures like this"
            ev = chat(url, {"thread_id": thread, "message": "more like the second one"})
            second = next(d for k, d in ev if k == "search")
            assert len(second["hits"]) == 3
            assert next(d for k, d in ev if k == "answer") == f"Best match: {second['hits'][0]['id']}"
            turns = httpx.get(f"{url}/chat/threads/{thread}").json()["turns"]
            assert [t["role"] for t in turns] == ["user", "search", "assistant", "user", "search", "assistant"]
            assert turns[0]["images"] == 1 and turns[3]["text"] == "more like the second one"
            assert [h["id"] for h in turns[4]["search"]["hits"]] == [h["id"] for h in second["hits"]]
            assert httpx.get(f"{url}/chat/threads/nope").status_code == 404
    # the follow-up's request to the chat model carried the first turn (read back from SQLite)
    assert [m["role"] for m in script.bodies[2]["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]


def test_chat_bad_requests_and_errors_as_events(cli_env, scene_images) -> None:
    script = ChatScript(
        [
            tool_call("multimodal_search", {"query": "x", "collection": "nope"}),
            {"content": "sorry"},
        ]
    )
    with fake_openai(Switches(chat_script=script)) as fake:
        env = service_env(cli_env, fake)
        ingest(env, scene_images[:2])
        with running(env) as (url, _):
            for body, msg in [
                ({"message": ""}, "message"),
                ({"message": "x", "thread_id": "../../etc"}, "thread_id"),
                ({"message": "x", "thread_id": ".."}, "only dots"),
                ({"message": "x", "images": ["file:///etc/passwd"]}, "images[0]"),
                ({"message": "x", "images": ["/etc/passwd"]}, "images[0]"),
            ]:
                r = httpx.post(f"{url}/chat", json=body)
                assert r.status_code == 422 and msg in r.json()["detail"], r.text
            ev = chat(url, {"message": "search please"})
            assert [d for k, d in ev if k == "search_error"][0].startswith("no collection 'nope'")
            assert [d for k, d in ev if k == "answer"] == ["sorry"]
            # attached URLs are fetched by us, through the guard, before anything runs: a private address is
            # refused, and neither the chat model's server nor the judge ever sees a caller's URL
            seen = len(fake.requests)
            for target in ("http://169.254.169.254/latest/meta-data/x.png", "http://127.0.0.1:9/x.png"):
                r = httpx.post(f"{url}/chat", json={"message": "like this", "images": [target]})
                assert r.status_code == 400 and "images[0]: URL refused" in r.json()["detail"], r.text
            assert len(fake.requests) == seen
    # the chat model's server gone: an error event, not a hung stream
    env["RETLLM_CHAT_BASE_URL"] = "http://127.0.0.1:9/v1"
    with fake_openai(Switches()) as fake2:
        env["RETLLM_OPENAI_BASE_URL"] = fake2.url
        with running(env) as (url, _):
            ev = chat(url, {"message": "hello"})
            assert ev[-1][0] == "error" and ev[-1][1]["message"]


@pytest.mark.parametrize("streaming", [False, True])
def test_openai_compatible_endpoint_with_the_openai_client(cli_env, scene_images, streaming) -> None:
    script = ChatScript([tool_call("multimodal_search", {"query": "a street", "k": 5, "top": 3}), _echo_top])
    with fake_openai(Switches(chat_script=script)) as fake:
        env = service_env(cli_env, fake)
        ingest(env, scene_images)
        with running(env, api_token=TOKEN) as (url, _):
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN)
            assert [m.id for m in client.models.list()] == ["retllm"]
            msgs = [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": [{"type": "text", "text": "street scenes please"}]},
            ]
            if streaming:
                parts = client.chat.completions.create(model="retllm", messages=msgs, stream=True)
                text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
            else:
                res = client.chat.completions.create(model="retllm", messages=msgs)
                text = res.choices[0].message.content
                assert res.choices[0].finish_reason == "stop"
            top = re.search(r"Best match: (\S+)", text).group(1)
            thumbs = re.findall(r"!\[result (\d)\]\(<([^>]+)>\)", text)
            assert [n for n, _ in thumbs] == ["1", "2", "3"] and top in text.split("![result 1]")[1].split("\n")[0]
            # Markdown images load without the token: the links are signed
            assert httpx.get(thumbs[0][1]).status_code == 200
            tampered = thumbs[0][1].replace("size=256", "size=255")  # a valid size, but not the one signed
            assert httpx.get(tampered).status_code == 401
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-token-000000000").models.list()
            with pytest.raises(openai.UnprocessableEntityError):
                client.chat.completions.create(model="retllm", messages=[{"role": "assistant", "content": "hi"}])


def test_a_second_turn_on_a_busy_thread_is_refused(cli_env, scene_images) -> None:
    import threading
    import time

    def slow(body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(1.5)
        return {"content": "done"}

    script = ChatScript([slow, {"content": "second"}])
    with fake_openai(Switches(chat_script=script)) as fake:
        env = service_env(cli_env, fake)
        ingest(env, scene_images[:2])
        with running(env) as (url, _):
            first: list[Any] = []
            t = threading.Thread(target=lambda: first.extend(chat(url, {"thread_id": "t1", "message": "one"})))
            t.start()
            time.sleep(0.5)
            r = httpx.post(f"{url}/chat", json={"thread_id": "t1", "message": "two"})
            assert r.status_code == 409 and "still answering" in r.json()["detail"]
            t.join()
            assert ("answer", "done") in first
            # once the first turn is over, the thread takes the next one
            assert ("answer", "second") in chat(url, {"thread_id": "t1", "message": "two"})


def test_history_keeps_the_users_words_and_drops_only_the_attachment_notes(scene_images, tmp_path) -> None:
    from langchain_core.messages import HumanMessage
    from retllm.agent.chat import slim_attachments
    from retllm.agent.service.chat_api import _text
    from retllm.tools.deps import Deps

    from retllm.settings import Settings

    url = "data:image/png;base64," + base64.b64encode(scene_images[0].read_bytes()).decode()
    words = {"type": "text", "text": "(night) a street"}
    msg = HumanMessage([words, {"type": "image_url", "image_url": {"url": url}}], id="m1")
    (slim,) = slim_attachments([msg], Deps(Settings(data_dir=tmp_path)))
    assert len(slim.content) > 2 and _text(slim.content) == "(night) a street"


def test_openai_endpoint_odd_content_upstream_failures_and_url_images(cli_env, scene_images, tmp_path) -> None:
    from PIL import Image

    from tests.fakes.http_files import serve_folder

    Image.open(scene_images[4]).save(tmp_path / "q.png")
    script = ChatScript([tool_call("multimodal_search", {"image": "attached", "k": 3, "top": 2}), _echo_top])
    with fake_openai(Switches(chat_script=script)) as fake, serve_folder(tmp_path) as files:
        env = service_env(cli_env, fake, RETLLM_ALLOWED_URL_NETWORKS="127.0.0.1")
        ingest(env, scene_images)
        with running(env) as (url, _):
            post = lambda body: httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)  # noqa: E731
            for content, status in [
                ([{"type": "image_url", "image_url": {"url": 5}}], 422),
                ([{"type": "text", "text": 5}], 422),
                ([{"type": "audio", "data": "x"}], 422),
                ([{"type": "image_url", "image_url": "file:///etc/passwd"}], 422),
                ([{"type": "image_url", "image_url": "http://10.0.0.7:6333/collections"}], 400),
            ]:
                r = post({"messages": [{"role": "user", "content": content}]})
                assert r.status_code == status and r.json()["detail"], (content, r.status_code, r.text)
            assert not fake.chat_requests  # none of those reached the chat model
            # the bare-string image_url form; an allowed URL is fetched by us and sent on as data, never as a URL
            part = {"type": "image_url", "image_url": f"{files}/q.png"}
            r = post({"messages": [{"role": "user", "content": [{"type": "text", "text": "like this"}, part]}]})
            assert r.status_code == 200, r.text
            assert "Best match:" in r.json()["choices"][0]["message"]["content"]
            assert files not in json.dumps(fake.requests)
            assert all(_images(b["messages"])[0] == (tmp_path / "q.png").read_bytes() for b in fake.pair_requests)
        env["RETLLM_CHAT_BASE_URL"] = "http://127.0.0.1:9/v1"  # the chat model's server is down
        with running(env) as (url, _):
            r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 502 and "chat model's server failed" in r.json()["detail"], r.text


def test_two_turns_sent_together_on_one_thread_one_is_refused(cli_env, scene_images) -> None:
    import threading
    import time

    def slow(body: dict[str, Any]) -> dict[str, Any]:
        time.sleep(1.0)
        return {"content": "ok"}

    script = ChatScript([slow, slow, slow])
    with fake_openai(Switches(chat_script=script)) as fake:
        env = service_env(cli_env, fake)
        ingest(env, scene_images[:2])
        with running(env, serve_workers=1) as (url, _):
            other = threading.Thread(target=lambda: chat(url, {"thread_id": "other", "message": "busy"}))
            other.start()  # holds the only worker, so both turns below wait in the queue at once
            time.sleep(0.3)
            codes: list[int] = []

            def send() -> None:
                r = httpx.post(f"{url}/chat", json={"thread_id": "t1", "message": "hi"}, timeout=60)
                codes.append(r.status_code)

            pair = [threading.Thread(target=send) for _ in range(2)]
            for t in pair:
                t.start()
            for t in pair + [other]:
                t.join()
    assert sorted(codes) == [200, 409]


def test_openai_replies_escape_item_text_and_cap_images(cli_env, scene_images) -> None:
    script = ChatScript([tool_call("multimodal_search", {"query": "x", "k": 2, "top": 2}), {"content": "here"}])
    with fake_openai(Switches(chat_script=script)) as fake:
        env = service_env(cli_env, fake)
        with running(env) as (url, _):
            evil = "![](http://attacker.example/pixel) [click](javascript:alert(1)) `x`"
            items = [{"id": "e[v](il)", "text": evil}, {"id": "plain", "text": "a street"}]
            assert httpx.post(f"{url}/items", json={"items": items}).json()["added"] == 2
            r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
            text = r.json()["choices"][0]["message"]["content"]
            assert "](http://attacker" not in text and "](javascript" not in text and "e\\[v\\]\\(il\\)" in text
            part = {"type": "image_url", "image_url": "data:image/png;base64,AAAA"}
            r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": [part] * 9}]})
            assert r.status_code == 422 and "at most 8 images" in r.json()["detail"]
