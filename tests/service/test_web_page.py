"""The web chat page served at ``/``, end to end in headless Chromium against the real service.

The page is driven as a user drives it (upload, paste, type, Enter, click) over a real ``retllm serve`` app with the
scene images ingested and a scripted chat model; what it shows is checked against what the service recorded.
Chromium is Debian's (``shutil.which("chromium")``): missing, the tests skip, unless ``RETLLM_REQUIRE_BROWSER=1``
(CI), where they fail. A full-page screenshot goes to ``tests/artifacts/`` (gitignored) and to ``tmp_path``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent.conftest import ingest
from tests.fakes.openai_server import ChatScript, FakeOpenAI, Switches, fake_openai, tool_call
from tests.service.conftest import TOKEN, running, service_env

pytestmark = pytest.mark.slow  # a browser: CI's slow pass (RETLLM_REQUIRE_BROWSER=1 there)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT_MS = 30_000


def _need_browser(reason: str) -> None:
    if os.environ.get("RETLLM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"RETLLM_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium")
    if chromium is None:
        _need_browser("no chromium on PATH (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need_browser("the playwright package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
        )
        try:
            yield b
        finally:
            b.close()


class Watch:
    """A page's console errors, uncaught exceptions and every request URL it made."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: self.requests.append(r.url))

    def check(self, origin: str, *, allowed: tuple[str, ...] = ()) -> None:
        errors = [e for e in self.errors if not any(a in e for a in allowed)]
        assert errors == [], errors
        outside = [u for u in self.requests if not (u.startswith(origin + "/") or u.startswith(("data:", "blob:")))]
        assert outside == [], outside


@pytest.fixture
def page_of(browser: Any) -> Iterator[Any]:
    contexts = []

    def make(**kw: Any) -> Any:
        ctx = browser.new_context(viewport={"width": 1280, "height": 800}, **kw)
        ctx.set_default_timeout(TIMEOUT_MS)
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    """The scripted model's answer: the top id it read in the last tool result (so the page shows what it saw)."""
    text = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "tool")
    m = re.search(r"1\. id=(\S+)", text)
    return {"content": f"Best match: {m.group(1)}" if m else f"Nothing matches. ({text[:60]})"}


@pytest.fixture
def chat_env(cli_env: dict[str, str], scene_images: list[Path]) -> Iterator[tuple[dict[str, str], FakeOpenAI]]:
    """Like ``scenes_env``, with a chat model scripted for two turns: search by the attached image, then "more
    like the second one"."""
    script = ChatScript(
        [
            tool_call("multimodal_search", {"image": "attached", "query": "a street", "k": 5, "top": 5}),
            _answer,
            tool_call("multimodal_search", {"like": 2, "k": 5}),
            _answer,
        ]
    )
    with fake_openai(Switches(chat_script=script)) as fake:
        env = service_env(cli_env, fake)
        ingest(env, scene_images)
        yield env, fake


def _png(color: tuple[int, int, int], size: tuple[int, int] = (24, 18)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _first_image(messages: list[dict[str, Any]]) -> bytes | None:
    for m in messages:
        for part in m.get("content") if isinstance(m.get("content"), list) else []:
            if part.get("type") == "image_url" and part["image_url"]["url"].startswith("data:"):
                return base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
    return None


def _cards(page: Any, turn: int) -> list[dict[str, Any]]:
    """What the result cards of the ``turn``-th results grid show (0-based)."""
    grid = page.get_by_test_id("results").nth(turn)
    return grid.get_by_test_id("result-card").evaluate_all(
        """cards => cards.map(c => ({
            rank: Number(c.dataset.rank), id: c.dataset.id,
            score: c.querySelector('[data-testid=score]').textContent,
            was: c.querySelector('[data-testid=coarse-rank]')?.textContent ?? null,
            badges: [...c.querySelectorAll('.badges li')].map(b => b.textContent),
            shownId: c.querySelector('[data-testid=result-id]').textContent,
            img: c.querySelector('img[data-testid=thumbnail]')?.getAttribute('src') ?? null,
        }))"""
    )


def _wait_thumbnails_loaded(page: Any, n: int) -> None:
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('[data-testid=result-card] img[data-testid=thumbnail]')];
                  return imgs.length >= n && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
        arg=n,
    )


