"""The URL guard against real local servers, bad input first: redirects to refused addresses, endless and
compressed bodies, slow servers against the one total deadline, TLS checked against the host name while the
socket goes to the vetted address; then an ingest batch and the tools with one refused item among good ones."""

from __future__ import annotations

import gzip
import ssl
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from retllm.errors import BadItemError
from retllm.images import ImageLimits
from retllm.urlguard import fetch_url, parse_networks
from tests.data_gen import png_bytes, solid
from tests.fakes.scripted_http import reply, scripted_server

PNG = png_bytes(solid((0, 0, 255)))
LOCAL = ImageLimits(allow_private=True, url_timeout=5)


def png(h: BaseHTTPRequestHandler) -> None:
    reply(h, 200, PNG, Content_Type="image/png")


def redirect_to(location: str | Callable[[str], str], status: int = 302) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(h: BaseHTTPRequestHandler) -> None:
        reply(h, status, Location=location(h.path) if callable(location) else location)

    return answer


def fails(src: str, limits: ImageLimits = LOCAL) -> str:
    with pytest.raises(BadItemError) as e:
        limits.read(src)
    return str(e.value)


# --- redirects: every hop checked ---


def test_a_redirect_to_a_refused_address_is_refused_before_connecting() -> None:
    only_first = ImageLimits(allowed_networks=parse_networks(["127.0.0.1"]), url_timeout=5)
    with scripted_server(png, host="127.0.0.2") as inner:
        with scripted_server(redirect_to(f"{inner.url}/secret.png")) as outer:
            msg = fails(f"{outer.url}/start", only_first)
            assert msg == (
                "URL refused: 127.0.0.2 is a loopback address (set RETLLM_ALLOW_PRIVATE_URLS=true or add it to "
                f"RETLLM_ALLOWED_URL_NETWORKS to allow): {inner.url}/secret.png (redirected from {outer.url}/start)"
            )
            assert outer.paths == ["/start"] and inner.paths == []
            both = ImageLimits(allowed_networks=parse_networks(["127.0.0.1", "127.0.0.2"]))
            assert both.read(f"{outer.url}/start") == PNG and inner.paths == ["/secret.png"]  # the rule refused it


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_to_the_metadata_address_is_refused_even_with_private_urls_allowed(status: int) -> None:
    with scripted_server(redirect_to("http://169.254.169.254/latest/meta-data/", status)) as outer:
        msg = fails(f"{outer.url}/img.png")
    assert msg.startswith("URL refused: 169.254.169.254 is a cloud metadata address (refused even with")
    assert msg.endswith(f"http://169.254.169.254/latest/meta-data/ (redirected from {outer.url}/img.png)")


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1:70/_x", "ftp://127.0.0.1/x"])
def test_a_redirect_to_another_scheme_is_refused(target: str) -> None:
    with scripted_server(redirect_to(target)) as outer:
        msg = fails(f"{outer.url}/a")
    assert msg.startswith("only http(s) URLs are fetched: ") and msg.endswith(f"(redirected from {outer.url}/a)")
    assert target.split(":")[0] in msg and outer.paths == ["/a"]


def _hops(n: int) -> Callable[[BaseHTTPRequestHandler], None]:
    """Redirects /hop/0 -> /hop/1 -> ... (relative Locations), then the image at /hop/n."""

    def answer(h: BaseHTTPRequestHandler) -> None:
        i = int(h.path.rsplit("/", 1)[1])
        png(h) if i >= n else reply(h, 302, Location=f"/hop/{i + 1}")

    return answer


def test_five_redirects_are_followed_and_a_sixth_is_refused() -> None:
    with scripted_server(_hops(5)) as five:
        assert LOCAL.read(f"{five.url}/hop/0") == PNG and len(five.paths) == 6
    with scripted_server(_hops(6)) as six:
        msg = fails(f"{six.url}/hop/0")
        assert msg == f"URL redirected more than 5 times: {six.url}/hop/5 (redirected from {six.url}/hop/0)"
        assert six.paths == [f"/hop/{i}" for i in range(6)]  # /hop/6 never asked for


def test_an_error_status_is_reported() -> None:
    with scripted_server(lambda h: reply(h, 500, b"oops")) as s:
        assert fails(f"{s.url}/x.png") == f"URL returned HTTP 500: {s.url}/x.png"


# --- size ---


