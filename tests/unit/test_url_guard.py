"""The URL guard and path confinement, bad input first: every attack is refused with a message that says why and
which setting would allow it, and nothing is fetched (a real server on loopback records what reached it)."""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from retllm.errors import BadItemError
from retllm.images import ImageLimits
from retllm.settings import Settings
from retllm.urlguard import address_problem, parse_networks
from tests.data_gen import png_bytes, solid
from tests.fakes.scripted_http import Served, reply, scripted_server

PNG = png_bytes(solid((0, 0, 255)))
LOOPBACK_HOW = "set RETLLM_ALLOW_PRIVATE_URLS=true or add it to RETLLM_ALLOWED_URL_NETWORKS to allow"


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with scripted_server(lambda h: reply(h, 200, PNG, Content_Type="image/png")) as s:
        yield s


def refused(src: str, limits: ImageLimits | None = None) -> str:
    t = time.monotonic()
    with pytest.raises(BadItemError) as e:
        (limits or ImageLimits(url_timeout=5)).read(src)
    assert time.monotonic() - t < 1.0  # refused before any connect (10.0.0.1 would hang until the deadline)
    return str(e.value)


@pytest.mark.parametrize(
    ("host", "said"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("127.0.0.2", "127.0.0.2 is a loopback address"),
        ("[::1]", "::1 is a loopback address"),
        ("localhost", "localhost resolves to 127.0.0.1, which is a loopback address"),
        ("2130706433", "2130706433 resolves to 127.0.0.1, which is a loopback address"),  # decimal
        ("0x7f.1", "0x7f.1 resolves to 127.0.0.1, which is a loopback address"),  # hex, short
        ("0x7f000001", "0x7f000001 resolves to 127.0.0.1, which is a loopback address"),
        ("127.1", "127.1 resolves to 127.0.0.1, which is a loopback address"),
        ("[::ffff:127.0.0.1]", "(IPv4 127.0.0.1) is a loopback address"),  # IPv4-mapped
        ("[::127.0.0.1]", "(IPv4 127.0.0.1) is a loopback address"),  # IPv4-compatible
        ("[64:ff9b::7f00:1]", "(IPv4 127.0.0.1) is a loopback address"),  # NAT64
        ("[2002:7f00:1::]", "(IPv4 127.0.0.1) is a loopback address"),  # 6to4
        ("0", "0 resolves to 0.0.0.0, which is an unspecified address"),
        ("0.0.0.0", "0.0.0.0 is an unspecified address"),
        ("[::]", ":: is an unspecified address"),
    ],
)
def test_loopback_in_every_spelling_is_refused_and_nothing_is_fetched(server: Served, host: str, said: str) -> None:
    port = server.url.rsplit(":", 1)[1]
    msg = refused(f"http://{host}:{port}/x.png")
    assert msg.startswith("URL refused: ") and said in msg and f"http://{host}:{port}/x.png" in msg
    if "loopback" in said:
        assert LOOPBACK_HOW in msg
    assert server.paths == []


def test_an_octal_dotted_quad_is_refused_as_an_invalid_url(server: Served) -> None:
    port = server.url.rsplit(":", 1)[1]
    assert refused(f"http://0177.0.0.1:{port}/x.png").startswith("invalid URL (Invalid IPv4 address: '0177.0.0.1')")
    assert server.paths == []


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://10.0.0.1/x.png", "10.0.0.1 is a private address"),
        ("http://10.255.255.254:8080/x.png", "10.255.255.254 is a private address"),
        ("http://172.16.0.1/x.png", "172.16.0.1 is a private address"),
        ("http://172.31.255.254/x.png", "172.31.255.254 is a private address"),
        ("http://192.168.1.1/x.png", "192.168.1.1 is a private address"),
        ("http://[fd12:3456::1]/x.png", "fd12:3456::1 is a private address"),
        ("http://169.254.1.1/x.png", "169.254.1.1 is a link-local address"),
        ("http://[fe80::1]/x.png", "fe80::1 is a link-local address"),
        ("http://100.64.0.1/x.png", "100.64.0.1 is a shared (CGNAT) address"),
        ("http://224.0.0.1/x.png", "224.0.0.1 is a multicast address"),
        ("http://240.0.0.1/x.png", "240.0.0.1 is a reserved address"),
        ("http://[::ffff:10.1.2.3]/x.png", "(IPv4 10.1.2.3) is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
        ("http://[fd00:ec2::254]/latest/", "fd00:ec2::254 is a cloud metadata address"),
        ("http://100.100.100.200/latest/", "100.100.100.200 is a cloud metadata address"),
        ("http://[::ffff:169.254.169.254]/latest/", "(IPv4 169.254.169.254) is a cloud metadata address"),
        ("https://169.254.169.254/", "169.254.169.254 is a cloud metadata address"),
    ],
)
def test_private_and_metadata_addresses_are_refused(url: str, said: str) -> None:
    msg = refused(url)
    assert msg.startswith("URL refused: ") and said in msg and msg.endswith(url)


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/", "http://[fd00:ec2::254]/", "http://100.100.100.200/latest/"]
)
def test_metadata_addresses_stay_refused_when_private_urls_are_allowed(url: str) -> None:
    wide = parse_networks(["169.254.0.0/16", "fd00::/8", "100.64.0.0/10"])  # broad networks do not unlock them
    msg = refused(url, ImageLimits(url_timeout=5, allow_private=True, allowed_networks=wide))
    assert "a cloud metadata address (refused even with RETLLM_ALLOW_PRIVATE_URLS" in msg