def _same_as_service(cards: list[dict[str, Any]], hits: list[dict[str, Any]]) -> None:
    assert [c["id"] for c in cards] == [h["id"] for h in hits]
    assert [c["rank"] for c in cards] == list(range(1, len(hits) + 1)) == [h["rank"] for h in hits]
    for c, hit in zip(cards, hits, strict=True):
        assert c["score"] == (f"{hit['score']:.3f}" if hit["score"] is not None else "not judged")
        assert c["was"] == (f"was #{hit['coarse_rank']}" if hit["coarse_rank"] else None)
        assert c["badges"][0] == (hit["method"] if hit["method"] not in (None, "coarse") else "coarse fallback")
        assert c["shownId"] == hit["id"]


def _screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # The whole page in one picture: a viewport as tall as the page, so the sticky header, sidebar and message box
    # sit where a reader expects them (a plain full-page capture leaves them at the first screen's scroll offset).
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": page.evaluate("document.documentElement.scrollHeight")})
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / name), full_page=True)
    page.set_viewport_size(size)
    shutil.copyfile(tmp_path / name, ARTIFACTS / name)
    return ARTIFACTS / name


def _paste_image(page: Any, data: bytes, name: str) -> None:
    """A clipboard paste of an image file into the message box (what Ctrl+V of a screenshot does)."""
    page.get_by_test_id("message-input").evaluate(
        """(ta, [b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: 'image/png' }));
            ta.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true, cancelable: true }));
        }""",
        [base64.b64encode(data).decode(), name],
    )