def test_a_content_length_over_the_limit_is_refused_before_the_body() -> None:
    big = 3 * 2**20
    with scripted_server(lambda h: reply(h, 200, b"\0" * big)) as s:
        limits = ImageLimits(allow_private=True, max_bytes=2 * 2**20)
        assert (
            fails(f"{s.url}/big.png", limits)
            == f"URL body over the 2 MiB limit (RETLLM_MAX_URL_BYTES): {s.url}/big.png"
        )
        assert LOCAL.read(f"{s.url}/big.png") == b"\0" * big  # the default 50 MiB takes it


def _endless(chunked: bool) -> Callable[[BaseHTTPRequestHandler], None]:
    """256 MiB in 64 KiB pieces, with no Content-Length: chunked, or until the connection closes."""

    def answer(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding" if chunked else "Connection", "chunked" if chunked else "close")
        h.end_headers()
        piece = b"\x89" * 2**16
        for _ in range(4096):
            h.wfile.write(b"10000\r\n" + piece + b"\r\n" if chunked else piece)
        if chunked:
            h.wfile.write(b"0\r\n\r\n")

    return answer


@pytest.mark.parametrize("chunked", [True, False])
def test_a_body_without_length_is_cut_off_once_it_passes_the_limit(chunked: bool) -> None:
    with scripted_server(_endless(chunked)) as s:
        t = time.monotonic()
        msg = fails(f"{s.url}/endless.png", ImageLimits(allow_private=True, max_bytes=300_000))
        assert msg == f"URL body over the 300,000 bytes limit (RETLLM_MAX_URL_BYTES): {s.url}/endless.png"
        assert time.monotonic() - t < 2
        assert s.wait_answers(1) == [False]  # we hung up: the server could not send the rest


def test_a_compressed_body_is_limited_by_its_decoded_size() -> None:
    bomb = gzip.compress(b"\0" * (64 * 2**20))  # 64 MiB of zeros in ~64 KiB
    with scripted_server(lambda h: reply(h, 200, bomb, Content_Encoding="gzip")) as s:
        msg = fails(f"{s.url}/bomb.png", ImageLimits(allow_private=True, max_bytes=2**20))
        assert msg.startswith("URL body over the 1 MiB limit (RETLLM_MAX_URL_BYTES)")
    with scripted_server(lambda h: reply(h, 200, gzip.compress(PNG), Content_Encoding="gzip")) as s:
        assert LOCAL.read(f"{s.url}/small.png") == PNG


# --- one deadline for the whole fetch ---


def _drip(h: BaseHTTPRequestHandler, data: bytes, every: float) -> None:
    for i in range(len(data)):
        h.wfile.write(data[i : i + 1])
        h.wfile.flush()
        time.sleep(every)


def _slow_body(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "200")
    h.end_headers()
    h.wfile.flush()
    _drip(h, b"x" * 200, 0.05)  # each byte in time for a per-read timeout; the whole takes 10 s


def _slow_headers(h: BaseHTTPRequestHandler) -> None:
    _drip(h, b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 200 + b"\r\nContent-Length: 0\r\n\r\n", 0.05)


def _slow_hops(h: BaseHTTPRequestHandler) -> None:
    time.sleep(0.15)  # every hop is quick; five of them are not
    _hops(5)(h)


@pytest.mark.parametrize(
    ("answer", "path"), [(_slow_body, "/slow.png"), (_slow_headers, "/slow.png"), (_slow_hops, "/hop/0")]
)
def test_the_timeout_is_a_deadline_for_the_whole_fetch(
    answer: Callable[[BaseHTTPRequestHandler], None], path: str
) -> None:
    with scripted_server(answer) as s:
        t = time.monotonic()
        msg = fails(f"{s.url}{path}", ImageLimits(allow_private=True, url_timeout=0.5))
        took = time.monotonic() - t
    assert msg.startswith("URL took longer than 0.5 s (RETLLM_URL_TIMEOUT): ") and f"{s.url}{path}" in msg
    assert 0.45 < took < 1.5  # the deadline itself, not a multiple of it


# --- TLS: the socket goes to the vetted address, the certificate is checked against the name ---


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str | None]]:
    """(server context for "localhost", client context trusting it, the SNI names the server saw)."""
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    names: list[str | None] = []
    server.sni_callback = lambda _sock, sni, _ctx: names.append(sni)  # type: ignore[assignment,func-returns-value]
    client = ssl.create_default_context(cadata=cert.public_bytes(serialization.Encoding.PEM).decode())
    return server, client, names


