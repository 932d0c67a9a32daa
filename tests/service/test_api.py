"""The REST API against the real CLI: same rankings, images by URL, items and collections, health."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
from PIL import Image

from tests.agent.conftest import cli_search
from tests.service.conftest import blobs, running


def _same_ranking(api_hits: list[dict], cli_hits: list[dict]) -> None:
    fields = ("id", "rank", "score", "p_true", "entropy", "method", "retraced", "revisits", "coarse_rank", "error")
    assert [{f: h[f] for f in fields} for h in api_hits] == [{f: h[f] for f in fields} for h in cli_hits]
    for a, c in zip(api_hits, cli_hits, strict=True):
        assert a["coarse_score"] == c["coarse_score"] and a["payload"] == c["payload"] and a["text"] == c["text"]


def test_search_json_and_multipart_equal_the_cli_and_images_come_as_urls(scenes_env, scene_images) -> None:
    cli_text = cli_search(scenes_env, "a street", "-k", "5", "--top", "3")
    cli_image = cli_search(scenes_env, "--image", str(scene_images[2]), "-k", "5", "--top", "5")
    cli_k4 = cli_search(scenes_env, "a street", "-k", "4")
    with running(scenes_env) as (url, _):
        default = httpx.post(f"{url}/search", json={"query": "a street", "k": 4}, timeout=60).json()
        _same_ranking(default["hits"], cli_k4)  # all k, as the CLI
        r = httpx.post(f"{url}/search", json={"query": "a street", "k": 5, "top": 3}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        _same_ranking(body["hits"], cli_text)
        assert body["scorer"] == "openai:fake-vlm" and body["k"] == 5
        # images are links served by the service, never server paths
        assert all(h["image"].startswith(f"{url}/items/") for h in body["hits"])
        assert "/tmp" not in r.text and str(scene_images[0].parent) not in r.text

        up = scene_images[2].read_bytes()
        r = httpx.post(f"{url}/search", data={"k": "5", "top": "5"}, files={"image": ("q.png", up)}, timeout=60)
        assert r.status_code == 200, r.text
        _same_ranking(r.json()["hits"], cli_image)
        data_url = "data:image/png;base64," + base64.b64encode(up).decode()
        r2 = httpx.post(f"{url}/search", json={"image": data_url, "k": 5, "top": 5}, timeout=60)
        _same_ranking(r2.json()["hits"], cli_image)

        # the full image is the stored file's bytes; a thumbnail fits the size asked
        hit = body["hits"][0]
        original = next(p for p in scene_images if p.stem == Path(cli_text[0]["image"]).stem)
        full = httpx.get(hit["image"])
        assert full.status_code == 200 and full.headers["content-type"] == "image/png"
        assert full.content == original.read_bytes()
        thumb = httpx.get(hit["image"], params={"size": 16})
        assert max(Image.open(io.BytesIO(thumb.content)).size) <= 16
        assert httpx.get(f"{url}/items/nope/image").status_code == 404


def test_coarse_only_filters_and_bad_requests(scenes_env) -> None:
    with running(scenes_env) as (url, _):
        r = httpx.post(f"{url}/search", json={"query": "a street", "k": 5, "top": 2, "coarse_only": True}).json()
        assert len(r["hits"]) == 2 and r["scorer"] is None and all(h["score"] is None for h in r["hits"])
        bad = [
            ({"k": 5}, 422, "give a query text, an image, or both"),
            ({"query": "x", "k": 0}, 422, "k:"),
            ({"query": "x", "collection": "nope"}, 404, "no collection 'nope'"),
            ({"query": "x", "filter": {"a": 1.5}}, 422, "filter 'a'"),
            ({"query": "x", "extra": 1}, 422, "extra"),
            ({"query": "x", "coarse_only": True, "min_score": 0.5}, 400, "min_score"),
            ({"image": "data:image/png;base64,AAAA"}, 400, "not a supported image format"),
        ]
        for body, status, msg in bad:
            r = httpx.post(f"{url}/search", json=body, timeout=60)
            assert r.status_code == status and msg in r.json()["detail"], (body, r.status_code, r.text)
        r = httpx.post(f"{url}/search", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
        r = httpx.post(f"{url}/search", content=b"q=x", headers={"content-type": "text/plain"})
        assert r.status_code == 415


def test_items_add_upload_manifest_delete_and_collections(scenes_env, scene_images, tmp_path) -> None:
    with running(scenes_env) as (url, _):
        cols = httpx.get(f"{url}/collections").json()["collections"]
        assert [(c["name"], c["items"]) for c in cols] == [("default", 5)]
        # JSON: text, a data URL image, and one bad item that is reported while the rest are added
        img = io.BytesIO()
        Image.new("RGB", (20, 30), (200, 10, 10)).save(img, "PNG")
        data_url = "data:image/png;base64," + base64.b64encode(img.getvalue()).decode()
        items = [
            {"text": "a red square", "id": "t1", "payload": {"colour": "red"}},
            {"image": data_url, "id": "i1"},
            {"image": "data:image/png;base64,bm90IGFuIGltYWdl", "id": "bad"},
        ]
        r = httpx.post(f"{url}/items", json={"collection": "new", "items": items}, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["added"] == 2 and out["ids"] == ["t1", "i1", None]
        assert out["skipped"][0]["item"] == "items[2]" and "not a supported image" in out["skipped"][0]["reason"]
        # uploads with a shared payload; one file that is not an image
        files = [("image", ("a.png", scene_images[0].read_bytes())), ("image", ("junk.png", b"junk"))]
        r = httpx.post(f"{url}/items", data={"collection": "new", "payload": '{"src": "up"}'}, files=files)
        out = r.json()
        assert out["added"] == 1 and out["ids"][1] is None and "junk.png" in out["skipped"][0]["item"]
        # a manifest of texts
        manifest = "\n".join(json.dumps({"id": f"m{i}", "text": f"caption {i}"}) for i in range(3)) + "\n{oops\n"
        r = httpx.post(f"{url}/items", data={"collection": "new"}, files={"manifest": ("m.jsonl", manifest)})
        out = r.json()
        assert out["added"] == 3 and out["skipped"][0]["item"] == "m.jsonl:4", out
        assert httpx.get(f"{url}/collections/new").json() == {"name": "new", "items": 6, "dim": 32, "broken": None}
        hits = httpx.post(
            f"{url}/search", json={"query": "x", "collection": "new", "k": 6, "top": 6, "coarse_only": True}
        )
        up = next(h for h in hits.json()["hits"] if h["payload"].get("src") == "up")
        assert up["payload"]["filename"] == "a.png"
        assert httpx.get(up["image"]).content == scene_images[0].read_bytes()
        # delete
        r = httpx.request("DELETE", f"{url}/items", json={"collection": "new", "ids": ["t1", "zzz"]})
        assert r.json() == {"collection": "new", "deleted": 1, "missing": ["zzz"]}
        assert httpx.delete(f"{url}/items/m0", params={"collection": "new"}).json()["deleted"] == 1
        assert httpx.delete(f"{url}/items/m0", params={"collection": "new"}).status_code == 404
        assert httpx.get(f"{url}/collections/nope").status_code == 404
        assert blobs(scenes_env)  # uploads are kept by content


def test_health_and_docs(scenes_env) -> None:
    with running(scenes_env) as (url, svc):
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{url}/readyz").json()
        assert ready == {"models": {"embedder": True, "scorer": True}, "index": True, "status": "ready"}
        spec = httpx.get(f"{url}/openapi.json").json()
        assert {"/search", "/items", "/chat", "/v1/chat/completions", "/readyz"} <= set(spec["paths"])
        assert "multipart/form-data" in spec["paths"]["/search"]["post"]["requestBody"]["content"]
        assert httpx.get(f"{url}/docs").status_code == 200