def test_chat_page_searches_by_an_uploaded_image_follows_up_and_reopens_the_thread(
    chat_env, page_of, scene_images, tmp_path
) -> None:
    from playwright.sync_api import expect

    env, fake = chat_env
    upload = scene_images[3]
    with running(env) as (url, _):
        page = page_of()
        watch = Watch(page)
        page.goto(url + "/")
        expect(page.get_by_test_id("threads-empty")).to_be_visible()
        expect(page.get_by_test_id("auth")).to_be_hidden()  # no token configured: none asked for
        box = page.get_by_test_id("message-input")
        expect(box).to_be_focused()

        # Paste an image, see its preview, remove it with its ×; then upload the real one through the file input.
        _paste_image(page, _png((250, 20, 20)), "pasted.png")
        expect(page.get_by_test_id("attachment")).to_have_count(1)
        assert page.get_by_test_id("attachment").get_attribute("data-name") == "pasted.png"
        page.get_by_role("button", name=re.compile("Remove attachment 1")).click()
        expect(page.get_by_test_id("attachment")).to_have_count(0)
        page.get_by_test_id("file-input").set_input_files(str(upload))
        expect(page.get_by_test_id("attachment")).to_have_count(1)
        preview = page.get_by_test_id("attachment").locator("img").get_attribute("src")
        assert preview == "data:image/png;base64," + base64.b64encode(upload.read_bytes()).decode()

        # Shift+Enter is a new line, Enter sends.
        box.click()
        box.press_sequentially("find street scenes")
        box.press("Shift+Enter")
        box.press_sequentially("like this one")
        assert box.input_value() == "find street scenes\nlike this one"
        box.press("Enter")

        expect(page.get_by_test_id("answer")).to_have_count(1)
        expect(page.get_by_test_id("send")).to_be_enabled()
        expect(page.get_by_test_id("result-card")).to_have_count(5)
        _wait_thumbnails_loaded(page, 5)
        expect(box).to_have_value("")
        expect(page.get_by_test_id("attachment")).to_have_count(0)
        expect(page.get_by_test_id("user-message").first).to_contain_text("find street scenes\nlike this one")
        assert page.get_by_test_id("user-message").first.locator("img").count() == 1

        # The progress showed the stages and every pair scored.
        progress = page.get_by_test_id("progress").first
        steps = progress.get_by_test_id("progress-steps").locator("li").all_text_contents()
        assert steps[0] == "coarse: 5 candidates" and steps[1] == "fine: the judge scores 5 pairs", steps
        assert [s.split(":")[0] for s in steps[2:7]] == [f"scored {i}/5" for i in range(1, 6)], steps
        assert steps[-1] == "ranked 5 results"
        expect(progress.get_by_test_id("progress-scored")).to_have_text("scored 5/5")
        stages = "coarse: 5 candidates → fine: the judge scores 5 pairs → ranked 5 results"
        expect(progress.get_by_test_id("progress-stage")).to_have_text(stages)
        assert progress.locator("progress").evaluate("p => [p.value, p.max]") == [5, 5]

        # What the service recorded for this thread is what the page shows; the chat model named the same top id.
        threads = httpx.get(f"{url}/chat/threads").json()
        assert len(threads) == 1
        tid = threads[0]["thread_id"]
        turns = httpx.get(f"{url}/chat/threads/{tid}").json()["turns"]
        first_hits = next(t for t in turns if t["role"] == "search")["search"]["hits"]
        cards = _cards(page, 0)
        _same_as_service(cards, first_hits)
        assert all(c["img"].startswith(f"{url}/items/") and "size=" in c["img"] for c in cards)
        expect(page.get_by_test_id("answer").first).to_contain_text(f"Best match: {first_hits[0]['id']}")
        # The uploaded file reached the judge as the query image (sent as a data URL, byte for byte).
        assert any(_first_image(b["messages"]) == upload.read_bytes() for b in fake.pair_requests)

        # Clicking a thumbnail opens the full image; Escape closes it.
        page.get_by_test_id("open-image").first.click()
        viewer = page.get_by_test_id("viewer-image")
        expect(viewer).to_be_visible()
        assert viewer.get_attribute("src") == first_hits[0]["image"]
        page.wait_for_function(
            "() => { const i = document.querySelector('#viewer-img'); return i.complete && i.naturalWidth > 0; }"
        )
        page.keyboard.press("Escape")
        expect(page.get_by_test_id("viewer")).to_be_hidden()

        # The conversation list shows the thread, current.
        item = page.get_by_test_id("thread-item")
        expect(item).to_have_count(1)
        assert item.get_attribute("data-thread-id") == tid and item.get_attribute("aria-current") == "true"
        expect(item).to_contain_text("find street scenes")

        # A follow-up in the same thread (the Send button this time).
        box.fill("more like the second one")
        page.get_by_test_id("send").click()
        expect(page.get_by_test_id("answer")).to_have_count(2)
        refused = page.get_by_test_id("notice").all_text_contents()
        assert refused == [], refused  # e.g. "The search was refused: ..." instead of results
        expect(page.get_by_test_id("results")).to_have_count(2)
        _wait_thumbnails_loaded(page, 10)
        turns = httpx.get(f"{url}/chat/threads/{tid}").json()["turns"]
        assert [t["role"] for t in turns] == ["user", "search", "assistant"] * 2
        second_hits = turns[4]["search"]["hits"]
        _same_as_service(_cards(page, 1), second_hits)
        assert second_hits[0]["id"] == first_hits[1]["id"]  # "like 2": the second result is its own best match
        expect(page.get_by_test_id("answer").nth(1)).to_contain_text(f"Best match: {second_hits[0]['id']}")
        expect(page.get_by_test_id("thread-item")).to_have_count(1)  # the same thread, continued
        assert len(httpx.get(f"{url}/chat/threads").json()) == 1
        shot = _screenshot(page, tmp_path, "web_chat.png")
        assert shot.stat().st_size > 10_000

        # Reload: a fresh page; clicking the thread renders its history (both turns) again.
        page.reload()
        expect(page.get_by_test_id("welcome")).to_be_visible()
        expect(page.get_by_test_id("result-card")).to_have_count(0)
        page.get_by_test_id("thread-item").click()
        expect(page.get_by_test_id("results")).to_have_count(2)
        expect(page.get_by_test_id("user-message")).to_have_count(2)
        expect(page.get_by_test_id("user-message").first).to_contain_text("1 image attached")
        expect(page.get_by_test_id("answer")).to_have_count(2)
        _wait_thumbnails_loaded(page, 10)
        _same_as_service(_cards(page, 0), first_hits)
        _same_as_service(_cards(page, 1), second_hits)
        expect(page.get_by_test_id("answer").first).to_contain_text(f"Best match: {first_hits[0]['id']}")

        # New conversation: empty again, the next message starts another thread.
        page.get_by_test_id("new-thread").click()
        expect(page.get_by_test_id("result-card")).to_have_count(0)
        assert page.get_by_test_id("thread-item").get_attribute("aria-current") is None

        # A narrow (phone) viewport: no sideways scrolling; the conversation list opens from the header.
        page.get_by_test_id("thread-item").evaluate("b => b.click()")
        expect(page.get_by_test_id("result-card")).to_have_count(10)
        page.set_viewport_size({"width": 390, "height": 844})
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        expect(page.get_by_test_id("thread-item")).not_to_be_in_viewport()
        page.get_by_test_id("toggle-threads").click()
        expect(page.get_by_test_id("thread-item")).to_be_in_viewport()
        page.keyboard.press("Escape")
        expect(page.get_by_test_id("toggle-threads")).to_have_attribute("aria-expanded", "false")
        _screenshot(page, tmp_path, "web_chat_mobile.png")
        watch.check(url)


