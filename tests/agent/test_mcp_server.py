"""`retllm mcp` as a real subprocess, driven by the official MCP client (stdio and streamable HTTP).

The collection is built with the real CLI and the tiny CLIP; the fine stage is the fake OpenAI-compatible server.
The embedded store is locked by the process that opens it, so the CLI's answers are taken before the server starts.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema
import numpy as np
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError
from mcp.types import CallToolResult
from PIL import Image
from pydantic import AnyUrl

from tests.agent.conftest import cli_search, ingest
from tests.e2e.cli import RETLLM, retllm_env
from tests.fakes.openai_server import FakeOpenAI, fake_openai

TOOLS = {"search", "add_items", "delete_items", "list_collections"}
SERVER_FAULT = "Server-side failure (not caused by your arguments"


QUERY = ("a red square", 5, 4)  # text, k, top: searched by the CLI once, then over stdio and over HTTP


@dataclass
class Served:
    env: dict[str, str]
    fake: FakeOpenAI
    images: list[Path]
    want: list[dict[str, Any]]  # `retllm search --json` for QUERY


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_clip_spec: str) -> Iterator[Served]:
    """One collection for the module (the tiny CLIP loads in every process: building it once saves a lot), scored by
    the fake endpoint, thumbnails at most 64 px. Tests that add items use their own collection."""
    root = tmp_path_factory.mktemp("mcp")
    images = []
    for i in range(5):
        arr = np.random.default_rng(30 + i).integers(0, 256, (40 + 8 * i, 56 + 4 * i, 3), dtype=np.uint8)
        arr[: 10 + 3 * i, :, i % 3] = 255
        images.append(root / f"scene_{i}.png")
        Image.fromarray(arr).save(images[-1])
    with fake_openai() as fake:
        env = retllm_env(
            root / "data",
            tiny_clip_spec,
            RETLLM_SCORER="openai:fake-vlm",
            RETLLM_OPENAI_BASE_URL=fake.url,
            OPENAI_API_KEY="k",
            RETLLM_THUMBNAIL_SIZE="64",
        )
        ingest(env, images)
        text, k, top = QUERY
        yield Served(env, fake, images, cli_search(env, text, "-k", str(k), "--top", str(top)))


@asynccontextmanager
async def stdio_session(
    env: dict[str, str], errlog: Path, command: str = RETLLM, args: tuple[str, ...] = ("mcp",)
) -> AsyncIterator[ClientSession]:
    """A session with `retllm mcp` over stdio; fails if the server wrote anything but JSON-RPC to stdout."""
    stray: list[Exception] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, Exception):  # how the client reports a stdout line that is not JSON-RPC
            stray.append(message)

    params = StdioServerParameters(command=command, args=list(args), env=env)
    with errlog.open("w") as err:
        async with (
            stdio_client(params, errlog=err) as (read, write),
            ClientSession(read, write, message_handler=on_message) as session,
        ):
            await session.initialize()
            yield session
            assert not stray, f"not JSON-RPC on stdout: {stray}"


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def same_ranking(structured: dict[str, Any], cli_hits: list[dict[str, Any]]) -> None:
    fields = ("id", "rank", "score", "coarse_rank", "method")
    assert [{f: h[f] for f in fields} for h in structured["hits"]] == [{f: h[f] for f in fields} for h in cli_hits]


# The README's host configuration (Claude Desktop's claude_desktop_config.json), launched as written there.
README = Path(__file__).resolve().parents[2] / "README.md"
HOST_CONFIG = re.search(r"claude_desktop_config\.json`:\s+```json\n(.*?)```", README.read_text(), re.S).group(1)


def test_search_over_stdio_matches_the_cli(served, tmp_path) -> None:
    """Launched as the README's host config says (command, args, env), with the data folder and the fake endpoint
    standing in (it takes any model name and key, and scores by image, as it did for the CLI)."""
    config = json.loads(HOST_CONFIG)["mcpServers"]["retllm"]
    env = {**served.env, **config["env"], "RETLLM_DATA_DIR": served.env["RETLLM_DATA_DIR"]}
    env["PATH"] = f"{Path(RETLLM).parent}{os.pathsep}{env.get('PATH', '')}"  # hosts need `retllm` on PATH
    text, k, top = QUERY
    originals = {str(p.resolve()): p for p in served.images}

    async def session() -> None:
        async with stdio_session(env, tmp_path / "server.err", config["command"], tuple(config["args"])) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) == TOOLS
            search = tools["search"]
            assert search.outputSchema is not None and "like" not in search.inputSchema["properties"]
            assert search.inputSchema["properties"]["k"]["minimum"] == 1
            assert all(tools[n].outputSchema for n in TOOLS)

            result = await s.call_tool("search", {"query": text, "k": k, "top": top})
            assert not result.isError, text_of(result)
            out = result.structuredContent
            jsonschema.validate(out, search.outputSchema)
            same_ranking(out, served.want)
            assert out["scorer"] == "openai:gpt-4o-mini"  # the config's
            assert f"1. id={served.want[0]['id']}" in text_of(result)

            images = [c for c in result.content if c.type == "image"]
            assert [c.meta["retllm/id"] for c in images] == [h["id"] for h in out["hits"]]  # all have images
            for block, hit in zip(images, out["hits"], strict=True):
                assert block.mimeType in {"image/jpeg", "image/png"}
                thumb = Image.open(io.BytesIO(base64.b64decode(block.data)))
                assert thumb.format == {"image/jpeg": "JPEG", "image/png": "PNG"}[block.mimeType]
                w, h = Image.open(originals[hit["image"]]).size
                assert max(thumb.size) == min(64, max(w, h))  # shrunk to the setting, never enlarged

                content = (await s.read_resource(AnyUrl(hit["resource_uri"]))).contents[0]
                assert content.mimeType == "image/png"
                assert base64.b64decode(content.blob) == originals[hit["image"]].read_bytes()

            gallery = (await s.read_resource(AnyUrl(search.meta["ui"]["resourceUri"]))).contents[0]
            assert gallery.mimeType == "text/html;profile=mcp-app" and "ui/notifications/tool-result" in gallery.text

    asyncio.run(session())


def test_bad_requests_are_tool_errors_and_the_session_goes_on(served, tmp_path) -> None:
    bad = [  # the rows of docs/agent.md's table that apply to MCP: the same messages as the LangChain tools
        ("search", {}, "give a query text, an image, or both"),
        ("search", {"query": "x", "k": 0}, "k: Input should be greater than or equal to 1"),
        ("search", {"query": "x", "top": 0}, "top: Input should be greater than or equal to 1"),
        ("search", {"query": "x", "min_score": 1.5}, "min_score: Input should be less than or equal to 1"),
        ("search", {"query": "x", "collection": "nope"}, "no collection 'nope'; existing: "),
        ("search", {"query": "x", "vector": "colour"}, "vector: Input should be 'auto', 'image', 'text' or 'fused'"),
        ("search", {"query": "x", "filter": "time=night"}, "filter: Input should be a valid dictionary"),
        ("search", {"query": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
        ("search", {"query": "x", "like": 1}, "like: Extra inputs are not permitted"),  # no conversation here
        ("search", {"image": str(tmp_path / "missing.png")}, "file not found"),
        ("add_items", {"items": []}, "items: List should have at least 1 item"),
        ("add_items", {}, "items: Field required"),
        ("add_items", {"items": [{"text": "t"}], "collection": "bad name!"}, "invalid collection name 'bad name!'"),
        ("delete_items", {"ids": []}, "ids: List should have at least 1 item"),
        ("delete_items", {"ids": ["a"], "collection": "nope"}, "no collection 'nope'"),
    ]
    new = tmp_path / "new.png"
    Image.new("RGB", (30, 20), (10, 200, 30)).save(new)
    item_id = "g/1 é"  # any characters: the resource URI percent-encodes it

    async def session() -> None:
        async with stdio_session(served.env, tmp_path / "server.err") as s:
            for tool, args, expect in bad:
                r = await s.call_tool(tool, args)
                assert r.isError and expect in text_of(r) and SERVER_FAULT not in text_of(r), (args, text_of(r))
            served.fake.switches.status = 403  # the endpoint refuses: not the caller's fault, and no crash
            try:
                r = await s.call_tool("search", {"query": "x", "k": 2})
            finally:
                served.fake.switches.status = None
            assert r.isError and SERVER_FAULT in text_of(r) and "EndpointError" in text_of(r), text_of(r)
            r = await s.call_tool("search", {"query": "x", "k": 2})
            assert not r.isError and len(r.structuredContent["hits"]) == 2, text_of(r)
            with pytest.raises(McpError, match="no item 'nope'"):
                await s.read_resource(AnyUrl("retllm://default/nope/image"))

            # then add, find and delete, in a collection of its own
            c = {"collection": "scratch"}
            item = {"image": str(new), "text": "green", "id": item_id}
            r = await s.call_tool("add_items", {"items": [item], **c})
            assert not r.isError and r.structuredContent["added"] == 1 and r.structuredContent["ids"] == [item_id]
            uri = AnyUrl(f"retllm://scratch/{quote(item_id, safe='')}/image")  # not a search hit yet: found by a scan
            assert base64.b64decode((await s.read_resource(uri)).contents[0].blob) == new.read_bytes()
            r = await s.call_tool("add_items", {"items": [item], **c})
            assert r.structuredContent["added"] == 0 and r.structuredContent["already_present"] == 1
            counts = (await s.call_tool("list_collections", {})).structuredContent["collections"]
            assert {x["name"]: x["items"] for x in counts} == {"default": 5, "scratch": 1}
            r = await s.call_tool("search", {"image": str(new), **c})
            [hit] = r.structuredContent["hits"]
            assert hit["id"] == item_id and hit["resource_uri"] == str(uri) == "retllm://scratch/g%2F1%20%C3%A9/image"
            blob = (await s.read_resource(AnyUrl(hit["resource_uri"]))).contents[0].blob
            assert base64.b64decode(blob) == new.read_bytes()
            r = await s.call_tool("delete_items", {"ids": [item_id, "not-there"], **c})
            assert r.structuredContent == {"collection": "scratch", "deleted": 1, "missing": ["not-there"]}
            counts = (await s.call_tool("list_collections", {})).structuredContent["collections"]
            assert {x["name"]: x["items"] for x in counts} == {"default": 5, "scratch": 0}
            with pytest.raises(McpError, match="no item"):
                await s.read_resource(AnyUrl(hit["resource_uri"]))

    asyncio.run(session())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} never opened")


@contextmanager
def mcp_http(env: dict[str, str], errlog: Path) -> Iterator[str]:
    """`retllm mcp --http` on a free loopback port until the block ends; yields the endpoint's URL."""
    port = _free_port()
    with errlog.open("w") as err:
        proc = subprocess.Popen([RETLLM, "mcp", "--http", f"127.0.0.1:{port}"], env=env, stderr=err)
    try:
        _wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_streamable_http(served, tmp_path) -> None:
    text, k, top = QUERY
    with mcp_http(served.env, tmp_path / "server.err") as url:

        async def session() -> None:
            async with streamablehttp_client(url) as (read, write, _), ClientSession(read, write) as s:
                await s.initialize()
                assert {t.name for t in (await s.list_tools()).tools} == TOOLS
                r = await s.call_tool("search", {"query": text, "k": k, "top": top})
                assert not r.isError, text_of(r)
                same_ranking(r.structuredContent, served.want)

        asyncio.run(session())