def test_https_verifies_the_host_name_while_connecting_to_the_vetted_address(tls) -> None:  # type: ignore[no-untyped-def]
    server, client, names = tls
    with scripted_server(png, tls=server) as s:
        port = s.url.rsplit(":", 1)[1]
        by_name = f"https://localhost:{port}/x.png"
        with pytest.raises(BadItemError, match="URL refused: localhost resolves to 127.0.0.1"):
            fetch_url(by_name, ssl_context=client)
        assert s.paths == []
        assert fetch_url(by_name, allow_private=True, ssl_context=client) == PNG
        assert names[-1] == "localhost" and s.hosts == [f"localhost:{port}"]  # SNI and Host: the name
        with pytest.raises(BadItemError, match=r"URL unreachable \(ConnectError: .*CERTIFICATE_VERIFY_FAILED"):
            fetch_url(f"https://127.0.0.1:{port}/x.png", allow_private=True, ssl_context=client)  # not the cert's name
        with pytest.raises(BadItemError, match="CERTIFICATE_VERIFY_FAILED"):
            LOCAL.read(by_name)  # the default trust store does not know this certificate
        assert s.paths == ["/x.png"]


# --- a batch with a refused item: the rest is added, the refused one reported ---


def test_an_ingest_batch_adds_the_rest_and_reports_each_refused_url(embedder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from retllm.index.edge import EdgeIndex
    from retllm.ingest import Ingestor, Source
    from retllm.types import Item

    local = tmp_path / "local.png"
    solid((0, 200, 0)).save(local)
    index = EdgeIndex(tmp_path / "edge")
    limits = ImageLimits(allowed_networks=parse_networks(["127.0.0.1"]), url_timeout=5)
    try:
        with scripted_server(png) as ok, scripted_server(png, host="127.0.0.2") as other:
            sources = [
                Source("good-url", Item(image=f"{ok.url}/a.png")),
                Source("loopback", Item(image=f"{other.url}/b.png")),
                Source("metadata", Item(image="http://169.254.169.254/latest/meta-data/")),
                Source("file-url", Item(image="file:///etc/passwd")),
                Source("local", Item(image=str(local), text="green")),
            ]
            report = Ingestor(embedder, index, "c", blob_dir=tmp_path / "blobs", limits=limits).run(sources)
            assert other.paths == []
        assert report.added == 2 and index.count("c") == 2 and set(report.ids) == {"good-url", "local"}
        reasons = dict(report.skipped)
        assert reasons["loopback"].startswith("URL refused: 127.0.0.2 is a loopback address")
        assert reasons["metadata"].startswith("URL refused: 169.254.169.254 is a cloud metadata address")
        assert reasons["file-url"] == "only http(s) URLs are fetched: file:///etc/passwd"
    finally:
        index.close()


def test_the_tools_confine_caller_paths_to_the_file_roots(embedder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from retllm.tools import ops
    from retllm.tools.deps import Deps
    from retllm.tools.schemas import AddItemsArgs

    from retllm.index.edge import EdgeIndex
    from retllm.settings import Settings

    (tmp_path / "pics").mkdir()
    solid((200, 0, 0)).save(tmp_path / "pics" / "red.png")
    solid((0, 0, 200)).save(tmp_path / "secret.png")
    index = EdgeIndex(tmp_path / "edge")
    s = Settings(data_dir=tmp_path / "data", collection="c", file_roots=[tmp_path / "pics"])
    deps = Deps(s, embedder=embedder, index=index, coarse_only=True)
    try:
        escape = f"{tmp_path}/pics/../secret.png"
        args = AddItemsArgs.model_validate(
            {"items": [{"image": str(tmp_path / "pics" / "red.png")}, {"image": escape}]}
        )
        out = ops.add_items(deps, args)
        assert out.added == 1
        assert out.skipped == [
            {"item": "items[1]", "reason": f"path is outside the allowed folders (RETLLM_FILE_ROOTS): {escape}"}
        ]
        # a confined path is read once: searched from those bytes (nothing written), or kept by content where a
        # reference must outlive the call; either way a later swap of the file (a symlink out) changes nothing
        red = (tmp_path / "pics" / "red.png").read_bytes()
        assert ops.query_image_ref(deps, str(tmp_path / "pics" / "red.png"), fine=False) == red
        kept = ops.query_image_ref(deps, str(tmp_path / "pics" / "red.png"), fine=False, keep=deps.keep_image)
        assert isinstance(kept, str) and Path(kept).parent == s.blob_dir and Path(kept).read_bytes() == red
        stored = next(iter(index.payloads("c", [out.ids[0]]).values()))["image"]
        assert Path(stored).parent == s.blob_dir
        with pytest.raises(BadItemError, match="outside the allowed folders"):
            ops.query_image_ref(deps, str(tmp_path / "secret.png"), fine=False)
    finally:
        deps.close()
        index.close()