def test_chat_page_asks_for_the_token_and_loads_signed_images(cli_env, page_of, scene_images, tmp_path) -> None:
    from playwright.sync_api import expect

    script = ChatScript([tool_call("multimodal_search", {"query": "a street", "k": 5, "top": 3}), _answer])
    with fake_openai(Switches(chat_script=script)) as fake:
        env = service_env(cli_env, fake)
        ingest(env, scene_images)
        with running(env, api_token=TOKEN) as (url, _):
            page = page_of()
            watch = Watch(page)
            page.goto(url + "/")
            token = page.get_by_test_id("token-input")
            expect(token).to_be_visible()  # the conversation list got 401
            expect(page.get_by_label("API token")).to_be_visible()  # labelled
            token.fill("wrong-token-wrong-token")
            token.press("Enter")
            expect(token).to_be_visible()
            expect(page.get_by_test_id("auth-note")).to_contain_text("refused the stored token")
            token.fill(TOKEN)
            page.get_by_test_id("token-save").click()
            expect(page.get_by_test_id("auth")).to_be_hidden()
            expect(page.get_by_test_id("threads-empty")).to_be_visible()
            assert page.evaluate("localStorage.getItem('retllm.apiToken')") == TOKEN

            box = page.get_by_test_id("message-input")
            box.fill("find street scenes")
            box.press("Enter")
            expect(page.get_by_test_id("answer")).to_have_count(1)
            expect(page.get_by_test_id("result-card")).to_have_count(3)
            _wait_thumbnails_loaded(page, 3)  # <img> sends no token: the signed links let them load
            cards = _cards(page, 0)
            assert all("sig=" in c["img"] and "exp=" in c["img"] for c in cards)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            tid = httpx.get(f"{url}/chat/threads", headers=headers).json()[0]["thread_id"]
            turns = httpx.get(f"{url}/chat/threads/{tid}", headers=headers).json()["turns"]
            hits = turns[1]["search"]["hits"]
            _same_as_service(cards, hits)
            expect(page.get_by_test_id("answer")).to_contain_text(f"Best match: {hits[0]['id']}")
            assert httpx.get(cards[0]["img"].split("&exp=")[0]).status_code == 401  # unsigned: refused
            expect(page.get_by_test_id("thread-item")).to_have_count(1)

            # The stored token is used after a reload: no prompt, and the history opens.
            page.reload()
            expect(page.get_by_test_id("thread-item")).to_have_count(1)
            expect(page.get_by_test_id("auth")).to_be_hidden()
            page.get_by_test_id("thread-item").click()
            expect(page.get_by_test_id("result-card")).to_have_count(3)
            _wait_thumbnails_loaded(page, 3)
            _screenshot(page, tmp_path, "web_chat_token.png")
            # Chromium logs each 401 response (before the token, and the wrong one) as a console error.
            watch.check(url, allowed=("status of 401",))
            assert sum("status of 401" in e for e in watch.errors) >= 2


