"""One request must never brick a collection: items outside the bounds are skipped and named while the rest
are added, nothing they carried reaches the store, every collection opens after a restart; and a collection
that is broken anyway is reported, refused with one line, and comes back when repaired."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from tests.e2e.cli import run
from tests.poisoned import poison
from tests.service.conftest import TOKEN, blobs, running


def nest(n: int) -> dict[str, Any]:
    v: dict[str, Any] = {"a": 1}
    for _ in range(n - 1):
        v = {"a": v}
    return v


def _collections(url: str) -> dict[str, dict[str, Any]]:
    r = httpx.get(f"{url}/collections")
    assert r.status_code == 200, r.text
    return {c["name"]: c for c in r.json()["collections"]}


def test_items_outside_the_bounds_are_skipped_and_every_collection_opens_after_a_restart(
    scenes_env, scene_images
) -> None:
    items = [
        {"id": "ok-1", "text": "a kept item", "payload": {"kind": "note", "deep": nest(15)}},
        {"id": "deep-121", "text": "x", "payload": nest(121)},  # unopenable after a restart on the old main
        {"id": "deep-126", "text": "x", "payload": nest(126)},  # every search failed on the old main
        {"id": "huge-int", "text": "x", "payload": {"n": 2**70}},
        {"id": "long-key", "text": "x", "payload": {"k" * 300: 1}},
        {"id": "ok-2", "text": "another kept item"},
    ]
    # a lone surrogate and a NaN, as a client may send them (Python's json writes both)
    raw = json.dumps({"items": items})[:-2] + ', {"id": "sur", "text": "\\ud800"}, {"id": "nan", "text": "x", '
    raw += '"payload": {"v": NaN}}]}'
    with running(scenes_env) as (url, _):
        r = httpx.post(f"{url}/items", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["added"] == 2 and out["ids"][0] == "ok-1" and out["ids"][5] == "ok-2"
        reasons = {s["item"]: s["reason"] for s in out["skipped"]}
        assert set(reasons) == {f"items[{i}]" for i in (1, 2, 3, 4, 6, 7)}
        assert "nested more than 16 levels deep" in reasons["items[1]"] == reasons["items[2]"]
        assert "does not fit in 64 bits" in reasons["items[3]"]
        assert "key of 300 characters" in reasons["items[4]"]
        assert "text is not valid Unicode" in reasons["items[6]"]
        assert "not a JSON number" in reasons["items[7]"]
        assert _collections(url)["default"]["items"] == 7

        before = blobs(scenes_env)  # one payload for every upload: checked before any upload is kept
        files = [("image", (p.name, p.read_bytes(), "image/png")) for p in scene_images[:2]]
        r = httpx.post(f"{url}/items", files=files, data={"payload": json.dumps(nest(20)), "collection": "up"})
        assert r.status_code == 422 and "nested more than 16 levels deep" in r.json()["detail"]
        assert "\n" not in r.json()["detail"]
        assert blobs(scenes_env) == before and "up" not in _collections(url)

        for name in ("abc\n", "abc\r\n", "../abc", ".hidden"):
            r = httpx.post(f"{url}/items", json={"collection": name, "items": [{"text": "x"}]})
            assert 400 <= r.status_code < 500 and "invalid collection name" in r.json()["detail"], (name, r.text)
        for key in ("../text", "a..b", '"', ".meta"):
            r = httpx.post(f"{url}/search", json={"query": "x", "coarse_only": True, "filter": {key: "x"}})
            assert r.status_code == 400 and r.json()["detail"].startswith("filter key"), (key, r.text)
        for flt in ('{"a\\udcff": "x"}', '{"a": "\\ud800"}', '{"a": ["ok", "\\ud800"]}'):  # lone surrogates
            body = '{"query": "x", "coarse_only": true, "filter": ' + flt + "}"
            r = httpx.post(f"{url}/search", content=body, headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500 and "\n" not in r.json()["detail"], (flt, r.text)
        r = httpx.post(f"{url}/search", json={"query": "x", "coarse_only": True, "filter": {"my key": "x"}})
        assert r.status_code == 200 and r.json()["hits"] == []  # any stored field name is reachable
        r = httpx.post(
            f"{url}/search", content='{"query": "red \\ud83d car"}', headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422 and "query: Input should be a valid string" in r.json()["detail"]
        assert set(_collections(url)) == {"default"}
        for messages in (  # the OpenAI route sends the whole conversation to the chat model: bounded as /chat is
            [{"role": "user", "content": "x" * 20_001}],
            [{"role": "user", "content": [{"type": "text", "text": "y" * 15_000}]}] * 14,
        ):
            r = httpx.post(f"{url}/v1/chat/completions", json={"model": "retllm", "messages": messages})
            assert r.status_code == 422 and "characters of text; at most" in r.json()["detail"], r.text
        # a one-off (OpenAI-route) turn keeps its attachments only while it runs
        img = io.BytesIO()
        Image.new("RGB", (16, 16), (250, 0, 0)).save(img, "PNG")
        part = {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64," + base64.b64encode(img.getvalue()).decode()},
        }
        content = [{"type": "text", "text": "anything like this?"}, part]
        r = httpx.post(
            f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]}, timeout=60
        )
        assert r.status_code == 200, r.text
        kept = Path(scenes_env["RETLLM_DATA_DIR"]) / "chat_attachments"
        assert not kept.exists() or not [f for f in kept.rglob("*") if f.is_file()], list(kept.rglob("*"))
    with running(scenes_env) as (url, _):  # a restart replays the log: every collection opens
        assert _collections(url)["default"] == {"name": "default", "items": 7, "dim": 32, "broken": None}
        q = {"query": "kept item", "coarse_only": True, "k": 10, "filter": {"kind": "note"}}
        r = httpx.post(f"{url}/search", json=q)
        assert r.status_code == 200 and [h["id"] for h in r.json()["hits"]] == ["ok-1"]


def test_a_broken_collection_is_reported_refused_in_one_line_and_healed_by_repair(scenes_env, embedder) -> None:
    edge = Path(scenes_env["RETLLM_DATA_DIR"]) / "edge"
    good = poison(edge, "poisoned", embedder.dim, kill=True)
    with running(scenes_env, api_token=TOKEN) as (url, _):  # readiness probes carry no token: no names for them
        probe = httpx.get(f"{url}/readyz")
        assert probe.json()["broken"] == 1 and "poisoned" not in probe.text
        named = httpx.get(f"{url}/readyz", headers={"Authorization": f"Bearer {TOKEN}"}).json()["broken"]
        assert set(named) == {"poisoned"}
    with running(scenes_env) as (url, _):
        listed = _collections(url)
        assert listed["default"]["items"] == 5 and listed["default"]["broken"] is None
        assert listed["poisoned"]["items"] is None
        assert "cannot be opened" in listed["poisoned"]["broken"]
        assert "retllm index repair -c poisoned" in listed["poisoned"]["broken"]
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["status"] == "degraded" and set(ready["broken"]) == {"poisoned"}
        assert httpx.get(f"{url}/collections/poisoned").json()["broken"] == listed["poisoned"]["broken"]
        for method, path, body in [
            ("POST", "/search", {"query": "item", "collection": "poisoned", "coarse_only": True}),
            ("POST", "/items", {"collection": "poisoned", "items": [{"text": "x"}]}),
            ("DELETE", "/items", {"collection": "poisoned", "ids": ["good-0"]}),
        ]:
            r = httpx.request(method, f"{url}{path}", json=body)
            assert r.status_code == 409 and "retllm index repair -c poisoned" in r.json()["detail"], (path, r.text)
            assert "\n" not in r.json()["detail"] and str(edge) not in r.text
        r = httpx.post(f"{url}/search", json={"query": "a street", "coarse_only": True})
        assert r.status_code == 200 and len(r.json()["hits"]) == 5  # the others are served as before

        repaired = run(["index", "repair", "-c", "poisoned"], scenes_env)  # while the service runs
        assert repaired.returncode == 0, repaired.stderr
        r = httpx.post(f"{url}/search", json={"query": "item", "collection": "poisoned", "coarse_only": True})
        assert r.status_code == 200 and sorted(h["id"] for h in r.json()["hits"]) == good
        assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