def test_a_metadata_address_is_allowed_only_when_listed_as_itself() -> None:
    ip = ipaddress.ip_address("169.254.169.254")
    assert address_problem(ip, allowed_networks=parse_networks(["169.254.169.254"])) is None
    assert address_problem(ip, allowed_networks=parse_networks(["169.254.169.0/24"]), allow_private=True)


@pytest.mark.parametrize(
    "src",
    [
        "file:///etc/passwd",
        "FILE:///etc/passwd",
        "file://localhost/etc/passwd",
        "ftp://example.com/x.png",
        "gopher://127.0.0.1:70/_GET%20/",
        "dict://127.0.0.1:11211/stat",
        "ldap://127.0.0.1/",
        "jar:http://example.com/x.jar!/",
        "s3://bucket/x.png",
    ],
)
def test_other_schemes_are_refused_not_read_as_paths(src: str) -> None:
    msg = refused(src)
    if src.startswith("jar:"):  # "jar:http://" has no scheme "://" at the start: a (missing) path, not a URL
        assert msg.startswith("file not found")
    else:
        assert msg == f"only http(s) URLs are fetched: {src}"


def test_a_windows_drive_path_is_still_a_path() -> None:
    assert refused("C:\\images\\x.png").startswith("file not found")


def test_public_addresses_pass_and_embedded_ipv4_is_what_counts() -> None:
    for a in ("8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"):
        assert address_problem(ipaddress.ip_address(a)) is None, a
    mapped = ipaddress.ip_address("::ffff:127.0.0.1")
    assert address_problem(mapped, allowed_networks=parse_networks(["127.0.0.0/8"])) is None  # the IPv4 it leads to
    assert address_problem(mapped, allowed_networks=parse_networks(["10.0.0.0/8"]))


# --- allowed on purpose ---


def test_allow_private_fetches_from_loopback(server: Served) -> None:
    assert ImageLimits(allow_private=True).read(f"{server.url}/a.png") == PNG
    port = server.url.rsplit(":", 1)[1]
    assert ImageLimits(allow_private=True).load(f"http://localhost:{port}/b.png").size == (40, 30)
    assert server.paths[-2:] == ["/a.png", "/b.png"]
    assert server.hosts[-1] == f"localhost:{port}"  # connected to the vetted address, Host still the name


def test_an_allowed_network_fetches_and_its_neighbours_stay_refused(server: Served) -> None:
    only = ImageLimits(allowed_networks=parse_networks(["127.0.0.1"]))
    assert only.read(f"{server.url}/c.png") == PNG
    port = server.url.rsplit(":", 1)[1]
    assert "127.0.0.2 is a loopback address" in refused(f"http://127.0.0.2:{port}/c.png", only)
    assert ImageLimits(allowed_networks=parse_networks(["127.0.0.0/8"])).read(f"{server.url}/d.png") == PNG


def test_the_default_readers_refuse_private_urls(server: Served) -> None:
    from retllm.images import load_image, read_image_bytes

    for reader in (read_image_bytes, load_image):
        with pytest.raises(BadItemError, match="loopback"):
            reader(f"{server.url}/e.png")


# --- local paths confined to roots ---


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "ok.png").write_bytes(PNG)
    (root / "sub" / "deep.png").write_bytes(PNG)
    (tmp_path / "secret.png").write_bytes(b"secret")
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    (root / "escape_dir").symlink_to(tmp_path)
    (root / "inside.png").symlink_to(root / "sub" / "deep.png")
    (tmp_path / "alias").symlink_to(root)  # a root given through a symlink
    return {"root": root, "tmp": tmp_path}


OUTSIDE = "path is outside the allowed folders (RETLLM_FILE_ROOTS): "