TOKEN = "mcp-token-0123456789abcdef"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def test_http_takes_the_token_refuses_foreign_hosts_and_reads_no_server_file(served, tmp_path) -> None:
    """The HTTP transport under `retllm serve`'s rules: the bearer token (same message), a Host that names this
    server (DNS rebinding), and no server file named by a caller without RETLLM_FILE_ROOTS, whatever the file."""
    from retllm.access import BEARER_REFUSED

    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")  # a real image outside any root
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    probes = [tmp_path / "secret.png", tmp_path / "missing.png", tmp_path / "notes.txt", tmp_path / "loop", tmp_path]
    env = {**served.env, "RETLLM_API_TOKEN": TOKEN, "RETLLM_ALLOWED_HOSTS": "mcp.example"}
    with mcp_http(env, tmp_path / "server.err") as url:
        port = url.split(":")[2].split("/")[0]
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}, {"X": TOKEN}):
            r = httpx.post(url, json=INITIALIZE, headers={**MCP_HEADERS, **headers})
            assert r.status_code == 401 and r.json() == {"detail": BEARER_REFUSED}, r.text
            assert r.headers["WWW-Authenticate"] == "Bearer"
        good = {**MCP_HEADERS, "Authorization": f"Bearer {TOKEN}"}
        for host in (f"attacker.example:{port}", "mcp.example.attacker.example"):
            r = httpx.post(url, json=INITIALIZE, headers={**good, "Host": host})
            assert r.status_code == 421 and "RETLLM_ALLOWED_HOSTS" in r.json()["detail"], r.text
        for host in (f"localhost:{port}", f"mcp.example:{port}"):
            assert httpx.post(url, json=INITIALIZE, headers={**good, "Host": host}).status_code == 200, host

        async def session() -> list[str]:
            async with (
                streamablehttp_client(url, headers={"Authorization": f"Bearer {TOKEN}"}) as (read, write, _),
                ClientSession(read, write) as s,
            ):
                await s.initialize()
                r = await s.call_tool("search", {"query": QUERY[0], "k": 2})
                assert not r.isError and len(r.structuredContent["hits"]) == 2, text_of(r)
                said = []
                for p in probes:
                    r = await s.call_tool("search", {"image": str(p), "k": 2})
                    assert r.isError, text_of(r)
                    said.append(text_of(r).replace(str(p), "<path>"))
                    r = await s.call_tool("add_items", {"items": [{"image": str(p)}]})
                    assert r.structuredContent["added"] == 0, text_of(r)
                    reason = r.structuredContent["skipped"][0]["reason"]  # over HTTP: paths cut to their last part
                    said.append(reason.replace(str(p), "<path>").replace(f"…/{p.name}", "<path>"))
                return said

        said = asyncio.run(session())
    assert set(said) == {
        "Error executing tool search: path is outside the allowed folders (RETLLM_FILE_ROOTS): <path>",
        "path is outside the allowed folders (RETLLM_FILE_ROOTS): <path>",
    }, said