def _sse(events: list[tuple[str, Any]]) -> str:
    return ": keep-alive\n\n" + "".join(f"event: {k}\ndata: {json.dumps(v)}\n\n" for k, v in events)


def test_chat_page_shows_provenance_and_never_renders_result_text_as_html(scenes_env, page_of, tmp_path) -> None:
    """A crafted stream (routed in the browser): every badge kind, revisit progress, errors, and hostile text."""
    from playwright.sync_api import expect

    with running(scenes_env) as (url, _):
        real = httpx.post(f"{url}/search", json={"query": "a street", "k": 5, "top": 4, "coarse_only": True}).json()
        base = real["hits"]
        evil = '<img src=x onerror="window.__pwned=1"><b>bold</b>'
        hits = [
            dict(base[0], rank=1, score=0.91234, method="logits", retraced=12, revisits=2, coarse_rank=3),
            dict(base[1], rank=2, score=0.5, method="verbalized", error="judge timed out", coarse_rank=1),
            dict(base[2], rank=3, score=None, method=None, coarse_rank=2, text=evil, id=evil),
            dict(
                base[3], rank=4, score=None, method="coarse", coarse_rank=4, image="javascript:alert(1)", thumbnail=None
            ),
        ]
        search = {**real, "query": evil, "hits": hits}

        def scored(hit: dict[str, Any], done: int) -> tuple[str, dict[str, Any]]:
            fields = {k: hit[k] for k in ("id", "score", "method", "retraced", "revisits", "error")}
            return "progress", {"event": "candidate", **fields, "done": done, "of": 2}

        events = [
            ("thread", {"thread_id": "crafted1"}),
            ("progress", {"event": "stage", "stage": "coarse", "n": 4}),
            ("progress", {"event": "stage", "stage": "fine", "n": 2}),
            ("progress", {"event": "revisit", "status": "requested", "id": hits[0]["id"], "box": [0, 0, 0.5, 0.5]}),
            ("progress", {"event": "revisit", "status": "done", "id": hits[0]["id"]}),
            scored(hits[0], 1),
            scored(hits[1], 2),
            ("search", search),
            ("search_error", "k: Input should be less than or equal to 1000"),
            ("answer", evil),
            ("error", {"message": "the chat model went away"}),
            ("done", {"thread_id": "crafted1"}),
        ]
        sent: list[dict[str, Any]] = []

        def fulfil(route: Any) -> None:
            sent.append(json.loads(route.request.post_data))
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=_sse(events))

        page = page_of()
        watch = Watch(page)
        page.route(url + "/chat", fulfil)
        page.goto(url + "/")
        page.get_by_test_id("message-input").fill("show me")
        page.get_by_test_id("send").click()
        expect(page.get_by_test_id("result-card")).to_have_count(4)
        assert sent == [{"message": "show me", "images": []}]  # a new conversation: no thread_id

        cards = _cards(page, 0)
        assert [c["score"] for c in cards] == ["0.912", "0.500", "not judged", "not judged"]
        assert [c["was"] for c in cards] == ["was #3", "was #1", "was #2", "was #4"]
        assert cards[0]["badges"] == ["logits", "retraced L12", "2 revisits"]
        assert cards[1]["badges"] == ["verbalized", "error: judge timed out"]
        assert cards[2]["badges"] == cards[3]["badges"] == ["coarse fallback"]
        # Untrusted text stays text: shown literally, never parsed.
        assert cards[2]["shownId"] == evil and page.get_by_test_id("result-text").first.text_content() == evil
        assert page.get_by_test_id("answer").text_content() == "retllm" + evil
        assert page.locator("#log b").count() == 0 and page.evaluate("window.__pwned") is None
        # No image and a javascript: URL: no thumbnail and nothing to click.
        assert cards[3]["img"] is None
        assert page.locator("[data-testid=result-card][data-rank='4'] [data-testid=open-image]").count() == 0
        assert page.locator("a[href^='javascript:']").count() == 0
        _wait_thumbnails_loaded(page, 3)

        p = page.get_by_test_id("progress")
        expect(p.get_by_test_id("progress-scored")).to_have_text("scored 2/2")
        expect(p.get_by_test_id("progress-revisits")).to_have_text("revisits: 1 asked, 1 shown")
        steps = p.get_by_test_id("progress-steps").locator("li").all_text_contents()
        assert "revisit requested: " in steps[2] and steps[2].endswith("[0.00, 0.00, 0.50, 0.50]")
        assert "0.912 (logits) — retraced L12, 2 revisits" in steps[4]
        expect(page.get_by_test_id("notice")).to_contain_text("The search was refused: k: Input should be")
        expect(page.get_by_test_id("error")).to_contain_text("the chat model went away")

        # The thread id from the stream is kept: the follow-up continues it.
        page.get_by_test_id("message-input").fill("and more")
        page.get_by_test_id("message-input").press("Enter")
        expect(page.get_by_test_id("results")).to_have_count(2)
        assert sent[1] == {"message": "and more", "images": [], "thread_id": "crafted1"}
        # "New conversation" drops it again.
        page.get_by_test_id("new-thread").click()
        page.get_by_test_id("message-input").fill("fresh")
        page.get_by_test_id("message-input").press("Enter")
        expect(page.get_by_test_id("results")).to_have_count(1)
        assert "thread_id" not in sent[2]
        _screenshot(page, tmp_path, "web_chat_provenance.png")
        watch.check(url)


