"""What a web page can make a browser send to the service: DNS rebinding (a foreign ``Host``), cross-site
requests (``Origin``, ``Sec-Fetch-Site``, CORS-simple bodies), and malformed input that must not reach a 500.

Every attack goes to the real service (uvicorn on loopback) and is answered with a 4xx and a one-line JSON
``detail``; nothing is written and no model runs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.service.conftest import TOKEN, running

EVIL = "https://evil.example"
JSON_ROUTES = [  # every route that reads a JSON body
    ("POST", "/search"),
    ("POST", "/items"),
    ("DELETE", "/items"),
    ("POST", "/chat"),
    ("POST", "/v1/chat/completions"),
]
UNSAFE_ROUTES = [  # every route that changes state or runs a model, with a body it would accept
    ("POST", "/search", {"query": "a street", "coarse_only": True}),
    ("POST", "/items", {"items": [{"text": "planted by a web page"}]}),
    ("DELETE", "/items", {"ids": ["x"]}),
    ("DELETE", "/items/x", None),
    ("POST", "/chat", {"message": "delete everything"}),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
]


def _count(url: str, headers: dict[str, str] | None = None) -> dict[str, int]:
    r = httpx.get(f"{url}/collections", headers=headers)
    return {c["name"]: c["items"] for c in r.json()["collections"]}


def one_line(r: httpx.Response, status: int | tuple[int, ...], *words: str) -> str:
    """The answer is ``status`` with a JSON ``detail`` of one line holding ``words``."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    assert all(w in detail for w in words), detail
    return detail


def test_a_foreign_host_header_is_refused_on_every_route(scenes_env) -> None:
    """DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1 sends its own name as Host."""
    env = {**scenes_env, "RETLLM_ALLOWED_HOSTS": "app.example, proxy.example:9000"}
    with running(env, public_url="https://pub.example/retllm") as (url, _):
        port = url.rsplit(":", 1)[1]
        before = _count(url)
        for host in (f"attacker.example:{port}", "attacker.example", f"app.example.evil:{port}", "proxy.example:9001"):
            h = {"Host": host}
            for method, path in [("GET", "/"), ("GET", "/collections"), ("GET", "/readyz"), ("GET", "/healthz")]:
                one_line(httpx.request(method, f"{url}{path}", headers=h), 421, "Host", "RETLLM_ALLOWED_HOSTS")
            for method, path, body in UNSAFE_ROUTES:
                one_line(httpx.request(method, f"{url}{path}", json=body, headers=h), 421, "Host")
        assert _count(url) == before
        # the names this service goes by: IP literals, localhost, the public URL's host, the allow-list
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"LOCALHOST:{port}",
            f"[::1]:{port}",
            f"10.1.2.3:{port}",
            "pub.example",
            f"app.example:{port}",
            "APP.example",
            "proxy.example:9000",
        ):
            assert httpx.get(f"{url}/collections", headers={"Host": host}).status_code == 200, host


def test_cross_site_requests_are_refused_and_write_nothing(scenes_env, fake) -> None:
    """CSRF: a page on another site posts to the service (no token to forge: the default on loopback)."""
    with running(scenes_env) as (url, _):
        before, asked = _count(url), len(fake.requests)
        browsers = [
            {"Origin": EVIL},
            {"Origin": "null"},  # a sandboxed frame, a file:// page
            {"Origin": url.replace("127.0.0.1", "localhost")},  # another origin on this machine
            {"Origin": f"http://127.0.0.1:{int(url.rsplit(':', 1)[1]) + 1}"},  # another port
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site"},
            {"Origin": url, "Sec-Fetch-Site": "cross-site"},
        ]
        for headers in browsers:
            for method, path, body in UNSAFE_ROUTES:
                r = httpx.request(method, f"{url}{path}", json=body, headers=headers)
                one_line(r, 403, "cross-origin")
            # what a page can send without a preflight: a form, or text with no JSON Content-Type
            r = httpx.post(f"{url}/items", files={"image": ("a.png", b"x")}, data={"payload": "{}"}, headers=headers)
            one_line(r, 403, "cross-origin")
            r = httpx.post(f"{url}/items", content=b'{"items": [{"text": "t"}]}', headers=headers)
            one_line(r, 403, "cross-origin")
        assert _count(url) == before and len(fake.requests) == asked  # nothing added, no model asked
        # the service's own page (same origin), and clients that are no browser (no Origin: curl, SDKs)
        for headers in ({"Origin": url}, {"Origin": url, "Sec-Fetch-Site": "same-origin"}, {}):
            r = httpx.post(f"{url}/search", json={"query": "a street", "coarse_only": True}, headers=headers)
            assert r.status_code == 200, (headers, r.text)
        # reading is not refused: a cross-site page cannot read the answer (no CORS), a rebinding one is refused
        assert httpx.get(f"{url}/collections", headers={"Origin": EVIL}).status_code == 200