def test_a_malformed_http_address_is_a_clear_error(cli_env) -> None:
    r = subprocess.run([RETLLM, "mcp", "--http", "localhost"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "expected HOST:PORT" in r.stderr
    exposed = subprocess.run([RETLLM, "mcp", "--http", "0.0.0.0:8765"], env=cli_env, capture_output=True, text=True)
    assert exposed.returncode == 1 and "without authentication" in exposed.stderr and "--insecure" in exposed.stderr


def test_a_token_allows_a_non_loopback_address(cli_env) -> None:
    """As `retllm serve`: with RETLLM_API_TOKEN the address is accepted. The port is held on 127.0.0.1 here, so
    the server gets past the check and then fails to bind, without listening beyond loopback even briefly."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**cli_env, "RETLLM_API_TOKEN": TOKEN}
        r = subprocess.run([RETLLM, "mcp", "--http", f"0.0.0.0:{port}"], env=env, capture_output=True, text=True)
    assert "refusing" not in r.stderr and "address already in use" in r.stderr.lower(), r.stderr


GALLERY_HOST = r"""
// A stand-in host and DOM for the gallery page: enough to run its script under node and see what it draws.
const { script, result } = JSON.parse(require("fs").readFileSync(0, "utf8"));
const sent = [];
const listeners = [];
const node = (tag) => ({
  tag, children: [], className: "", textContent: "", style: { setProperty() {} },
  classList: { names: [], add(c) { this.names.push(c); } },
  append(...c) { this.children.push(...c); }, replaceChildren() { this.children = []; },
});
const els = { head: node("p"), hits: node("div"), full: node("div") };
els.full.firstElementChild = node("img");
globalThis.window = { parent: { postMessage: (m) => sent.push(m) }, addEventListener: (t, f) => listeners.push(f) };
globalThis.document = {
  createElement: node, getElementById: (id) => els[id], body: {},
  documentElement: { style: { setProperty() {} }, scrollWidth: 300, scrollHeight: 200 },
};
globalThis.ResizeObserver = class { constructor(f) { this.f = f; } observe() { this.f(); } };
const deliver = (data) => listeners.forEach((f) => f({ data }));
const tick = () => new Promise((r) => setTimeout(r, 0));
const text = (n) => (n.textContent || "") + n.children.map(text).join("");
eval(script);
(async () => {
  deliver({ jsonrpc: "2.0", id: sent.find((m) => m.method === "ui/initialize").id, result: { hostContext: {} } });
  await tick();
  deliver({ jsonrpc: "2.0", method: "ui/notifications/tool-result", params: result });
  const figs = els.hits.children;
  figs.filter((f) => f.onclick)[0].onclick();
  const read = sent.find((m) => m.method === "resources/read");
  deliver({ jsonrpc: "2.0", id: read.id, result: { contents: [{ mimeType: "image/png", blob: "QUJD" }] } });
  await tick();
  console.log(JSON.stringify({
    methods: sent.map((m) => m.method || null), head: els.head.textContent, read: read.params.uri,
    figs: figs.map((f) => ({ img: (f.children.find((c) => c.tag === "img") || {}).src || null, text: text(f) })),
    full: els.full.firstElementChild.src,
  }));
})();
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_the_gallery_app_draws_the_results(tmp_path) -> None:
    """The MCP App page, against a stand-in host: handshake, one figure per hit with its thumbnail, untrusted text
    as text, and a click reads the full image resource through the host."""
    from retllm.tools.deps import Deps
    from retllm.tools.mcp_server import McpHit, McpSearchOut, gallery_html, image_uri, thumbnail

    from retllm.settings import Settings

    Image.new("RGB", (90, 40), (200, 30, 30)).save(tmp_path / "red.png")
    hits = [
        McpHit(rank=1, id="a", score=0.9, coarse_rank=2, coarse_score=0.3, image=str(tmp_path / "red.png")),
        McpHit(rank=2, id="b", score=0.2, coarse_rank=1, coarse_score=0.4, text="<img src=x onerror=alert(1)>"),
    ]
    hits[0].resource_uri = image_uri("default", "a")
    thumb = thumbnail(Deps(Settings(data_dir=tmp_path)), hits[0])
    assert thumb is not None
    out = McpSearchOut(collection="default", query="red", scorer="openai:m", k=2, hits=hits)
    result = CallToolResult(content=[thumb], structuredContent=out.model_dump(mode="json"))
    page = gallery_html()  # read as installed package data
    script = re.search(r"<script>(.*)</script>", page, re.S).group(1)
    payload = json.dumps({"script": script, "result": result.model_dump(mode="json", by_alias=True)})
    r = subprocess.run(["node", "-e", GALLERY_HOST], input=payload, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["methods"] == [
        "ui/initialize",
        "ui/notifications/initialized",
        "ui/notifications/size-changed",
        "resources/read",
    ]
    assert "innerHTML" not in page
    assert seen["head"] == '2 result(s) for "red" in default (re-ranked by openai:m)'
    assert seen["figs"][0]["img"] == f"data:{thumb.mimeType};base64,{thumb.data}" and seen["figs"][1]["img"] is None
    assert "#1 a" in seen["figs"][0]["text"] and "(was #2)" in seen["figs"][0]["text"]
    assert "<img src=x onerror=alert(1)>" in seen["figs"][1]["text"]  # shown as text
    assert seen["read"] == "retllm://default/a/image" and seen["full"] == "data:image/png;base64,QUJD"