def test_chat_page_asks_before_a_delete_and_deletes_a_conversation(cli_env, page_of, tmp_path) -> None:
    """Write tools on: the chat model's delete waits for the user's click, "Keep them" keeps, "Delete" (after a
    reload, from the reopened thread) deletes; the sidebar deletes the conversation."""
    from playwright.sync_api import expect

    def said(body: dict[str, Any]) -> dict[str, Any]:
        return {
            "content": "Tool said: " + next(m["content"] for m in reversed(body["messages"]) if m["role"] == "tool")
        }

    delete = tool_call("delete_items", {"ids": ["item0", "item1"]})
    script = ChatScript([delete, said, delete, said])
    with fake_openai(Switches(chat_script=script)) as fake:
        env = service_env(cli_env, fake, RETLLM_CHAT_WRITE_TOOLS="true")
        with running(env) as (url, _):
            items = [{"id": f"item{i}", "text": f"a street scene {i}"} for i in range(4)]
            assert httpx.post(f"{url}/items", json={"items": items}).json()["added"] == 4
            count = lambda: httpx.get(f"{url}/collections/default").json()["items"]  # noqa: E731
            page = page_of()
            watch = Watch(page)
            page.goto(url + "/")
            page.get_by_test_id("message-input").fill("delete item0 and item1")
            page.get_by_test_id("send").click()
            box = page.get_by_test_id("confirm")
            expect(box).to_contain_text('from the collection "default"')
            assert box.get_by_test_id("confirm-ids").locator("li").all_text_contents() == ["item0", "item1"]
            expect(box.get_by_test_id("confirm-no")).to_be_focused()  # the safe answer
            box.get_by_test_id("confirm-no").click()
            expect(page.get_by_test_id("answer")).to_contain_text("nothing was deleted")
            assert count() == 4 and box.get_by_test_id("confirm-yes").is_disabled()
            page.get_by_test_id("message-input").fill("delete them after all")
            page.get_by_test_id("message-input").press("Enter")
            expect(page.get_by_test_id("confirm")).to_have_count(2)
            page.reload()  # the question survives a reload: the reopened thread shows it again
            page.get_by_test_id("thread-item").click()
            expect(page.get_by_test_id("confirm")).to_have_count(1)
            _screenshot(page, tmp_path, "web_chat_confirm.png")
            page.get_by_test_id("confirm-yes").click()
            expect(page.get_by_test_id("answer").last).to_contain_text("Deleted 2 item(s) from 'default'")
            assert count() == 2
            thread = page.get_by_test_id("thread-item").get_attribute("data-thread-id")
            page.on("dialog", lambda d: d.accept())
            page.get_by_test_id("thread-delete").click()
            expect(page.get_by_test_id("thread-item")).to_have_count(0)
            expect(page.get_by_test_id("welcome")).to_be_visible()
            assert httpx.get(f"{url}/chat/threads/{thread}").status_code == 404
            watch.check(url)