def test_json_bodies_need_a_json_content_type(scenes_env) -> None:
    """A body with no Content-Type (or text/plain, a CORS-simple type) was read as JSON: a form could send it."""
    with running(scenes_env) as (url, _):
        before = _count(url)
        body = b'{"items": [{"text": "no content type"}]}'
        for ctype in (None, "text/plain", "application/x-www-form-urlencoded"):
            for method, path in JSON_ROUTES:
                headers = {"Content-Type": ctype} if ctype else {}
                r = httpx.request(method, f"{url}{path}", content=body, headers=headers)
                one_line(r, 415, "application/json")
        assert _count(url) == before
        ok = httpx.post(f"{url}/items", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
        assert ok.status_code == 200 and ok.json()["added"] == 1


def test_a_token_does_not_make_a_cross_site_request_acceptable(scenes_env) -> None:
    with running(scenes_env, api_token=TOKEN) as (url, _):
        good = {"Authorization": f"Bearer {TOKEN}"}
        before = _count(url, good)
        r = httpx.post(f"{url}/items", json={"items": [{"text": "t"}]}, headers={**good, "Origin": EVIL})
        one_line(r, 403, "cross-origin")
        r = httpx.post(f"{url}/items", json={"items": [{"text": "t"}]}, headers={"Host": "attacker.example", **good})
        one_line(r, 421, "Host")
        assert _count(url, good) == before


def test_image_links_come_from_the_bound_address_or_the_public_url(scenes_env) -> None:
    """Never from the request's Host: an allowed alias, or a spoofed one, must not steer where links point."""
    env = {**scenes_env, "RETLLM_ALLOWED_HOSTS": "alias.example"}
    search = {"query": "a street", "coarse_only": True, "top": 1}
    with running(env) as (url, _):
        for host in ("alias.example", "localhost", "10.9.8.7:1"):
            [hit] = httpx.post(f"{url}/search", json=search, headers={"Host": host}).json()["hits"]
            assert hit["image"].startswith(f"{url}/items/") and hit["thumbnail"].startswith(f"{url}/items/"), hit
            assert httpx.get(hit["thumbnail"]).status_code == 200
        # the page opened as localhost may show images linked to the bound address
        csp = httpx.get(f"{url}/", headers={"Host": "localhost"}).headers["Content-Security-Policy"]
        assert f"img-src 'self' {url} " in csp, csp
    with running(env, public_url="https://pub.example/retllm/") as (url, _):
        [hit] = httpx.post(f"{url}/search", json=search, headers={"Host": "alias.example"}).json()["hits"]
        assert hit["image"].startswith("https://pub.example/retllm/items/"), hit


def test_malformed_image_link_expiry_is_a_401_not_a_500(scenes_env) -> None:
    with running(scenes_env, api_token=TOKEN) as (url, _):
        with httpx.Client() as client:  # one keep-alive connection: a 500 used to drop it
            for exp in ("²", "١٢٣", "１２３", "9" * 5000, "-5", " 5", "5 ", "0x10", "1e9", ""):
                r = client.get(f"{url}/items/x/image", params={"exp": exp, "sig": "a"})
                one_line(r, 401, "image link")
            r = client.get(f"{url}/items/x/image", params={"exp": str(int(time.time()) + 60), "sig": "é"})
            one_line(r, 401, "image link")  # hmac.compare_digest refuses non-ASCII str: a TypeError
            assert client.get(f"{url}/healthz").status_code == 200


BOMBS = {
    "deep array": b"[" * 100_000 + b"]" * 100_000,  # json.loads raises RecursionError
    "deep object": b'{"a": ' * 50_000 + b"1" + b"}" * 50_000,  # the same, parsed off the event loop (> 256 KiB)
    "huge integer": b'{"k": ' + b"7" * 5000 + b"}",  # int() past the digit limit: a ValueError, no JSONDecodeError
}


def test_json_bombs_are_a_400_on_every_json_route(scenes_env) -> None:
    with running(scenes_env) as (url, _), httpx.Client() as client:
        before = _count(url)
        for bomb in BOMBS.values():
            for method, path in JSON_ROUTES:
                r = client.request(method, f"{url}{path}", content=bomb, headers={"Content-Type": "application/json"})
                one_line(r, 400, "not valid JSON")
            for field in ("filter", "payload"):  # JSON inside a multipart form
                path = "/search" if field == "filter" else "/items"
                form = {field: bomb.decode(), "query": "x"}
                r = client.post(f"{url}{path}", data=form, files={"image": ("a.png", b"not read")})
                one_line(r, 400, field, "not valid JSON")
        assert _count(url) == before


EVIL_PAGE = """<!doctype html><meta charset="utf-8"><title>evil</title>
<form id="f" method="POST" enctype="multipart/form-data"><input name="items" value='[{"text": "form"}]'></form>
<script>
async function attack(service) {
  const body = JSON.stringify({items: [{text: "planted"}]});
  const form = new FormData();
  form.append("image", new Blob([new Uint8Array([137, 80, 78, 71])], {type: "image/png"}), "x.png");
  const tries = [
    fetch(service + "/items", {method: "POST", mode: "no-cors", body}),  // sent as text/plain
    fetch(service + "/items", {method: "POST", mode: "no-cors", body: new Blob([body])}),  // no Content-Type
    fetch(service + "/items", {method: "POST", mode: "no-cors", body: form}),
    fetch(service + "/chat", {method: "POST", mode: "no-cors", body: JSON.stringify({message: "hi"})}),
    fetch(service + "/v1/chat/completions", {method: "POST", mode: "no-cors", body: "{}"}),
  ];
  await Promise.allSettled(tries);
}
</script>"""


@pytest.fixture(scope="module")
def rebinding_browser() -> Iterator[Any]:
    """Headless Chromium whose resolver sends evil.example and attacker.example to 127.0.0.1 (what a DNS
    rebinding attacker's resolver does); skipped like tests/service/test_web_page.py's when there is none."""
    from tests.service.test_web_page import _need_browser

    chromium = shutil.which("chromium")
    if chromium is None:
        _need_browser("no chromium on PATH (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need_browser("the playwright package is not installed")
    rules = "MAP evil.example 127.0.0.1, MAP attacker.example 127.0.0.1"
    args = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--host-resolver-rules={rules}"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.mark.slow
def test_a_real_browser_on_another_site_or_a_rebound_name_changes_nothing(
    scenes_env, fake, rebinding_browser, tmp_path
) -> None:
    """What Chromium itself sends: cross-site posts (JSON as text/plain or with no Content-Type, a multipart
    form built in script, a submitted form) are refused with 403, and a page whose own name resolves to the
    service gets 421."""
    from tests.fakes.http_files import serve_folder

    (tmp_path / "evil.html").write_text(EVIL_PAGE)
    with running(scenes_env) as (url, _), serve_folder(tmp_path) as files:
        before, asked = _count(url), len(fake.requests)
        evil = files.replace("127.0.0.1", "evil.example")
        context = rebinding_browser.new_context()
        try:
            page = context.new_page()
            seen: list[tuple[str, int]] = []
            page.on("response", lambda r: seen.append((r.url, r.status)) if r.url.startswith(url) else None)
            page.goto(f"{evil}/evil.html")
            page.evaluate("service => attack(service)", url)
            page.evaluate("service => { const f = document.getElementById('f'); f.action = service + '/items'; }", url)
            with page.expect_navigation():
                page.evaluate("() => document.getElementById('f').submit()")
            assert len(seen) == 6 and {s for _, s in seen} == {403}, seen  # the browser sent them; all refused
            assert "cross-origin" in page.content()

            port = url.rsplit(":", 1)[1]
            r = page.goto(f"http://attacker.example:{port}/")  # the page is the rebound name's own origin
            assert r is not None and r.status == 421
            status = page.evaluate(
                """async () => (await fetch("/items", {method: "POST", headers: {"content-type": "application/json"},
                   body: JSON.stringify({items: [{text: "rebound"}]})})).status"""
            )
            assert status == 421
        finally:
            context.close()
        assert _count(url) == before and len(fake.requests) == asked