def test_paths_outside_the_roots_are_refused(tree: dict[str, Path]) -> None:
    root, tmp = tree["root"], tree["tmp"]
    confined = ImageLimits(file_roots=(root,))
    for src in (
        f"{root}/../secret.png",  # traversal
        f"{root}/sub/../../secret.png",
        str(root / "escape.png"),  # a symlink inside pointing outside
        str(root / "escape_dir" / "secret.png"),  # through a symlinked folder
        str(tmp / "secret.png"),  # an absolute path outside
        "/etc/passwd",
        str(tmp / "missing.png"),  # outside and missing: "outside", not "not found"
    ):
        assert refused(src, confined) == OUTSIDE + src
    assert refused(str(root / "missing.png"), confined).startswith("file not found")


def test_paths_inside_the_roots_are_read(tree: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, tmp = tree["root"], tree["tmp"]
    confined = ImageLimits(file_roots=(root,))
    assert confined.read(str(root / "ok.png")) == PNG
    assert confined.read(root / "sub" / "deep.png") == PNG
    assert confined.read(str(root / "inside.png")) == PNG  # a symlink inside to another file inside
    assert confined.read(f"{root}/sub/../ok.png") == PNG
    assert confined.read(str(tmp / "alias" / "ok.png")) == PNG  # the real path is inside
    assert ImageLimits(file_roots=(tmp / "alias",)).read(str(root / "ok.png")) == PNG  # roots are resolved too
    monkeypatch.chdir(root)
    assert confined.read("sub/deep.png") == PNG
    assert ImageLimits().read(str(tmp / "secret.png")) == b"secret"  # unconfined: any path


# --- settings ---


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.setenv("RETLLM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RETLLM_ALLOWED_URL_NETWORKS", "10.1.2.0/24, 127.0.0.1,fd00::/8")
    monkeypatch.setenv("RETLLM_ALLOW_PRIVATE_URLS", "true")
    monkeypatch.setenv("RETLLM_MAX_URL_BYTES", "1000")
    monkeypatch.setenv("RETLLM_FILE_ROOTS", f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    s = Settings()
    assert s.allowed_url_networks == ["10.1.2.0/24", "127.0.0.1/32", "fd00::/8"]
    lim = s.image_limits
    assert (lim.allow_private, lim.max_bytes, lim.file_roots) == (True, 1000, None)
    assert lim.allowed_networks == parse_networks(["10.1.2.0/24", "127.0.0.1", "fd00::/8"])
    assert s.request_limits.file_roots == (tmp_path / "a", tmp_path / "b", s.blob_dir)
    monkeypatch.setenv("RETLLM_ALLOWED_URL_NETWORKS", '["192.168.0.0/16"]')
    monkeypatch.setenv("RETLLM_FILE_ROOTS", f'["{tmp_path / "a"}"]')
    s = Settings()
    assert s.allowed_url_networks == ["192.168.0.0/16"] and s.file_roots == [tmp_path / "a"]
    monkeypatch.setenv("RETLLM_FILE_ROOTS", f"{tmp_path / 'a'},{tmp_path / 'b'}")
    assert Settings().file_roots == [tmp_path / "a", tmp_path / "b"]


def test_defaults_guard_urls_and_confine_nothing() -> None:
    s = Settings()
    assert s.image_limits == ImageLimits(max_pixels=s.max_image_pixels, url_timeout=s.url_timeout)
    assert s.request_limits == s.image_limits and s.max_url_bytes == 50 * 2**20


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "example.com", "10.1.2.0/24,300.1.1.1", '["::1/129"]'])
def test_a_bad_network_is_a_clear_settings_error(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv("RETLLM_ALLOWED_URL_NETWORKS", bad)
    with pytest.raises(ValidationError, match="RETLLM_ALLOWED_URL_NETWORKS: .* is not an IP network"):
        Settings()


def test_a_missing_root_is_a_clear_settings_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RETLLM_FILE_ROOTS", str(tmp_path / "nope"))
    with pytest.raises(ValidationError, match="RETLLM_FILE_ROOTS: .*nope is not an existing folder"):
        Settings()


def test_request_limits_confine_caller_paths_but_allow_uploads(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "ok.png").write_bytes(PNG)
    (tmp_path / "other.png").write_bytes(PNG)
    s = Settings(data_dir=tmp_path / "data", file_roots=[tmp_path / "pics"])
    s.blob_dir.mkdir(parents=True)
    (s.blob_dir / "upload").write_bytes(PNG)
    req = s.request_limits
    assert req.read(str(tmp_path / "pics" / "ok.png")) == PNG and req.read(str(s.blob_dir / "upload")) == PNG
    assert refused(str(tmp_path / "other.png"), req) == OUTSIDE + str(tmp_path / "other.png")
    assert s.image_limits.read(str(tmp_path / "other.png")) == PNG  # stored, trusted references are not confined
