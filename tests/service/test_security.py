"""Every guard of the service, each with the attack it stops: a 4xx with a clear message, and nothing written."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from PIL import Image

from tests.agent.conftest import ingest
from tests.e2e.cli import run
from tests.fakes.openai_server import Switches, fake_openai
from tests.service.conftest import TOKEN, blobs, running, service_env


def _count(url: str, headers: dict[str, str] | None = None) -> dict[str, int]:
    return {c["name"]: c["items"] for c in httpx.get(f"{url}/collections", headers=headers).json()["collections"]}


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (decoding it would take gigabytes)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_refuses_a_public_address_without_a_token(cli_env) -> None:
    r = run(["serve", "--host", "0.0.0.0", "--port", "1"], cli_env, timeout=60)
    assert r.returncode == 1 and "RETLLM_API_TOKEN" in r.stderr and "--insecure" in r.stderr
    from retllm.access import check_bind, is_loopback

    check_bind("0.0.0.0", "--host", token=True, insecure=False)
    check_bind("0.0.0.0", "--host", token=False, insecure=True)
    for host in ("::1", "[::1]", "127.0.0.2", "localhost", "LOCALHOST", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
        check_bind(host, "--host", token=False, insecure=False)
    for host in ("0.0.0.0", "::", "10.0.0.1", "localhost.evil.example", "::ffff:10.0.0.1", "127.0.0.1.nip.io"):
        assert not is_loopback(host), host
    from pydantic import ValidationError

    from retllm.access import AccessSettings

    with pytest.raises(ValidationError, match="RETLLM_ALLOWED_HOSTS=\\* turns off the DNS-rebinding check"):
        AccessSettings(allowed_hosts=["*"])  # without a token a rebound page could write again
    assert AccessSettings(allowed_hosts=["*"], api_token="t" * 16).allowed_hosts == ["*"]


@pytest.mark.parametrize(
    ("env", "faces"),
    [
        ({"RETLLM_API_TOKEN": "short"}, ("serve", "mcp")),
        ({"RETLLM_PUBLIC_URL": "ftp://x"}, ("serve", "mcp")),
        ({"RETLLM_ALLOWED_HOSTS": "a/b"}, ("serve", "mcp")),
        ({"RETLLM_MAX_QUEUE": "-1"}, ("serve",)),
        ({"RETLLM_API_TOKEN": "short", "RETLLM_SERVE_WORKERS": "0"}, ("serve",)),
    ],
)
def test_configuration_errors_are_one_line(cli_env, env, faces) -> None:
    """A bad setting is one line naming it, never pydantic's report (which echoed the token's value)."""
    commands = {"serve": ["serve", "--port", "1"], "mcp": ["mcp", "--http", "127.0.0.1:1"]}
    for face in faces:
        r = run(commands[face], {**cli_env, **env}, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: invalid setting "), r.stderr
        assert "pydantic" not in r.stderr and "short" not in r.stderr, r.stderr
        name = next(iter(env)).removeprefix("RETLLM_").lower()
        assert name in lines[0], lines[0]


def test_bearer_token_on_every_route_and_signed_image_links(scenes_env) -> None:
    with running(scenes_env, api_token=TOKEN) as (url, _):
        good = {"Authorization": f"Bearer {TOKEN}"}
        routes = [
            ("POST", "/search", {"json": {"query": "a street"}}),
            ("POST", "/items", {"json": {"items": [{"text": "x"}]}}),
            ("DELETE", "/items", {"json": {"ids": ["x"]}}),
            ("DELETE", "/items/x", {}),
            ("GET", "/collections", {}),
            ("GET", "/collections/default", {}),
            ("POST", "/chat", {"json": {"message": "hi"}}),
            ("GET", "/chat/threads", {}),
            ("GET", "/chat/threads/x", {}),
            ("GET", "/v1/models", {}),
            ("POST", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": "hi"}]}}),
            ("GET", "/items/x/image", {}),
        ]
        wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}]
        for method, path, kw in routes:
            for headers in wrong:
                r = httpx.request(method, f"{url}{path}", headers=headers, **kw)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert "token" in r.json()["detail"]
        assert _count(url, good) == {"default": 5}  # nothing was added or deleted by the refused calls
        for path in ("/healthz", "/readyz", "/"):
            assert httpx.get(f"{url}{path}").status_code == 200
        hits = httpx.post(f"{url}/search", json={"query": "a street", "top": 2}, headers=good, timeout=60).json()[
            "hits"
        ]
        link = hits[0]["thumbnail"]
        assert "sig=" in link and httpx.get(link).status_code == 200
        for bad in (
            link.replace("sig=", "sig=0"),  # forged
            link.replace(hits[0]["id"], hits[1]["id"]),  # another item's link
            link.replace("size=256", "size=2048"),  # another size
            link.split("&sig=")[0],  # unsigned
        ):
            assert httpx.get(bad).status_code == 401, bad
        exp = int(link.split("exp=")[1].split("&")[0])
        assert httpx.get(link.replace(f"exp={exp}", f"exp={exp + 10}")).status_code == 401


def _with(link: str, **params: str) -> str:
    parts = urlsplit(link)
    return urlunsplit(parts._replace(query=urlencode({**dict(parse_qsl(parts.query)), **params})))


def test_signed_links_check_the_whole_signature_and_the_expiry(scenes_env) -> None:
    """Kills two mutants of Auth.image_ok: a signature compared on its first characters only, and a correctly
    signed link accepted after its expiry."""
    with running(scenes_env, api_token=TOKEN) as (url, svc):
        good = {"Authorization": f"Bearer {TOKEN}"}
        search = {"query": "a street", "coarse_only": True, "top": 1}
        [hit] = httpx.post(f"{url}/search", json=search, headers=good).json()["hits"]
        link = hit["thumbnail"]
        sig = dict(parse_qsl(urlsplit(link).query))["sig"]
        assert httpx.get(link).status_code == 200
        last = "0" if sig[-1] != "0" else "1"
        for forged in (sig[:-1] + last, sig[:8], sig[:-1], sig + "0", sig.upper(), "é" + sig[1:]):
            assert httpx.get(_with(link, sig=forged)).status_code == 401, forged

        def signed(exp: int) -> str:
            return _with(link, exp=str(exp), sig=svc.auth._sig("default", hit["id"], svc.settings.thumbnail_size, exp))

        assert httpx.get(signed(int(time.time()) + 3600)).status_code == 200  # the link is built right...
        r = httpx.get(signed(int(time.time()) - 5))  # ...and is refused only for having expired
        assert r.status_code == 401 and "expired image link" in r.json()["detail"]


def test_body_upload_and_pixel_limits_write_nothing(scenes_env, scene_images) -> None:
    with running(scenes_env, max_body_mb=1, max_upload_files=2) as (url, _):
        before_blobs, before = blobs(scenes_env), _count(url)
        big = b"x" * (2 * 2**20)
        r = httpx.post(f"{url}/items", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "1 MiB" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit applies to what arrives
            for _ in range(40):
                yield b"y" * 65536

        for method, path in [
            ("POST", "/search"),
            ("POST", "/items"),
            ("POST", "/chat"),
            ("DELETE", "/items"),
            ("POST", "/v1/chat/completions"),
        ]:
            r = httpx.request(method, f"{url}{path}", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413 and "MiB limit" in r.json()["detail"], (path, r.status_code, r.text)
        files = [("image", (f"{i}.png", scene_images[i].read_bytes())) for i in range(3)]
        r = httpx.post(f"{url}/items", files=files)
        assert r.status_code == 400 and "files" in r.text.lower()
        bomb = png_bomb(40_000, 40_000)
        r = httpx.post(f"{url}/search", files={"image": ("bomb.png", bomb)})
        assert r.status_code == 400 and "image too large" in r.json()["detail"]
        r = httpx.post(f"{url}/items", files={"image": ("bomb.png", bomb)}).json()
        assert r["added"] == 0 and "image too large" in r["skipped"][0]["reason"]
        assert blobs(scenes_env) == before_blobs and _count(url) == before


def test_queue_depth_past_the_limit_gets_503_with_retry_after(cli_env, scene_images) -> None:
    with fake_openai(Switches(delay=0.4)) as fake:
        env = service_env(cli_env, fake)
        ingest(env, scene_images[:3])
        with running(env, serve_workers=1, max_queue=1, retry_after=3) as (url, _):
            results: list[httpx.Response] = []
            lock = threading.Lock()

            def one() -> None:
                r = httpx.post(f"{url}/search", json={"query": "a street", "k": 3}, timeout=120)
                with lock:
                    results.append(r)

            threads = [threading.Thread(target=one) for _ in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
    busy = next(r for r in results if r.status_code == 503)
    assert busy.headers["Retry-After"] == "3" and "busy" in busy.json()["detail"]


@pytest.mark.parametrize("where", ["search", "items"])
def test_image_urls_to_private_addresses_are_refused(scenes_env, tmp_path, where) -> None:
    from tests.fakes.http_files import serve_folder

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    seen: list[str] = []
    with serve_folder(tmp_path, seen) as files_url, running(scenes_env) as (url, _):
        before_blobs, before = blobs(scenes_env), _count(url)
        for target in (f"{files_url}/x.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]:1/x.png"):
            if where == "search":
                r = httpx.post(f"{url}/search", json={"image": target})
                assert r.status_code == 400 and "refused" in r.json()["detail"], r.text
            else:
                r = httpx.post(f"{url}/items", json={"items": [{"image": target}]}).json()
                assert r["added"] == 0 and "refused" in r["skipped"][0]["reason"], r
        assert seen == []  # the guard refused before connecting
        assert blobs(scenes_env) == before_blobs and _count(url) == before


def test_no_server_file_is_readable_without_roots(scenes_env, scene_images) -> None:
    with running(scenes_env) as (url, _):
        before = _count(url)
        r = httpx.post(f"{url}/search", json={"image": str(scene_images[0])})
        assert r.status_code == 400 and "outside the allowed folders" in r.json()["detail"], r.text
        r = httpx.post(f"{url}/items", json={"items": [{"image": str(scene_images[0])}]}).json()
        assert r["added"] == 0 and "outside the allowed folders" in r["skipped"][0]["reason"], r
        assert _count(url) == before


def test_local_paths_are_confined_to_the_roots(scenes_env, scene_images, tmp_path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    inside = root / "ok.png"
    inside.write_bytes(scene_images[0].read_bytes())
    secret = tmp_path / "secret.png"
    secret.write_bytes(scene_images[1].read_bytes())
    (root / "link.png").symlink_to(secret)
    env = {**scenes_env, "RETLLM_FILE_ROOTS": str(root)}
    with running(env) as (url, _):
        before = _count(url)
        assert httpx.post(f"{url}/search", json={"image": str(inside), "k": 3}, timeout=60).status_code == 200
        for path in (str(secret), f"{root}/../secret.png", str(root / "link.png"), "/etc/passwd", "file:///etc/passwd"):
            r = httpx.post(f"{url}/search", json={"image": path})
            assert r.status_code == 400, (path, r.text)
            r = httpx.post(f"{url}/items", json={"items": [{"image": path}]}).json()
            assert r["added"] == 0 and r["skipped"], (path, r)
        assert _count(url) == before


def test_refused_requests_and_searches_write_no_file(scenes_env, scene_images) -> None:
    import base64

    png = scene_images[2].read_bytes()
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    with running(scenes_env) as (url, _):
        before_blobs, before = blobs(scenes_env), _count(url)
        # a good image with a bad or missing collection: refused before the image is kept
        r = httpx.post(f"{url}/items", json={"collection": "../x", "items": [{"image": data_url}]})
        assert r.status_code == 400 and "collection" in r.json()["detail"]
        r = httpx.post(f"{url}/items", data={"collection": "a b"}, files={"image": ("a.png", png)})
        assert r.status_code == 400
        r = httpx.post(f"{url}/search", data={"collection": "nope"}, files={"image": ("a.png", png)})
        assert r.status_code == 404
        # searches by upload and by data URL are answered from memory
        assert httpx.post(f"{url}/search", files={"image": ("q.png", png)}, timeout=60).status_code == 200
        assert httpx.post(f"{url}/search", json={"image": data_url}, timeout=60).status_code == 200
        assert blobs(scenes_env) == before_blobs and _count(url) == before


def test_errors_never_show_server_paths_and_odd_ids_keep_working_links(scenes_env, scene_images, tmp_path) -> None:
    import base64

    gone = scene_images[0]
    with running(scenes_env) as (url, _):
        png = base64.b64encode(scene_images[1].read_bytes()).decode()
        items = [{"id": i, "image": f"data:image/png;base64,{png}"} for i in ("a/b", "..", "x y?#")]
        assert httpx.post(f"{url}/items", json={"collection": "odd", "items": items}).json()["added"] == 3
        hits = httpx.post(f"{url}/search", json={"query": "x", "collection": "odd", "coarse_only": True}).json()["hits"]
        assert sorted(h["id"] for h in hits) == ["..", "a/b", "x y?#"]
        for h in hits:
            assert httpx.get(h["image"]).content == scene_images[1].read_bytes(), h["image"]
        gone.unlink()  # an item's file moved away after ingest
        r = httpx.post(f"{url}/search", json={"query": "a street", "k": 5}, timeout=60)
        assert str(tmp_path) not in r.text and "scene_0.png" in r.text  # the judge's error names the file only
        broken = next(h for h in r.json()["hits"] if h["error"])
        r = httpx.get(broken["image"])
        assert r.status_code == 502 and str(tmp_path) not in r.text
        manifest = '{"image": "../../etc/hostname.png"}\n{"image": "/etc/x.png"}\n'
        r = httpx.post(f"{url}/items", files={"manifest": ("m.jsonl", manifest)}).json()
        assert r["added"] == 0 and "relative image paths" in r["skipped"][0]["reason"]
        assert "/tmp" not in json.dumps(r) and "/etc" not in json.dumps(r), r


def test_redact_cuts_known_folders_however_written(tmp_path, monkeypatch) -> None:
    from retllm.agent.service.bodies import protect, redact

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my data").mkdir()
    protect("my data", tmp_path / "my data")
    assert redact(f"cannot read {tmp_path}/my data/blobs/ab.png") == "cannot read …/blobs/ab.png"
    assert redact("cannot read my data/blobs/ab.png") == "cannot read …/blobs/ab.png"
    assert redact("file not found: /srv/elsewhere/x.png") == "file not found: …/x.png"
    assert redact("URL refused: http://10.0.0.1/a/b.png") == "URL refused: http://10.0.0.1/a/b.png"  # the caller's own
    protect("/srv/app")
    assert redact("/srv/apple.png and /srv/app/x/y.png") == "…/apple.png and …/x/y.png"
